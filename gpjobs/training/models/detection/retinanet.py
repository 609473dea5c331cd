"""RETINANET: torchvision's RetinaNet (focal loss, P3-P7) with arcgis' `scales` and `ratios` as its anchors."""

from __future__ import annotations

from typing import Any

from torch import nn

from gpjobs.training.backbones import build_backbone
from gpjobs.training.models.detection.common import DetectionFamily
from gpjobs.training.models.detection.torchvision_detectors import build_retinanet


class RetinaNetFamily(DetectionFamily):
    emd_model_configuration = "_RetinaNet_Inference"
    detect_thresh = 0.5  # arcgis' RetinaNet AP: average_precision_score(detect_thresh=0.5, iou_thresh=0.1)

    def deployable(self, model: nn.Module) -> nn.Module:
        from gpjobs.training.models.detection.deploy import RetinaNetNetwork

        return RetinaNetNetwork(model, tuple(int(v) for v in self.info.chip_size))

    def build(self) -> nn.Module:
        body = build_backbone(self.backbone, self.in_channels, weights=self.weights, say=self.say)
        return build_retinanet(
            body,
            self.num_classes,
            self.chip,
            self.in_channels,
            scales=list(self.args.get("scales") or [1.0]),
            ratios=list(self.args.get("ratios") or [1.0]),
        )

    def extra_parameters(self) -> dict[str, Any]:
        return {"scales": list(self.args.get("scales") or []), "ratios": list(self.args.get("ratios") or [])}
