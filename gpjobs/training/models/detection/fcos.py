"""FCOS (Tian et al. 2019), MMDETECTION's `fcos`: torchvision's anchor-free FCOS over our P3-P7 pyramid.

One point per feature cell; a point inside a box (within 1.5 strides of its centre) regresses the distances
to the box's four sides, each pyramid level taking the objects of its size range (torchvision derives the
ranges from the per-level "anchor" sizes, which are the strides here: 0-64, 64-128, ... px as in the paper).
Focal loss for classes, GIoU for boxes, BCE for centre-ness; GroupNorm heads.
"""

from __future__ import annotations

from torch import nn
from torchvision.models.detection import FCOS
from torchvision.models.detection.anchor_utils import AnchorGenerator

from gpjobs.training.backbones import build_backbone
from gpjobs.training.models.detection.common import DetectionFamily
from gpjobs.training.models.detection.fpn_adapter import FeaturePyramid
from gpjobs.training.models.detection.torchvision_detectors import OneStageDetector, transform_kwargs


def build_fcos(body: nn.Module, num_classes: int, chip: int, bands: int) -> nn.Module:
    """FCOS with `num_classes` + 1 outputs (labels 1..K keep their index) over P3-P7 on `body`."""
    pyramid = FeaturePyramid(body, min_stride=8, levels=3, extra="p6p7")
    points = AnchorGenerator(tuple((float(s),) for s in pyramid.level_strides), ((1.0,),) * pyramid.num_levels)
    # score 0.05 as mmdetection's test config (torchvision's 0.2 would hide low-score boxes from COCO mAP)
    return OneStageDetector(
        FCOS(
            pyramid,
            num_classes=num_classes + 1,
            anchor_generator=points,
            score_thresh=0.05,
            nms_thresh=0.6,
            **transform_kwargs(chip, bands),
        )
    )


class FCOSFamily(DetectionFamily):
    """Only reachable as MMDETECTION model=fcos (mmdet.py gives it MMDetection's `.emd` identity)."""

    emd_model_configuration = "_model_extension_inferencing"
    detect_thresh = 0.2

    def deployable(self, model: nn.Module) -> nn.Module:
        from gpjobs.training.models.detection.deploy import FCOSNetwork

        return FCOSNetwork(model, tuple(int(v) for v in self.info.chip_size))

    def build(self) -> nn.Module:
        body = build_backbone(self.backbone, self.in_channels, weights=self.weights, say=self.say)
        return build_fcos(body, self.num_classes, self.chip, self.in_channels)
