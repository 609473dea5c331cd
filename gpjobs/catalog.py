"""What the TrainDeepLearningModel task accepts: model types, backbones, formats, arguments.

This module is the single source of truth shared by the server (submit-time validation) and the
training child (building the model). It imports nothing heavy: the server process never imports torch.
"""

from __future__ import annotations

import difflib
import json
import math
from dataclasses import dataclass, field
from typing import Any, Callable

# --- backbones ---------------------------------------------------------------------------------

RESNETS = ("RESNET18", "RESNET34", "RESNET50", "RESNET101", "RESNET152")
DENSENETS = ("DENSENET121", "DENSENET161", "DENSENET169", "DENSENET201")
VGGS = ("VGG11", "VGG11_BN", "VGG13", "VGG13_BN", "VGG16", "VGG16_BN", "VGG19", "VGG19_BN")
MOBILENETS = ("MOBILENET_V2",)
CLASSIFICATION_BACKBONES = RESNETS + DENSENETS + MOBILENETS + VGGS
ALL_BACKBONES = CLASSIFICATION_BACKBONES + ("DARKNET53",)
# The R-CNNs and RetinaNet run over a feature pyramid built on the backbone's stride-4..32 taps, which every
# classification backbone provides (gpjobs/training/models/detection/fpn_adapter.py).
FPN_BACKBONES = CLASSIFICATION_BACKBONES

# torchvision builder name and the file name torchvision stores its ImageNet weights under
# (looked up in the configured weights directory; nothing is ever downloaded).
TORCHVISION_WEIGHT_FILES: dict[str, str] = {
    "RESNET18": "resnet18-f37072fd.pth",
    "RESNET34": "resnet34-b627a593.pth",
    "RESNET50": "resnet50-0676ba61.pth",
    "RESNET101": "resnet101-63fe2227.pth",
    "RESNET152": "resnet152-394f9c45.pth",
    "DENSENET121": "densenet121-a639ec97.pth",
    "DENSENET161": "densenet161-8d451a50.pth",
    "DENSENET169": "densenet169-b2777c0a.pth",
    "DENSENET201": "densenet201-c1103571.pth",
    "MOBILENET_V2": "mobilenet_v2-b0353104.pth",
    "VGG11": "vgg11-8a719046.pth",
    "VGG11_BN": "vgg11_bn-6002323d.pth",
    "VGG13": "vgg13-19584684.pth",
    "VGG13_BN": "vgg13_bn-abd245e5.pth",
    "VGG16": "vgg16-397923af.pth",
    "VGG16_BN": "vgg16_bn-6c64b313.pth",
    "VGG19": "vgg19-dcbb9e9d.pth",
    "VGG19_BN": "vgg19_bn-c79401a0.pth",
    "DARKNET53": "darknet53.pth",
}
# torchvision's COCO-trained models that a (model_type, backbone) starts from when the file is in the weights
# directory, as arcgis.learn does (gpjobs/training/pretrained.py); the class-dependent layers start fresh.
TORCHVISION_COCO_WEIGHT_FILES: dict[tuple[str, str], str] = {
    ("FASTERRCNN", "RESNET50"): "fasterrcnn_resnet50_fpn_coco-258fb6c6.pth",
    ("MASKRCNN", "RESNET50"): "maskrcnn_resnet50_fpn_coco-bf2d0c1e.pth",
    ("RETINANET", "RESNET50"): "retinanet_resnet50_fpn_coco-eeacb38b.pth",
    ("DEEPLAB", "RESNET50"): "deeplabv3_resnet50_coco-cd0a2569.pth",
    ("DEEPLAB", "RESNET101"): "deeplabv3_resnet101_coco-586e9e4e.pth",
}

# --- metadata formats (MetaDataMode after arcgis.learn's post-rules) -------------------------

DETECTION_FORMATS = frozenset({"PASCAL_VOC_rectangles", "KITTI_rectangles"})
SEGMENTATION_FORMATS = frozenset({"Classified_Tiles"})
CLASSIFICATION_FORMATS = frozenset({"Labeled_Tiles", "MultiLabeled_Tiles", "Imagenet"})
ALL_FORMATS = frozenset(
    DETECTION_FORMATS
    | SEGMENTATION_FORMATS
    | CLASSIFICATION_FORMATS
    | {"RCNN_Masks", "Export_Tiles", "Pix2Pix", "CycleGAN", "ChangeDetection", "Panoptic_Segmentation"}
)

