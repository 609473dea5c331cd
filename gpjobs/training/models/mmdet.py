"""MMDETECTION: the `model` names that have an equivalent here, trained by our detector families.

arcgis.learn wraps OpenMMLab mmdetection configs; that stack (mmcv, CUDA-ABI pinned wheels, downloaded
checkpoints) is not available offline, so the names map onto the detector families of
`gpjobs.training.models.detection`:

  faster_rcnn   FASTERRCNN (FPN over the backbone)
  retinanet     RETINANET
  ssd           SSD
  yolov3        YOLOV3 (always Darknet53, whatever backbone_model says; a job message tells)

mask_rcnn is not offered: MMDETECTION trains on box formats (PASCAL_VOC_rectangles, KITTI_rectangles), and
instance masks need RCNN_Masks (use MASKRCNN). Any other name is refused at submit time by the catalog.
The `.emd` keeps ModelName MMDetection and records the mapping in ModelParameters.
"""

from __future__ import annotations

from typing import Any

from gpjobs.training.models.base import ModelFamily
from gpjobs.training.models.detection import FAMILIES as DETECTION_FAMILIES

MODEL_TO_TYPE = {"faster_rcnn": "FASTERRCNN", "retinanet": "RETINANET", "ssd": "SSD", "yolov3": "YOLOV3"}
_MAPPED: dict[str, type[ModelFamily]] = {}


class _MMDetectionMixin:
    """Gives a detector family MMDetection's `.emd` identity and the `model` bookkeeping."""

    emd_model_configuration = "_model_extension_inferencing"
    mmdet_model = ""

    def model_parameters(self) -> dict[str, Any]:
        target = MODEL_TO_TYPE[self.mmdet_model]
        return {**super().model_parameters(), "model": self.mmdet_model,  # type: ignore[misc]
                "model_weight": bool(self.args.get("model_weight")),  # type: ignore[attr-defined]
                "implementation": f"gpjobs {target} over {self.backbone.lower()} (not OpenMMLab)"}  # type: ignore


def _mapped_family(model: str) -> type[ModelFamily]:
    """A subclass of the detector family that `model` maps onto, with MMDetection's identity."""
    if model not in _MAPPED:
        base = DETECTION_FAMILIES[MODEL_TO_TYPE[model]]
        _MAPPED[model] = type(f"MMDetection_{base.__name__}", (_MMDetectionMixin, base), {"mmdet_model": model})
    return _MAPPED[model]


class MMDetectionFamily(ModelFamily):
    """Dispatcher: constructing it returns the mapped detector family (never an MMDetectionFamily itself)."""

    def __new__(cls, model_type: Any, info: Any, backbone: str, args: dict[str, Any], weights: Any,
                say: Any) -> ModelFamily:  # type: ignore[misc]
        from gpjobs.catalog import ArgumentError, lookup_model_type, parse_arguments

        model = str(args.get("model") or "faster_rcnn").lower()
        if model == "yolo":
            model = "yolov3"
        if model not in MODEL_TO_TYPE:  # the catalog's choices make this unreachable from submit
            raise ArgumentError(f"MMDETECTION model '{model}' has no equivalent on this server; "
                                f"use one of: {', '.join(MODEL_TO_TYPE)}")
        target = lookup_model_type(MODEL_TO_TYPE[model])
        # The mapped family reads its own arguments (anchors, grids, ...): start from its defaults.
        merged = {**parse_arguments(target, {}), **args, "model": model}
        if args.get("model_weight"):
            say("warning", "model_weight: OpenMMLab checkpoints are not available on this server; the "
                           "backbone starts from the weights directory (or random) instead")
        if target.backbones and backbone not in target.backbones:
            say("info", f"model={model} uses backbone {target.default_backbone}; backbone_model {backbone} "
                        "is not used")
            backbone = str(target.default_backbone)
        family = _mapped_family(model)(model_type, info, backbone, merged, weights, say)
        return family


FAMILIES: dict[str, type[ModelFamily]] = {"MMDETECTION": MMDetectionFamily}
