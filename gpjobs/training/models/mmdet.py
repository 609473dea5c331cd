"""MMDETECTION: every `model` name arcgis.learn documents, trained by our own detectors.

arcgis.learn wraps OpenMMLab mmdetection configs; that stack (mmcv, CUDA-ABI pinned wheels, downloaded
checkpoints) is not available offline, so each name is trained by one of these implementations:

  faster_rcnn   torchvision Faster R-CNN over our FPN (FASTERRCNN)      fcos          torchvision FCOS (fcos.py)
  retinanet     torchvision RetinaNet (RETINANET)                        atss          ATSS (atss.py)
  ssd           our SSD (SSD)                                            vfnet         VarifocalNet (vfnet.py)
  yolov3        our YOLOv3 on Darknet-53 (YOLOV3)                        cascade_rcnn  Cascade R-CNN (cascade.py)

Names with an implementation of their own train as themselves. The other names arcgis.learn lists are
variants of these (a different neck, backbone, sampler or loss): they train as the closest one, and a job
message and the `.emd` (ModelParameters `trained_as` and `mapping_note`) say exactly what was trained.
"""

from __future__ import annotations

from typing import Any

from gpjobs.training.models.base import ModelFamily
from gpjobs.training.models.detection import FAMILIES as DETECTION_FAMILIES
from gpjobs.training.models.detection.atss import ATSSFamily
from gpjobs.training.models.detection.cascade import CascadeRCNNFamily
from gpjobs.training.models.detection.fcos import FCOSFamily
from gpjobs.training.models.detection.vfnet import VFNetFamily

# implementation -> (family, the model type whose argument defaults it reads, description for the .emd)
IMPLEMENTATIONS: dict[str, tuple[type[ModelFamily], str | None, str]] = {
    "faster_rcnn": (DETECTION_FAMILIES["FASTERRCNN"], "FASTERRCNN", "torchvision Faster R-CNN over an FPN"),
    "retinanet": (DETECTION_FAMILIES["RETINANET"], "RETINANET", "torchvision RetinaNet over P3-P7"),
    "ssd": (DETECTION_FAMILIES["SSD"], "SSD", "gpjobs SSD"),
    "yolov3": (DETECTION_FAMILIES["YOLOV3"], "YOLOV3", "gpjobs YOLOv3 on Darknet-53"),
    "fcos": (FCOSFamily, None, "torchvision FCOS over P3-P7"),
    "atss": (ATSSFamily, None, "gpjobs ATSS (adaptive training sample selection) over P3-P7"),
    "vfnet": (VFNetFamily, None, "gpjobs VarifocalNet (IACS, varifocal loss, star deformable convolution) over P3-P7"),
    "cascade_rcnn": (
        CascadeRCNNFamily,
        "FASTERRCNN",
        "gpjobs Cascade R-CNN (3 stages, IoU 0.5/0.6/0.7) on torchvision Faster R-CNN over an FPN",
    ),
}

# every accepted name -> (implementation, what the OpenMMLab model is and what this server trains instead)
MODELS: dict[str, tuple[str, str]] = {name: (name, "") for name in IMPLEMENTATIONS}
MODELS.update(
    {
        "yolo": ("yolov3", ""),
        "carafe": (
            "faster_rcnn",
            "Faster R-CNN whose FPN upsamples with CARAFE (content-aware reassembly); "
            "trained with the FPN's nearest-neighbour upsampling",
        ),
        "cascade_rpn": (
            "faster_rcnn",
            "Faster R-CNN with a two-stage Cascade RPN (adaptive convolution); trained "
            "with torchvision's one-stage RPN",
        ),
        "dcn": (
            "faster_rcnn",
            "Faster R-CNN with deformable convolutions in backbone stages 3-5; trained with the "
            "backbone's regular convolutions",
        ),
        "detectors": (
            "cascade_rcnn",
            "DetectoRS (recursive feature pyramid, switchable atrous convolution) on a "
            "cascade detector; trained as Cascade R-CNN over a plain FPN",
        ),
        "double_heads": (
            "faster_rcnn",
            "Faster R-CNN classifying with fully-connected and regressing with "
            "convolutional RoI layers; trained with the fully-connected head for both",
        ),
        "dynamic_rcnn": (
            "faster_rcnn",
            "Faster R-CNN whose IoU threshold and SmoothL1 beta follow the proposals' "
            "quality during training; trained with fixed ones",
        ),
        "empirical_attention": (
            "faster_rcnn",
            "Faster R-CNN with spatial attention modules in the backbone; trained without them",
        ),
        "foveabox": ("fcos", "FoveaBox, an anchor-free detector; trained as FCOS, the anchor-free detector here"),
        "fsaf": (
            "fcos",
            "RetinaNet with feature-selective anchor-free heads (mmdetection's config keeps the "
            "anchor-free ones); trained as FCOS",
        ),
        "ghm": (
            "retinanet",
            "RetinaNet with gradient-harmonizing losses (GHM-C, GHM-R); trained with focal and smooth-L1 losses",
        ),
        "hrnet": (
            "faster_rcnn",
            "Faster R-CNN over an HRNet backbone, which is not available here; trained over backbone_model",
        ),
        "libra_rcnn": (
            "faster_rcnn",
            "Faster R-CNN with a balanced feature pyramid, IoU-balanced sampling and "
            "balanced L1 loss; trained with the plain ones",
        ),
        "nas_fcos": ("fcos", "FCOS with an architecture-searched neck and head; trained with FCOS's own"),
        "pafpn": (
            "faster_rcnn",
            "Faster R-CNN with PAFPN (an extra bottom-up path in the neck); trained with a plain FPN",
        ),
        "pisa": (
            "faster_rcnn",
            "Faster R-CNN with prime-sample attention (PISA) loss re-weighting; trained without it",
        ),
        "regnet": (
            "faster_rcnn",
            "Faster R-CNN over a RegNet backbone, which is not available here; trained over backbone_model",
        ),
        "reppoints": (
            "vfnet",
            "RepPoints (point sets refined by deformable convolution); trained as VarifocalNet, "
            "whose star-shaped deformable convolution derives from it",
        ),
        "res2net": (
            "faster_rcnn",
            "Faster R-CNN over a Res2Net backbone, which is not available here; trained over backbone_model",
        ),
        "sabl": (
            "faster_rcnn",
            "Faster R-CNN with side-aware boundary localisation (bucketed box sides); "
            "trained with delta box regression",
        ),
    }
)
_FAMILIES: dict[str, type[ModelFamily]] = {}