# --- arguments ---------------------------------------------------------------------------------


class ArgumentError(ValueError):
    """An `arguments` entry that is unknown or has a value of the wrong shape."""


def _did_you_mean(name: str, candidates) -> str:
    """' (did you mean X?)' for a near miss such as MIXUPP or RESNET_18, else ''."""
    close = difflib.get_close_matches(name, list(candidates), n=1, cutoff=0.75)
    return f" (did you mean {close[0]}?)" if close else ""


def _parse_bool(raw: Any) -> bool:
    if isinstance(raw, bool):
        return raw
    text = str(raw).strip().lower()
    if text in ("true", "1", "yes", "y", "t"):
        return True
    if text in ("false", "0", "no", "n", "f", "none", ""):
        return False
    raise ValueError("expected true or false")


def _parse_number(kind: type) -> Callable[[Any], Any]:
    def parse(raw: Any) -> Any:
        value = kind(float(raw)) if kind is int else float(raw)
        if kind is int and float(raw) != value:
            raise ValueError("expected a whole number")
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError("expected a finite number")
        return value

    return parse


def _parse_json_list(item: Callable[[Any], Any]) -> Callable[[Any], list]:
    def parse(raw: Any) -> list:
        value = raw
        if isinstance(raw, str):
            text = raw.strip()
            if not text.startswith("["):
                text = f"[{text}]"  # "1,2,3" and "3" are accepted as lists too
            value = json.loads(text)
        if not isinstance(value, (list, tuple)):
            value = [value]
        return [item(v) for v in value]

    return parse


def _parse_str(raw: Any) -> str:
    return str(raw).strip()


_FLOAT = _parse_number(float)
_INT = _parse_number(int)
_PARSERS: dict[str, Callable[[Any], Any]] = {
    "bool": _parse_bool,
    "int": _INT,
    "float": _FLOAT,
    "str": _parse_str,
    "int_list": _parse_json_list(_INT),
    "float_list": _parse_json_list(_FLOAT),
    "pair_list": _parse_json_list(_parse_json_list(_FLOAT)),  # e.g. SSD ratios [[1,1],[1,0.5]]
    "any_list": _parse_json_list(lambda v: v),
}


@dataclass(frozen=True)
class ArgSpec:
    """One model argument: its type (a key of _PARSERS), default, and what it does."""

    kind: str
    default: Any
    help: str
    choices: tuple[str, ...] = ()


# Arguments every model type accepts (ours and Esri's common ones).
COMMON_ARGUMENTS: dict[str, ArgSpec] = {
    "chip_size": ArgSpec("int", None, "train at this chip size (resize); default: the export's tile size"),
    "monitor": ArgSpec("str", "valid_loss", "metric watched by early stopping and best-epoch selection"),
    "patience": ArgSpec("int", 5, "epochs without improvement before early stopping"),
    "min_delta": ArgSpec("float", 0.001, "smallest change of the monitored value that counts as improvement"),
    "seed": ArgSpec("int", 42, "seed for the train/validation split, augmentation and initialisation"),
    "num_workers": ArgSpec("int", None, "DataLoader worker processes (default: from the server config)"),
    "mixed_precision": ArgSpec("bool", True, "autocast + grad scaling on CUDA (ignored on CPU)"),
    "augment": ArgSpec("bool", True, "flips and 90-degree rotations on training chips"),
    "extract_bands": ArgSpec("int_list", None, "band indices fed to the model (default: all bands)"),
    "iou_thresh": ArgSpec("float", 0.1, "detection: IoU threshold of the Esri-style average precision"),
    "allow_partial_pretrained": ArgSpec("bool", False, "train even when pretrained_model fills only part of the "
                                                       "backbone (the rest starts random; use freeze_model=false)"),
    "clip_grad_norm": ArgSpec("float", None, "clip the gradient norm of each step to this value (0: off; "
                                             "default: 10 for detectors, off otherwise)"),
}

SEGMENTATION_ARGUMENTS: dict[str, ArgSpec] = {
    "class_balancing": ArgSpec("bool", False, "weight the loss by inverse pixel frequency per class"),
    "mixup": ArgSpec("bool", False, "mixup augmentation (alpha 0.4) on training batches"),
    "focal_loss": ArgSpec("bool", False, "per-pixel focal loss (gamma 2) instead of cross-entropy"),
    "ignore_classes": ArgSpec("int_list", [], "class values left out of the loss and metrics"),
    "dice_loss_fraction": ArgSpec("float", 0.0, "share of dice loss mixed into the loss (0..1)"),
    "dice_loss_average": ArgSpec("str", "micro", "dice averaging", ("micro", "macro")),
    "weighted_dice": ArgSpec("bool", False, "weight dice by class weights"),
}

