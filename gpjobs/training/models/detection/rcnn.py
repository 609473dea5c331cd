"""FASTERRCNN and MASKRCNN: torchvision's two-stage detectors over an FPN on any of our backbones."""

from __future__ import annotations

from typing import Any

from torch import nn

from gpjobs.training.backbones import build_backbone
from gpjobs.training.models.detection.common import DetectionFamily
from gpjobs.training.models.detection.torchvision_detectors import build_rcnn, rcnn_kwargs


class FasterRCNNFamily(DetectionFamily):
    """arcgis.learn FasterRCNN (a ModelExtension): score 0.2 for its AP, like SSD."""

    emd_model_configuration = "_model_extension_inferencing"
    detect_thresh = 0.2
    masks = False

    def build(self) -> nn.Module:
        body = build_backbone(self.backbone, self.in_channels, weights=self.weights, say=self.say)
        return build_rcnn(body, self.num_classes, self.chip, self.in_channels, self.args, masks=self.masks)

    def extra_parameters(self) -> dict[str, Any]:
        return {"rcnn_kwargs": rcnn_kwargs(self.args)}

    def deployable(self, model: nn.Module) -> nn.Module:
        from gpjobs.training.models.detection.deploy import TwoStageNetwork

        return TwoStageNetwork(model, tuple(int(v) for v in self.info.chip_size))

    def emd_fields(self, metrics: dict[str, Any]) -> dict[str, Any]:
        fields = super().emd_fields(metrics)
        fields.update({"DatasetType": self.info.format, "Kwargs": rcnn_kwargs(self.args)})
        return fields


class MaskRCNNFamily(FasterRCNNFamily):
    """arcgis.learn MaskRCNN on RCNN_Masks: boxes + instance masks; AP at score 0.5 and box and mask AP."""

    emd_model_type = "InstanceDetection"
    emd_model_configuration = "_maskrcnn_inferencing"
    supports_variable_tile_size = True
    detect_thresh = 0.5
    masks = True
    uses_masks = True

    def emd_fields(self, metrics: dict[str, Any]) -> dict[str, Any]:
        fields = super().emd_fields(metrics)
        fields.pop("Kwargs", None)
        fields["MaskRCNNkwargs"] = rcnn_kwargs(self.args)
        fields["ModelParameters"]["pointrend"] = bool(self.args.get("pointrend"))
        return fields