class _MMDetectionMixin:
    """Gives a detector family MMDetection's `.emd` identity and the `model` bookkeeping."""

    emd_model_configuration = "_model_extension_inferencing"
    mmdet_model = ""
    args: dict[str, Any]  # the ModelFamily's, which this mixes into

    def model_parameters(self) -> dict[str, Any]:
        trains, note = MODELS[self.mmdet_model]
        params = {
            **super().model_parameters(),
            "model": self.mmdet_model,  # type: ignore[misc]
            "model_weight": bool(self.args.get("model_weight")),
            "trained_as": trains,
            "implementation": f"{IMPLEMENTATIONS[trains][2]} over {self.backbone.lower()} "  # type: ignore
            "(not OpenMMLab)",
        }
        if note:
            params["mapping_note"] = f"{self.mmdet_model}: {note}"
        return params

    def emd_fields(self, metrics: dict[str, Any]) -> dict[str, Any]:
        fields = super().emd_fields(metrics)  # type: ignore[misc]
        fields.update(
            {
                "DatasetType": self.info.format,  # type: ignore[attr-defined]
                "Kwargs": {"model": self.mmdet_model, "model_weight": bool(self.args.get("model_weight"))},
            }
        )
        return fields


def family_class(model: str) -> type[ModelFamily]:
    """The family that trains `model`: its implementation's family with MMDetection's identity."""
    if model not in _FAMILIES:
        base = IMPLEMENTATIONS[MODELS[model][0]][0]
        _FAMILIES[model] = type(f"MMDetection_{model}", (_MMDetectionMixin, base), {"mmdet_model": model})
    return _FAMILIES[model]


class MMDetectionFamily(ModelFamily):
    """Dispatcher: constructing it returns the family of the `model` name (never an MMDetectionFamily)."""

    def __new__(
        cls, model_type: Any, info: Any, backbone: str, args: dict[str, Any], weights: Any, say: Any
    ) -> ModelFamily:  # type: ignore[misc]
        from gpjobs.catalog import ArgumentError, lookup_model_type, parse_arguments

        model = str(args.get("model") or "faster_rcnn").strip().lower()
        if model not in MODELS:  # the catalog's choices make this unreachable from submit
            raise ArgumentError(
                f"MMDETECTION model '{model}' is not an mmdetection model this server trains; "
                f"use one of: {', '.join(sorted(MODELS))}"
            )
        trains, note = MODELS[model]
        defaults_of = IMPLEMENTATIONS[trains][1]
        # the implementation reads its own arguments (anchors, grids, rpn sizes): start from its defaults
        merged = {
            **(parse_arguments(lookup_model_type(defaults_of), {}) if defaults_of else {}),
            **args,
            "model": model,
        }
        if note:
            say(
                "warning",
                f"model={model}: {note}. This server trains {IMPLEMENTATIONS[trains][2]} "
                f"(model {trains}); the .emd records it",
            )
        if args.get("model_weight"):
            say(
                "warning",
                "model_weight: OpenMMLab checkpoints are not available on this server; the "
                "backbone starts from the weights directory (or random) instead",
            )
        if trains == "yolov3" and backbone != "DARKNET53":
            say("info", f"model={model} uses backbone DARKNET53; backbone_model {backbone} is not used")
            backbone = "DARKNET53"
        return family_class(model)(model_type, info, backbone, merged, weights, say)


FAMILIES: dict[str, type[ModelFamily]] = {"MMDETECTION": MMDetectionFamily}