DETECTION_RCNN_ARGUMENTS: dict[str, ArgSpec] = {
    name: ArgSpec(kind, default, f"torchvision {name}")
    for name, kind, default in (
        ("rpn_pre_nms_top_n_train", "int", 2000),
        ("rpn_pre_nms_top_n_test", "int", 1000),
        ("rpn_post_nms_top_n_train", "int", 2000),
        ("rpn_post_nms_top_n_test", "int", 1000),
        ("rpn_nms_thresh", "float", 0.7),
        ("rpn_fg_iou_thresh", "float", 0.7),
        ("rpn_bg_iou_thresh", "float", 0.3),
        ("rpn_batch_size_per_image", "int", 256),
        ("box_batch_size_per_image", "int", 512),
        ("box_bg_iou_thresh", "float", 0.5),
        ("box_fg_iou_thresh", "float", 0.5),
        ("box_detections_per_img", "int", 100),
        ("box_score_thresh", "float", 0.05),
        ("box_nms_thresh", "float", 0.5),
    )
}


# --- model types -------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelTypeInfo:
    """A `model_type` value: what data it trains on, which backbones, which arguments."""

    name: str
    family: str  # module under gpjobs.training.models that implements it
    task: str  # segmentation | classification | detection | instance | translation | change | ...
    formats: frozenset[str]
    backbones: tuple[str, ...]
    default_backbone: str | None
    arguments: dict[str, ArgSpec] = field(default_factory=dict)
    implemented: bool = True
    esri_model_name: str = ""  # .emd ModelName (arcgis.learn class name)


def _mt(name: str, family: str, task: str, formats, backbones, default, arguments=None, *, implemented=True,
        esri_model_name: str = "") -> ModelTypeInfo:
    return ModelTypeInfo(name, family, task, frozenset(formats), tuple(backbones), default,
                         {**COMMON_ARGUMENTS, **(arguments or {})}, implemented, esri_model_name)


