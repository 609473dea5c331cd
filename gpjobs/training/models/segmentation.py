"""Pixel classification: UNET, PSPNET and DEEPLAB on Classified_Tiles (model index 0 = NoData).

How the networks compare with arcgis.learn's and the papers' (also said in each job's messages):
- UNET is our light U-Net decoder (decoders.UnetDecoder), not fastai's DynamicUnet that arcgis.learn's
  UnetClassifier trains: side by side on real chips (bench/unet_decoder.py) DynamicUnet reached a lower mIoU
  (ratio 0.91 over two seeds) at 3.1x the cost of a training step, so an arcgis.learn U-Net package fine-tunes
  its backbone only (decoders.DynamicUnetDecoder keeps fastai's layout for that comparison).
- DEEPLAB is DeepLabV3 (torchvision's ASPP head and an FCN auxiliary head on the stride-16 tap, loss weight 0.4)
  on a dilated backbone of output stride 16 with ASPP rates 6/12/18, the DeepLabV3 paper's training setting and
  arcgis.learn's for PointRend models; keep_dilation=true gives output stride 8 with rates 12/24/36, what
  arcgis.learn uses otherwise (about 3x the compute of the deep layers).
- PSPNET runs its pyramid pooling module on a dilated backbone of output stride 16; keep_dilation=true gives
  output stride 8 as in the PSPNet paper and arcgis.learn. With use_unet (the default) our light U-Net decoder
  (decoders.UnetDecoder, not fastai's DynamicUnet) upsamples it; the auxiliary head is an FCN head.
- pointrend is not implemented (the submit notes say so in the job messages).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from gpjobs.training.backbones import build_backbone
from gpjobs.training.losses import SegmentationLoss, mixup
from gpjobs.training.metrics import Confusion, segmentation_metrics
from gpjobs.training.models.base import ModelFamily
from gpjobs.training.models.decoders import (
    FCNHead,
    PyramidPooling,
    SegmentationNet,
    UnetDecoder,
    slim_unet_widths,
    wide_unet_widths,
)

AUX_WEIGHT = 0.4  # arcgis.learn PSPNet/DeepLab auxiliary loss weight (models.md §2.8)


class SegmentationFamily(ModelFamily):
    emd_model_type = "ImageClassification"
    supports_variable_tile_size = True

    def __init__(self, *a: Any, **kw: Any) -> None:
        super().__init__(*a, **kw)
        self.class_names = ["NoData"] + [c.name for c in self.info.classes]
        values = [c.value for c in self.info.classes]
        ignore = [int(v) for v in self.args.get("ignore_classes") or []]
        unknown = [v for v in ignore if v not in values]
        if unknown:
            self.say(
                "warning", f"ignore_classes {unknown} are not class values of this export ({values}); they are skipped"
            )
        self.ignore_values = [v for v in ignore if v in values]
        self.ignore_indices = [values.index(v) + 1 for v in self.ignore_values]
        self.class_weights: torch.Tensor | None = None
        self.loss = self._make_loss()

    @property
    def num_outputs(self) -> int:
        return self.num_classes + 1

    def attach_data(self, data: Any) -> None:
        if not self.args.get("class_balancing"):
            return
        weights = getattr(data, "class_weights", None)
        if weights is None:
            self.say(
                "warning",
                "class_balancing: the export's statistics have no pixel counts per class; "
                "training without class weights",
            )
            return
        self.class_weights = torch.as_tensor(list(weights), dtype=torch.float32)
        if self.class_weights.numel() != self.num_outputs:
            self.say("warning", "class_balancing: class weights do not match the classes; ignored")
            self.class_weights = None
        else:
            shown = ", ".join(f"{n}={w:.3g}" for n, w in zip(self.class_names, self.class_weights.tolist()))
            self.say("info", f"class_balancing: loss weights {shown}")
        self.loss = self._make_loss()

    def _make_loss(self) -> SegmentationLoss:
        return SegmentationLoss(
            self.num_outputs,
            class_weights=self.class_weights,
            ignore_indices=self.ignore_indices,
            focal=bool(self.args.get("focal_loss")),
            dice_fraction=float(self.args.get("dice_loss_fraction") or 0),
            dice_average=str(self.args.get("dice_loss_average") or "micro"),
            weighted_dice=bool(self.args.get("weighted_dice")),
        )

    def _backbone(self, output_stride: int = 32) -> nn.Module:
        return build_backbone(
            self.backbone, self.in_channels, weights=self.weights, say=self.say, output_stride=output_stride
        )

    def _dilated_backbone(self) -> nn.Module:
        """The backbone at output stride 16, or 8 with keep_dilation (see the module docstring)."""
        output_stride = 8 if self.args.get("keep_dilation") else 16
        backbone = self._backbone(output_stride)
        self.say(
            "info",
            f"{self.model_type.name}: {self.backbone} dilated to output stride {output_stride}"
            + (
                ""
                if output_stride == 8
                else " (keep_dilation=true gives 8, as arcgis.learn and the papers use, at about 3x the compute)"
            ),
        )
        return backbone

    # --- training ---

    def _loss(self, model: nn.Module, images: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        logits, aux = model.forward_train(images)
        loss = self.loss.per_sample(logits, masks)
        if aux is not None:
            loss = loss + AUX_WEIGHT * self.loss.per_sample(aux, masks)
        return loss

    def training_loss(self, model: nn.Module, batch: Any, device: torch.device) -> torch.Tensor:
        images, masks = batch
        images = images.to(device, non_blocking=True)
        masks = masks.to(device, non_blocking=True)
        if self.args.get("mixup") and images.shape[0] > 1:
            mixed, lam, perm = mixup(images)
            logits, aux = model.forward_train(mixed)
            per = lam * self.loss.per_sample(logits, masks) + (1 - lam) * self.loss.per_sample(logits, masks[perm])
            if aux is not None:
                per = per + AUX_WEIGHT * (
                    lam * self.loss.per_sample(aux, masks) + (1 - lam) * self.loss.per_sample(aux, masks[perm])
                )
            return per.mean()
        return self._loss(model, images, masks).mean()

    @torch.no_grad()
    def validate(self, model: nn.Module, loader: Iterable, device: torch.device) -> tuple[float, dict[str, Any]]:
        confusion = Confusion(self.num_outputs, device)
        total, count = torch.zeros((), device=device), 0
        for images, masks in loader:
            images, masks = images.to(device, non_blocking=True), masks.to(device, non_blocking=True)
            logits = model(images)
            total += self.loss.per_sample(logits, masks).sum()
            count += images.shape[0]
            keep = torch.ones_like(masks, dtype=torch.bool)
            for index in self.ignore_indices:  # ignored classes leave the metrics too (arcgis.learn)
                keep &= masks != index
            confusion.update(masks, logits.argmax(1), keep)
        metrics = segmentation_metrics(confusion.result(), self.class_names)
        return float(total) / max(count, 1), metrics

    # --- inference ---

    @torch.no_grad()
    def predict(self, model: nn.Module, images: torch.Tensor) -> list[dict[str, Any]]:
        """Per chip: pixels per class name and the dominant class; `_mask` holds class values (not JSON)."""
        values = torch.tensor([0] + [c.value for c in self.info.classes])
        index = model(images).argmax(1).cpu()
        results = []
        for chip in index:
            counts = torch.bincount(chip.flatten(), minlength=self.num_outputs)
            pixels = {self.class_names[i]: int(n) for i, n in enumerate(counts.tolist()) if n}
            foreground = {k: v for k, v in pixels.items() if k != "NoData"}
            results.append(
                {
                    "class_pixels": pixels,
                    "dominant_class": max(foreground, key=foreground.get) if foreground else None,
                    "_mask": values[chip].numpy(),
                }
            )
        return results

    def emd_fields(self, metrics: dict[str, Any]) -> dict[str, Any]:
        fields = super().emd_fields(metrics)
        fields["ignore_mapped_class"] = list(self.ignore_values)
        if "accuracy" in metrics:
            fields["accuracy"] = f"{metrics['accuracy']:.4e}"
        if "miou" in metrics:
            fields["mIoU"] = f"{metrics['miou']:.4e}"
        if "per_class_metrics" in metrics:
            # arcgis.learn stores this as a JSON *string* (export-format.md §3.3)
            fields["per_class_metrics"] = json.dumps(
                {k: {m: v[m] for m in ("precision", "recall", "f1")} for k, v in metrics["per_class_metrics"].items()}
            )
        return fields

    def show_results(self, model: nn.Module, batch: Any, path: Path) -> None:
        from gpjobs.training.model_card import class_colors, save_segmentation_grid

        images, masks = batch
        model.eval()
        with torch.no_grad():
            pred = model(images).argmax(1)
        save_segmentation_grid(images, masks, pred, class_colors(self.info.classes), path)


class UnetFamily(SegmentationFamily):
    emd_model_configuration = "_unet"
    # "slim": decoders.slim_unet_widths, the default since the wall-time side by side with smp (issue #17);
    # "wide": the first layout, which packages without ModelParameters.decoder were trained with.
    decoder = "slim"

    def fine_tune_from(self, emd: dict[str, Any]) -> None:
        self.decoder = _decoder_layout(emd)

    def load_emd(self, emd: dict[str, Any]) -> None:
        super().load_emd(emd)
        self.decoder = _decoder_layout(emd)

    def build(self) -> nn.Module:
        backbone = self._backbone()
        self.say(
            "info",
            "UNET: gpjobs' light U-Net decoder over the backbone (arcgis.learn trains fastai's "
            "DynamicUnet; ours scored a higher mIoU side by side)",
        )
        channels = backbone.out_channels
        widths = slim_unet_widths(channels) if self.decoder == "slim" else wide_unet_widths(channels)
        return SegmentationNet(backbone, UnetDecoder(channels, self.num_outputs, widths=widths))

    def model_parameters(self) -> dict[str, Any]:
        return {**super().model_parameters(), "decoder": self.decoder}


def _decoder_layout(emd: dict[str, Any]) -> str:
    """The U-Net decoder layout a gpjobs package was trained with ("wide" before the key was written)."""
    return "slim" if (emd.get("ModelParameters") or {}).get("decoder") == "slim" else "wide"


class PSPNetFamily(SegmentationFamily):
    emd_model_configuration = "_psp"

    def build(self) -> nn.Module:
        backbone = self._dilated_backbone()
        sizes = [int(s) for s in self.args.get("pyramid_sizes") or [1, 2, 3, 6]]
        context = PyramidPooling(backbone.out_channels[-1], sizes, cout=min(512, backbone.out_channels[-1]))
        use_unet = bool(self.args.get("use_unet", True))
        aux = None
        if not use_unet or self.args.get("unet_aux_loss"):
            aux = FCNHead(backbone.out_channels[-2], self.num_outputs)
        if use_unet:
            self.say(
                "info",
                "PSPNET: pyramid pooling, then gpjobs' light U-Net decoder (arcgis.learn uses fastai's "
                "DynamicUnet here)",
            )
            head: nn.Module = UnetDecoder(backbone.out_channels, self.num_outputs, context.out_channels)
        else:
            head = nn.Sequential(nn.Dropout(0.1), nn.Conv2d(context.out_channels, self.num_outputs, 1))
        return SegmentationNet(backbone, head, context=context, aux=aux, unet=use_unet)

    def model_parameters(self) -> dict[str, Any]:
        return {
            **super().model_parameters(),
            "pyramid_sizes": list(self.args.get("pyramid_sizes") or [1, 2, 3, 6]),
            "use_unet": bool(self.args.get("use_unet", True)),
            "pointrend": bool(self.args.get("pointrend")),
            "keep_dilation": bool(self.args.get("keep_dilation")),
            "output_stride": 8 if self.args.get("keep_dilation") else 16,
        }


class DeepLabFamily(SegmentationFamily):
    emd_model_configuration = "_deeplab_infrencing"

    def build(self) -> nn.Module:
        from torchvision.models.segmentation.deeplabv3 import DeepLabHead

        backbone = self._dilated_backbone()
        rates = (12, 24, 36) if backbone.output_stride == 8 else (6, 12, 18)
        head = DeepLabHead(backbone.out_channels[-1], self.num_outputs, atrous_rates=rates)
        aux = FCNHead(backbone.out_channels[-2], self.num_outputs)
        return SegmentationNet(backbone, head, aux=aux, unet=False)

    def model_parameters(self) -> dict[str, Any]:
        return {
            **super().model_parameters(),
            "pointrend": bool(self.args.get("pointrend")),
            "keep_dilation": bool(self.args.get("keep_dilation")),
            "output_stride": 8 if self.args.get("keep_dilation") else 16,
            "atrous_rates": [12, 24, 36] if self.args.get("keep_dilation") else [6, 12, 18],
        }


FAMILIES: dict[str, type[ModelFamily]] = {"UNET": UnetFamily, "PSPNET": PSPNetFamily, "DEEPLAB": DeepLabFamily}
