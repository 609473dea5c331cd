"""DETREG: arcgis.learn's DETReg detector — Deformable DETR over a ResNet — on the shared engine.

The network and its set loss are in detr_model.py (deformable attention: detr_attention.py, Hungarian
matching: detr_matcher.py). DETReg's self-supervised pre-training (detr_pretrain.py) runs before the
supervised training when `pretrain_epochs` > 0 (off by default, as arcgis.learn trains from its
SwAV/DETReg-pretrained ResNet-50, which is not available offline).

Training uses Deformable DETR's gradient-norm clip of 0.1 unless `clip_grad_norm` says otherwise. The AP is
arcgis' DETReg AP (score >= 0.2, IoU 0.1) beside COCO mAP, like the other detectors.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from gpjobs.training.backbones import build_backbone
from gpjobs.training.models.base import ModelFamily
from gpjobs.training.models.detection.common import DetectionFamily
from gpjobs.training.models.detr_model import DECODER_SPEC, DeformableDETR
from gpjobs.training.models.detr_pretrain import pretrain

PRETRAIN_BATCH = 4  # chips per pre-training step (the job's batch_size is the engine's, not the family's)
PRETRAIN_LR = 2e-4  # Deformable DETR's learning rate (backbone / 10)


class DETRegFamily(DetectionFamily):
    emd_model_configuration = "_model_extension_inferencing"
    detect_thresh = 0.2  # arcgis' DETReg AP: average_precision_score(detect_thresh=0.2, iou_thresh=0.1)
    default_clip_grad_norm = 0.1  # Deformable DETR's max_norm

    def __init__(self, *a: Any, **kw: Any) -> None:
        super().__init__(*a, **kw)
        self._data: Any = None
        self.pretrain_history: list[float] = []
        hidden = self.architecture()["hidden_dim"]  # the catalog checks the ranges; this is the one rule beyond
        if hidden % 8:
            from gpjobs.catalog import ArgumentError

            raise ArgumentError(
                f"DETREG arguments: hidden_dim must be a multiple of 8 (8 attention heads, sine "
                f"position encoding), got {hidden}; use e.g. {hidden // 8 * 8 or 8} or "
                f"{(hidden // 8 + 1) * 8}"
            )

    def attach_data(self, data: Any) -> None:
        self._data = data  # the chips DETReg's pre-training looks at (when pretrain_epochs > 0)

    def architecture(self) -> dict[str, int]:
        """The transformer's size from the arguments (Deformable DETR's defaults)."""
        defaults = {"num_queries": 100, "hidden_dim": 256, "enc_layers": 6, "dec_layers": 6, "dim_feedforward": 1024}
        return {k: int(self.args[k]) if self.args.get(k) is not None else v for k, v in defaults.items()}

    def _net(self, backbone: nn.Module, num_classes: int, embed_dim: int = 0) -> DeformableDETR:
        arch = self.architecture()
        return DeformableDETR(
            backbone,
            num_classes,
            d_model=arch["hidden_dim"],
            heads=8,
            enc_layers=arch["enc_layers"],
            dec_layers=arch["dec_layers"],
            ffn=arch["dim_feedforward"],
            num_queries=arch["num_queries"],
            embed_dim=embed_dim,
        )

    def build(self) -> nn.Module:
        backbone = build_backbone(self.backbone, self.in_channels, weights=self.weights, say=self.say)
        epochs = int(self.args.get("pretrain_epochs") or 0)
        if epochs <= 0 or self._data is None:  # loading a package or no pre-training asked for
            return self._net(backbone, self.num_classes)
        pre = self._net(backbone, 1, embed_dim=int(backbone.out_channels[-1]))
        chips = len(self._data.train)
        self.say(
            "info",
            f"DETReg pre-training: {epochs} epochs over the {chips} training chips without their "
            "labels (selective-search-like region proposals + backbone embeddings)",
        )
        # the reporter behind `say` (run_job passes reporter.say) lets a cancel stop the pre-training too
        check_stop = getattr(getattr(self.say, "__self__", None), "check_stop", lambda: None)
        batch = max(1, min(PRETRAIN_BATCH, chips))
        device = torch.device("cuda:0" if torch.cuda.is_available() else "cpu")  # the child sees its own GPU only
        self.pretrain_history = pretrain(
            pre,
            lambda: self._data.loaders(batch)[0],
            epochs=epochs,
            lr=PRETRAIN_LR,
            proposals=int(self.args.get("pretrain_proposals") or 30),
            device=device,
            say=self.say,
            check_stop=check_stop,
        )
        model = self._net(pre.backbone.cpu(), self.num_classes)
        state = {k: v for k, v in pre.cpu().state_dict().items() if not k.startswith(("class_embed.", "object_embed."))}
        missing, _ = model.load_state_dict(state, strict=False)
        self.say(
            "info",
            f"DETReg pre-training done: the detector starts from it ({len(state)} tensors); the class "
            f"head starts fresh ({len(missing)} tensors)",
        )
        return model.train()

    def deployable(self, model: nn.Module) -> nn.Module:
        from gpjobs.training.models.detection.deploy import CandidateDetections

        return CandidateDetections(model, DECODER_SPEC)

    def extra_parameters(self) -> dict[str, Any]:
        return {
            **self.architecture(),
            "num_feature_levels": 4,
            "aux_loss": True,
            "with_box_refine": False,
            "two_stage": False,
            "pretrain_epochs": int(self.args.get("pretrain_epochs") or 0),
            "pretrain_proposals": int(self.args.get("pretrain_proposals") or 30),
        }

    def emd_fields(self, metrics: dict[str, Any]) -> dict[str, Any]:
        fields = super().emd_fields(metrics)
        fields.update({"DatasetType": self.info.format, "Kwargs": {}})
        if self.pretrain_history:
            fields["DETRegPretraining"] = {
                "epochs": len(self.pretrain_history),
                "loss": [round(v, 5) for v in self.pretrain_history],
            }
        return fields


FAMILIES: dict[str, type[ModelFamily]] = {"DETREG": DETRegFamily}