MODEL_TYPES: dict[str, ModelTypeInfo] = {m.name: m for m in (
    _mt("FEATURE_CLASSIFIER", "classification", "classification", CLASSIFICATION_FORMATS,
        CLASSIFICATION_BACKBONES, "RESNET34", {
            "mixup": ArgSpec("bool", False, "mixup augmentation on training batches"),
            "oversample": ArgSpec("bool", False, "oversample rare classes (single-label only)"),
        }, esri_model_name="FeatureClassifier"),
    _mt("UNET", "segmentation", "segmentation", SEGMENTATION_FORMATS, RESNETS, "RESNET34",
        SEGMENTATION_ARGUMENTS, esri_model_name="UnetClassifier"),
    _mt("PSPNET", "segmentation", "segmentation", SEGMENTATION_FORMATS, RESNETS + DENSENETS + VGGS, "RESNET50", {
        **SEGMENTATION_ARGUMENTS,
        "use_unet": ArgSpec("bool", True, "add a U-Net decoder over the backbone features"),
        "pyramid_sizes": ArgSpec("int_list", [1, 2, 3, 6], "pooling sizes of the pyramid pooling module"),
        "unet_aux_loss": ArgSpec("bool", False, "auxiliary loss also when the U-Net decoder is used"),
        "pointrend": ArgSpec("bool", False, "accepted for compatibility; not implemented (ignored with a warning)"),
        "keep_dilation": ArgSpec("bool", False, "keep the dilated backbone at inference"),
    }, esri_model_name="PSPNetClassifier"),
    _mt("DEEPLAB", "segmentation", "segmentation", SEGMENTATION_FORMATS,
        RESNETS + DENSENETS + VGGS + MOBILENETS, "RESNET101", {
            **SEGMENTATION_ARGUMENTS,
            "pointrend": ArgSpec("bool", False, "accepted for compatibility; not implemented (ignored with a warning)"),
            "keep_dilation": ArgSpec("bool", False, "keep the dilated backbone at inference"),
        }, esri_model_name="DeepLab"),
    _mt("FASTERRCNN", "detection", "detection", DETECTION_FORMATS, FPN_BACKBONES, "RESNET50",
        DETECTION_RCNN_ARGUMENTS, esri_model_name="FasterRCNN"),
    _mt("RETINANET", "detection", "detection", DETECTION_FORMATS, FPN_BACKBONES, "RESNET50", {
        "scales": ArgSpec("float_list", [1.0, 2 ** (-1 / 3), 2 ** (-2 / 3)], "anchor scales per level"),
        "ratios": ArgSpec("float_list", [0.5, 1.0, 2.0], "anchor aspect ratios"),
    }, esri_model_name="RetinaNet"),
    _mt("SSD", "detection", "detection", DETECTION_FORMATS, CLASSIFICATION_BACKBONES, "RESNET34", {
        "grids": ArgSpec("int_list", None, "grid sizes of the anchor levels (default: chosen from the boxes)"),
        "zooms": ArgSpec("float_list", [1.0], "anchor zooms"),
        "ratios": ArgSpec("pair_list", [[1.0, 1.0]], "anchor aspect ratios as [w, h] pairs"),
        "drop": ArgSpec("float", 0.3, "dropout in the head"),
        "bias": ArgSpec("float", -4.0, "initial bias of the classification output"),
        "focal_loss": ArgSpec("bool", False, "sigmoid focal loss for classification"),
        "location_loss_factor": ArgSpec("float", None, "weight of the box loss against the class loss (0..1)"),
        "ssd_version": ArgSpec("int", 2, "anchor-matching version", ("1", "2")),
    }, esri_model_name="SingleShotDetector"),
    _mt("YOLOV3", "detection", "detection", DETECTION_FORMATS, ("DARKNET53",), "DARKNET53", {
        "anchors": ArgSpec("pair_list", None, "9 anchors [w, h] in pixels (default: k-means on the boxes)"),
        "pretrained_backbone": ArgSpec("bool", True, "start Darknet53 from local weights when present"),
    }, esri_model_name="YOLOv3"),
    _mt("MASKRCNN", "detection", "instance", {"RCNN_Masks"}, FPN_BACKBONES, "RESNET50", {
        **DETECTION_RCNN_ARGUMENTS,
        "pointrend": ArgSpec("bool", False, "accepted for compatibility; not implemented (ignored with a warning)"),
    }, esri_model_name="MaskRCNN"),
    _mt("SUPERRESOLUTION", "translation", "translation", {"Export_Tiles"}, RESNETS, "RESNET34", {
        "downsample_factor": ArgSpec("int", 2, "training inputs are the chips shrunk by this factor and "
                                               "upsampled back; the model restores the detail"),
    }, esri_model_name="SuperResolution"),
    _mt("PIX2PIX", "gan", "translation", {"Pix2Pix"}, (), None, {
        "perceptual_loss": ArgSpec("bool", False, "add a VGG16-BN feature loss (needs its weights file)"),
        "lambda_l1": ArgSpec("float", 100.0, "weight of the L1 term beside the GAN loss"),
        "n_gen_filters": ArgSpec("int", 64, "filters of the first generator layer"),
        "n_dscr_filters": ArgSpec("int", 64, "filters of the first discriminator layer"),
    }, esri_model_name="Pix2Pix"),
    _mt("CYCLEGAN", "gan", "translation", {"CycleGAN"}, (), None, {
        "gen_blocks": ArgSpec("int", 9, "residual blocks per generator"),
        "lsgan": ArgSpec("bool", True, "least-squares GAN loss (false: binary cross-entropy)"),
        "n_gen_filters": ArgSpec("int", 64, "filters of the first generator layer"),
        "n_dscr_filters": ArgSpec("int", 64, "filters of the first discriminator layer"),
    }, esri_model_name="CycleGAN"),
    _mt("PIX2PIXHD", "gan", "translation", {"Pix2Pix"}, (), None, {
        "n_gen_filters": ArgSpec("int", 64, "filters of the first generator layer"),
        "gen_network": ArgSpec("str", "local", "generator: global, or global + one local enhancer",
                               ("global", "local")),
        "n_downsample_global": ArgSpec("int", 4, "downsamplings of the global generator (capped for small chips)"),
        "n_blocks_global": ArgSpec("int", 9, "residual blocks of the global generator"),
        "n_local_enhancers": ArgSpec("int", 1, "local enhancers (0 or 1)"),
        "n_blocks_local": ArgSpec("int", 3, "residual blocks of the local enhancer"),
        "norm": ArgSpec("str", "instance", "normalisation layers", ("instance", "batch")),
        "lsgan": ArgSpec("bool", True, "least-squares GAN loss (false: binary cross-entropy)"),
        "n_dscr_filters": ArgSpec("int", 64, "filters of the first discriminator layer"),
        "n_layers_dscr": ArgSpec("int", 3, "layers of each PatchGAN discriminator"),
        "lambda_feat": ArgSpec("float", 10.0, "weight of discriminator feature matching (and of the VGG loss)"),
        "lambda_l1": ArgSpec("float", 100.0, "weight of the L1 term when l1_loss is true"),
        "vgg_loss": ArgSpec("bool", True, "VGG19 perceptual loss (needs vgg19-dcbb9e9d.pth in the weights dir)"),
        "l1_loss": ArgSpec("bool", False, "add an L1 term to the generator loss"),
    }, esri_model_name="Pix2PixHD"),
)}

# Model types the task lists that this server does not train yet: submit answers with a clear error.
for _name, _task, _formats, _esri in (
    ("IMAGECAPTIONER", "captioning", {"MultiLabeled_Tiles"}, "ImageCaptioner"),
    ("DETREG", "detection", DETECTION_FORMATS, "DETReg"),
    ("SIAMMASK", "tracking", {"RCNN_Masks"}, "SiamMask"),
    ("MAXDEEPLAB", "panoptic", {"Panoptic_Segmentation"}, "MaXDeepLab"),
):
    MODEL_TYPES[_name] = _mt(_name, "", _task, _formats, (), None, implemented=False, esri_model_name=_esri)

# Edge, road, change and MMSegmentation types (gpjobs.training.models.edges / roads / change / mmseg).
_EDGE_ARGUMENTS: dict[str, ArgSpec] = {
    "edge_targets": ArgSpec("str", "auto", "edge labels: the labelled pixels (labels), the class boundaries "
                                           "(boundaries), or per chip thin labels as-is else boundaries (auto)",
                            ("auto", "labels", "boundaries")),
}
_ROAD_ARGUMENTS: dict[str, ArgSpec] = {
    "mtl_model": ArgSpec("str", "hourglass", "network: linknet (ResNet encoder); hourglass is trained as "
                                             "linknet here", ("hourglass", "linknet")),
    "gaussian_thresh": ArgSpec("float", 0.76, "accepted for compatibility; road width comes from the labels"),
    "orient_bin_size": ArgSpec("int", 20, "orientation label bin size in degrees (road direction 0..180)"),
    "orient_theta": ArgSpec("int", 8, "width in pixels of the orientation label band along the road centre"),
    "loss_weights": ArgSpec("float_list", [1.0, 1.0], "weights of the segmentation and orientation losses"),
    "ignore_classes": SEGMENTATION_ARGUMENTS["ignore_classes"],
    "class_balancing": SEGMENTATION_ARGUMENTS["class_balancing"],
}
MODEL_TYPES["DEEPSORT"] = _mt("DEEPSORT", "reid", "classification", {"Imagenet"}, ("REID_V1", "REID_V2"),
                              "REID_V1", esri_model_name="DeepSort")
MODEL_TYPES["MMDETECTION"] = _mt("MMDETECTION", "mmdet", "detection", DETECTION_FORMATS, FPN_BACKBONES, "RESNET50", {
    "model": ArgSpec("str", "faster_rcnn", "detector (OpenMMLab names that have an equivalent here; other mmdet "
                                           "models and config paths are not supported)",
                     ("faster_rcnn", "retinanet", "ssd", "yolov3", "yolo")),
    "model_weight": ArgSpec("bool", False, "OpenMMLab checkpoint: not available offline (warns)"),
}, esri_model_name="MMDetection")
_MMSEG_MODELS = ("unet", "pspnet", "deeplabv3", "deeplabv3plus", "fcn", "mobilenet_v2")
MODEL_TYPES.update({m.name: m for m in (
    _mt("HED_EDGEDETECTOR", "edges", "segmentation", SEGMENTATION_FORMATS, RESNETS + VGGS, "VGG19",
        _EDGE_ARGUMENTS, esri_model_name="HEDEdgeDetector"),
    _mt("BDCN_EDGEDETECTOR", "edges", "segmentation", SEGMENTATION_FORMATS, RESNETS + VGGS, "VGG19",
        _EDGE_ARGUMENTS, esri_model_name="BDCNEdgeDetector"),
    _mt("MULTITASK_ROADEXTRACTOR", "roads", "segmentation", SEGMENTATION_FORMATS, RESNETS, "RESNET34",
        {**_ROAD_ARGUMENTS, "monitor": ArgSpec("str", "miou", COMMON_ARGUMENTS["monitor"].help)},
        esri_model_name="MultiTaskRoadExtractor"),
    _mt("CONNECTNET", "roads", "segmentation", SEGMENTATION_FORMATS, RESNETS, "RESNET34",
        {**_ROAD_ARGUMENTS, "monitor": ArgSpec("str", "miou", COMMON_ARGUMENTS["monitor"].help)},
        esri_model_name="ConnectNet"),
    _mt("CHANGEDETECTOR", "change", "change", {"ChangeDetection"}, RESNETS, "RESNET18", {
        "attention_type": ArgSpec("str", "PAM", "spatial-temporal attention: PAM (pyramid) or BAM (basic)",
                                  ("PAM", "BAM")),
    }, esri_model_name="ChangeDetector"),
    _mt("MMSEGMENTATION", "mmseg", "segmentation", SEGMENTATION_FORMATS, CLASSIFICATION_BACKBONES, "RESNET50", {
        **SEGMENTATION_ARGUMENTS,
        "model": ArgSpec("str", "deeplabv3", "segmentation network (OpenMMLab names that have an equivalent "
                                             "here; other mmseg models and config paths are not supported)",
                         _MMSEG_MODELS),
        "model_weight": ArgSpec("bool", False, "OpenMMLab checkpoint: not available offline (warns)"),
    }, esri_model_name="MMSegmentation"),
)})


def implemented_model_types() -> list[str]:
    return [name for name, info in MODEL_TYPES.items() if info.implemented]


def lookup_model_type(name: str) -> ModelTypeInfo:
    """The model type for a (case-insensitive) `model_type` value, or ArgumentError saying what is allowed."""
    info = MODEL_TYPES.get(str(name).strip().upper())
    if info is None:
        raise ArgumentError(
            f"model_type '{name}' is not a TrainDeepLearningModel model type"
            f"{_did_you_mean(str(name).strip().upper(), MODEL_TYPES)}. "
            f"Use one of: {', '.join(implemented_model_types())}.")
    if not info.implemented:
        raise ArgumentError(
            f"model_type '{info.name}' is not supported by this server yet. "
            f"Supported model types: {', '.join(implemented_model_types())}.")
    return info


def resolve_backbone(info: ModelTypeInfo, backbone: str | None) -> str:
    """The backbone to use (default when unset), or ArgumentError listing the valid ones."""
    if not info.backbones:
        return ""  # fixed networks (PIX2PIX, CYCLEGAN): arcgis.learn ignores a backbone, and so do we
    if backbone is None or str(backbone).strip() == "":
        assert info.default_backbone is not None
        return info.default_backbone
    name = str(backbone).strip().upper()
    if name not in info.backbones:
        raise ArgumentError(
            f"backbone_model '{backbone}' cannot be used with model_type {info.name}"
            f"{_did_you_mean(name, info.backbones)}. "
            f"Valid backbones: {', '.join(info.backbones)}.")
    return name


def parse_arguments(info: ModelTypeInfo, raw: dict[str, Any] | None) -> dict[str, Any]:
    """Typed values for every known argument (defaults filled in); unknown names are an error.

    Names are matched case-insensitively (`MIXUP` == `mixup`), values may be strings as the
    ArcGIS clients send them ("True", "[1, 2, 3, 6]", "0.3").
    """
    values = {name: spec.default for name, spec in info.arguments.items()}
    problems: list[str] = []
    for key, raw_value in (raw or {}).items():
        name = str(key).strip().lower()
        spec = info.arguments.get(name)
        if spec is None:
            problems.append(f"unknown argument '{key}' for {info.name}{_did_you_mean(name, info.arguments)}")
            continue
        if raw_value is None or (isinstance(raw_value, str) and raw_value.strip() == ""):
            continue
        try:
            value = _PARSERS[spec.kind](raw_value)
        except (ValueError, TypeError, json.JSONDecodeError) as exc:
            problems.append(f"argument '{key}' = {raw_value!r} is not a valid {spec.kind} ({exc})")
            continue
        if spec.choices and str(value) not in spec.choices:
            problems.append(f"argument '{key}' must be one of {', '.join(spec.choices)}")
            continue
        values[name] = value
    if problems:
        known = ", ".join(sorted(info.arguments))
        raise ArgumentError("; ".join(problems) + f". Arguments {info.name} accepts: {known}.")
    return values
