"""What the TrainDeepLearningModel task accepts: model types, backbones, formats, arguments.

This module is the single source of truth shared by the server (submit-time validation) and the
training child (building the model). It imports nothing heavy: the server process never imports torch.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from gpjobs.parsing import list_parser, loads_json, parse_bool, parse_float, parse_int, parse_str

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


def _pairs(minimum: float | None, maximum: float | None) -> Callable[[Any], list[list[float]]]:
    """[w, h] pairs: [[1, 1], [1, 0.5]], or the flat form [1.0, 1.0, 1.0, 0.5] read two by two."""
    number = list_parser(lambda v: parse_float(v, minimum, maximum))

    def parse(raw: Any) -> list[list[float]]:
        items = list_parser(lambda v: v)(raw)
        if items and all(not isinstance(v, (list, tuple)) for v in items):
            if len(items) % 2:
                raise ValueError(
                    f"{len(items)} numbers cannot be read as [w, h] pairs; give pairs such as "
                    "[[1.0, 1.0], [1.0, 0.5]] (or an even count of numbers, read two by two)"
                )
            items = [items[i : i + 2] for i in range(0, len(items), 2)]
        pairs = [number(v) for v in items]
        if any(len(pair) != 2 for pair in pairs):
            raise ValueError("each entry must be a [w, h] pair such as [1.0, 0.5]")
        return pairs

    return parse


@dataclass(frozen=True)
class ArgSpec:
    """One model argument: its type, default, what it does, and the values it accepts.

    `kind` is bool | int | float | str | int_list | float_list | pair_list | object (parsed by `parser`);
    numbers (and list elements) must
    lie in [minimum, maximum]. `no_effect` marks an argument accepted for compatibility with Esri's forms
    that changes nothing for this model type; the job says so when it is set.
    """

    kind: str
    default: Any
    help: str
    choices: tuple[str, ...] = ()
    minimum: float | None = None
    maximum: float | None = None
    no_effect: str = ""
    parser: Callable[[Any], Any] | None = None  # kind "object": a structured value with its own rules

    def parse(self, raw: Any) -> Any:
        """The typed value of `raw` (text as clients send it, or a JSON value); ValueError says why not."""
        low, high = self.minimum, self.maximum
        if self.parser is not None:
            return self.parser(raw)
        if self.kind == "bool":
            return parse_bool(raw)
        if self.kind == "str":
            text = parse_str(raw)
            if self.choices and text not in self.choices:
                raise ValueError(f"'{text}' is not one of {', '.join(self.choices)}")
            return text
        if self.kind in ("int", "int_list"):
            item: Callable[[Any], Any] = lambda v: parse_int(v, _whole(low), _whole(high))  # noqa: E731
        elif self.kind in ("float", "float_list"):
            item = lambda v: parse_float(v, low, high)  # noqa: E731
        elif self.kind == "pair_list":
            return _pairs(low, high)(raw)
        else:
            raise ValueError(f"argument kind {self.kind!r} is not known")
        value = list_parser(item)(raw) if self.kind.endswith("_list") else item(raw)
        if self.choices and str(value) not in self.choices:
            raise ValueError(f"{value} is not one of {', '.join(self.choices)}")
        return value

    @property
    def is_numeric(self) -> bool:
        return self.kind in ("int", "float", "int_list", "float_list", "pair_list")


def _whole(value: float | None) -> int | None:
    return None if value is None else int(value)


def _arg(
    kind: str,
    default: Any,
    help: str,
    low: float | None = None,
    high: float | None = None,
    *,
    choices: tuple[str, ...] = (),
    no_effect: str = "",
) -> ArgSpec:
    return ArgSpec(kind, default, help, choices, low, high, no_effect)


MAX_LOADER_WORKERS = 16  # data loader processes one job may ask for

_POINTREND = ArgSpec(
    "bool",
    False,
    "PointRend refinement of mask boundaries",
    no_effect="PointRend is not implemented here; the model trains without it",
)
_PYRAMID_NOTE = "{} has no pyramid pooling module (PSPNET has); Esri's pixel-classification form sends it anyway"

# Arguments every model type accepts (ours and Esri's common ones).
COMMON_ARGUMENTS: dict[str, ArgSpec] = {
    "chip_size": ArgSpec(
        "int", None, "train at this chip size (resize); default: the export's tile size", minimum=8, maximum=4096
    ),
    "monitor": ArgSpec("str", "valid_loss", "metric watched by early stopping and best-epoch selection"),
    "patience": ArgSpec("int", 5, "epochs without improvement before early stopping", minimum=1, maximum=10_000),
    "min_delta": ArgSpec(
        "float",
        0.001,
        "smallest change of the monitored value that resets early stopping's patience (the best epoch is kept "
        "whenever the value improves at all)",
        minimum=0,
        maximum=1e6,
    ),
    "seed": ArgSpec(
        "int", 42, "seed for the train/validation split, augmentation and initialisation", minimum=0, maximum=2**31 - 1
    ),
    "num_workers": ArgSpec(
        "int",
        None,
        "data loader worker processes (default: the server's loader_workers "
        "setting; auto: from the slot's CPU share and device kind)",
        minimum=0,
        maximum=MAX_LOADER_WORKERS,
    ),
    "mixed_precision": ArgSpec("bool", True, "autocast + grad scaling on CUDA (ignored on CPU)"),
    "augment": ArgSpec(
        "bool",
        None,
        "flips and 90-degree rotations on training chips (default: on for a "
        "pretrained backbone, off when training from random weights)",
    ),
    "extract_bands": ArgSpec(
        "int_list", None, "band indices fed to the model (default: all bands)", minimum=0, maximum=1023
    ),
    "iou_thresh": ArgSpec(
        "float", 0.1, "detection: IoU threshold of the Esri-style average precision", minimum=0.01, maximum=1
    ),
    "allow_partial_pretrained": ArgSpec(
        "bool",
        False,
        "train even when pretrained_model fills only part of the "
        "backbone (the rest starts random; use freeze_model=false)",
    ),
    "clip_grad_norm": ArgSpec(
        "float",
        None,
        "clip the gradient norm of each step to this value (0: off; default: 10 for detectors, off otherwise)",
        minimum=0,
        maximum=1e6,
    ),
}

SEGMENTATION_ARGUMENTS: dict[str, ArgSpec] = {
    "class_balancing": ArgSpec("bool", False, "weight the loss by inverse pixel frequency per class"),
    "mixup": ArgSpec("bool", False, "mixup augmentation (alpha 0.4) on training batches"),
    "focal_loss": ArgSpec("bool", False, "per-pixel focal loss (gamma 2) instead of cross-entropy"),
    "ignore_classes": ArgSpec(
        "int_list", [], "class values left out of the loss and metrics", minimum=0, maximum=65535
    ),
    "dice_loss_fraction": ArgSpec("float", 0.0, "share of dice loss mixed into the loss", minimum=0, maximum=1),
    "dice_loss_average": ArgSpec("str", "micro", "dice averaging", ("micro", "macro")),
    "weighted_dice": ArgSpec("bool", False, "weight dice by class weights"),
}

DETECTION_RCNN_ARGUMENTS: dict[str, ArgSpec] = {
    # counts 1..100000, thresholds and fractions 0..1
    name: ArgSpec(
        kind,
        default,
        f"torchvision {name}",
        minimum=0 if kind == "float" else 1,
        maximum=1 if kind == "float" else 100_000,
    )
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


# FASTERRCNN samples 256 proposals per image for its box head, not torchvision's 512: on the CPU the box head's
# RoIAlign backward is a third of a step. bench/qualitylib/ours.py on full palms (160 px, 5 epochs, batch 4, CPU,
# one thread), held-out Esri AP@0.2 / COCO mAP@0.5 and job wall: seed 42 0.907 / 0.889 in 732 s at 512,
# 0.906 / 0.874 in 555 s at 256; seed 43 0.874 / 0.823 in 789 s, 0.870 / 0.847 in 524 s (the torchvision peer's
# loop: 635 s and 587 s).
FASTERRCNN_ARGUMENTS: dict[str, ArgSpec] = {
    **DETECTION_RCNN_ARGUMENTS,
    "box_batch_size_per_image": replace(
        DETECTION_RCNN_ARGUMENTS["box_batch_size_per_image"],
        default=256,
        help="proposals per image that train the box head (torchvision's default: 512)",
    ),
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
    esri_model_name: str = ""  # .emd ModelName (arcgis.learn class name)


# Detectors keep the epoch with the best validation AP, not the lowest validation loss: trained from random
# weights their loss is lowest before they detect anything (bench/quality.py palms, FASTERRCNN seed 42: the
# valid_loss rule restored an epoch of AP 0.0 where the last epochs had 0.32; held-out Esri AP 0.000 -> 0.181).
DETECTION_MONITOR = ArgSpec("str", "average_precision", COMMON_ARGUMENTS["monitor"].help)
TASKS_WITH_AP = ("detection", "instance")  # their families report Esri average_precision


def _mt(
    name: str, family: str, task: str, formats, backbones, default, arguments=None, *, esri_model_name: str = ""
) -> ModelTypeInfo:
    monitor = {"monitor": DETECTION_MONITOR} if task in TASKS_WITH_AP else {}
    return ModelTypeInfo(
        name,
        family,
        task,
        frozenset(formats),
        tuple(backbones),
        default,
        {**COMMON_ARGUMENTS, **monitor, **(arguments or {})},
        esri_model_name,
    )


MODEL_TYPES: dict[str, ModelTypeInfo] = {
    m.name: m
    for m in (
        _mt(
            "FEATURE_CLASSIFIER",
            "classification",
            "classification",
            CLASSIFICATION_FORMATS,
            CLASSIFICATION_BACKBONES,
            "RESNET34",
            {
                "mixup": ArgSpec("bool", False, "mixup augmentation on training batches"),
                "oversample": ArgSpec("bool", False, "oversample rare classes (single-label only)"),
            },
            esri_model_name="FeatureClassifier",
        ),
        _mt(
            "UNET",
            "segmentation",
            "segmentation",
            SEGMENTATION_FORMATS,
            RESNETS,
            "RESNET34",
            {
                **SEGMENTATION_ARGUMENTS,
                "use_unet": ArgSpec("bool", True, "U-Net decoder", no_effect="UNET always has its U-Net decoder"),
                "pyramid_sizes": ArgSpec(
                    "int_list",
                    [1, 2, 3, 6],
                    "PSPNET's pooling sizes",
                    minimum=1,
                    maximum=64,
                    no_effect=_PYRAMID_NOTE.format("UNET"),
                ),
            },
            esri_model_name="UnetClassifier",
        ),
        _mt(
            "PSPNET",
            "segmentation",
            "segmentation",
            SEGMENTATION_FORMATS,
            RESNETS + DENSENETS + VGGS,
            "RESNET50",
            {
                **SEGMENTATION_ARGUMENTS,
                "use_unet": ArgSpec("bool", True, "add a U-Net decoder over the backbone features"),
                "pyramid_sizes": ArgSpec(
                    "int_list", [1, 2, 3, 6], "pooling sizes of the pyramid pooling module", minimum=1, maximum=64
                ),
                "unet_aux_loss": ArgSpec("bool", False, "auxiliary loss also when the U-Net decoder is used"),
                "pointrend": _POINTREND,
                "keep_dilation": ArgSpec("bool", False, "keep the dilated backbone at inference"),
            },
            esri_model_name="PSPNetClassifier",
        ),
        _mt(
            "DEEPLAB",
            "segmentation",
            "segmentation",
            SEGMENTATION_FORMATS,
            RESNETS + DENSENETS + VGGS + MOBILENETS,
            "RESNET101",
            {
                **SEGMENTATION_ARGUMENTS,
                "use_unet": ArgSpec(
                    "bool", True, "PSPNET's U-Net decoder", no_effect="DEEPLAB decodes with ASPP, not a U-Net decoder"
                ),
                "pyramid_sizes": ArgSpec(
                    "int_list",
                    [1, 2, 3, 6],
                    "PSPNET's pooling sizes",
                    minimum=1,
                    maximum=64,
                    no_effect=_PYRAMID_NOTE.format("DEEPLAB") + "; ASPP plays that role",
                ),
                "pointrend": _POINTREND,
                "keep_dilation": ArgSpec("bool", False, "keep the dilated backbone at inference"),
            },
            esri_model_name="DeepLab",
        ),
        _mt(
            "FASTERRCNN",
            "detection",
            "detection",
            DETECTION_FORMATS,
            FPN_BACKBONES,
            "RESNET50",
            FASTERRCNN_ARGUMENTS,
            esri_model_name="FasterRCNN",
        ),
        _mt(
            "RETINANET",
            "detection",
            "detection",
            DETECTION_FORMATS,
            FPN_BACKBONES,
            "RESNET50",
            {
                "scales": ArgSpec(
                    "float_list",
                    [1.0, 2 ** (-1 / 3), 2 ** (-2 / 3)],
                    "anchor scales per level",
                    minimum=0.01,
                    maximum=10,
                ),
                "ratios": ArgSpec("float_list", [0.5, 1.0, 2.0], "anchor aspect ratios", minimum=0.01, maximum=100),
            },
            esri_model_name="RetinaNet",
        ),
        _mt(
            "SSD",
            "detection",
            "detection",
            DETECTION_FORMATS,
            CLASSIFICATION_BACKBONES,
            "RESNET34",
            {
                "grids": ArgSpec(
                    "int_list",
                    None,
                    "grid sizes of the anchor levels (default: chosen from the boxes)",
                    minimum=1,
                    maximum=256,
                ),
                "zooms": ArgSpec("float_list", [1.0], "anchor zooms", minimum=0.01, maximum=10),
                "ratios": ArgSpec(
                    "pair_list",
                    [[1.0, 1.0]],
                    "anchor aspect ratios as [w, h] pairs; a flat list [1.0, 1.0, 1.0, 0.5] is read two by two",
                    minimum=0.01,
                    maximum=100,
                ),
                "drop": ArgSpec("float", 0.3, "dropout in the head", minimum=0, maximum=0.99),
                "bias": ArgSpec("float", -4.0, "initial bias of the classification output", minimum=-100, maximum=100),
                "focal_loss": ArgSpec("bool", False, "sigmoid focal loss for classification"),
                "location_loss_factor": ArgSpec(
                    "float", None, "weight of the box loss against the class loss", minimum=0, maximum=1
                ),
                "ssd_version": ArgSpec("int", 2, "anchor-matching version", ("1", "2"), minimum=1, maximum=2),
            },
            esri_model_name="SingleShotDetector",
        ),
        _mt(
            "YOLOV3",
            "detection",
            "detection",
            DETECTION_FORMATS,
            ("DARKNET53",),
            "DARKNET53",
            {
                "anchors": ArgSpec(
                    "pair_list",
                    None,
                    "9 anchors [w, h] in pixels (default: k-means on the boxes)",
                    minimum=1,
                    maximum=4096,
                ),
                "pretrained_backbone": ArgSpec("bool", True, "start Darknet53 from local weights when present"),
            },
            esri_model_name="YOLOv3",
        ),
        _mt(
            "MASKRCNN",
            "detection",
            "instance",
            {"RCNN_Masks"},
            FPN_BACKBONES,
            "RESNET50",
            {
                **DETECTION_RCNN_ARGUMENTS,
                "pointrend": _POINTREND,
            },
            esri_model_name="MaskRCNN",
        ),
        _mt(
            "SUPERRESOLUTION",
            "translation",
            "translation",
            {"Export_Tiles"},
            RESNETS,
            "RESNET34",
            {
                "downsample_factor": ArgSpec(
                    "int",
                    2,
                    "training inputs are the chips shrunk by this factor and "
                    "upsampled back; the model restores the detail",
                    minimum=2,
                    maximum=8,
                ),
            },
            esri_model_name="SuperResolution",
        ),
        _mt(
            "PIX2PIX",
            "gan",
            "translation",
            {"Pix2Pix"},
            (),
            None,
            {
                "perceptual_loss": ArgSpec("bool", False, "add a VGG16-BN feature loss (needs its weights file)"),
                "lambda_l1": ArgSpec(
                    "float", 100.0, "weight of the L1 term beside the GAN loss", minimum=0, maximum=1e4
                ),
                "n_gen_filters": ArgSpec("int", 64, "filters of the first generator layer", minimum=1, maximum=1024),
                "n_dscr_filters": ArgSpec(
                    "int", 64, "filters of the first discriminator layer", minimum=1, maximum=1024
                ),
            },
            esri_model_name="Pix2Pix",
        ),
        _mt(
            "CYCLEGAN",
            "gan",
            "translation",
            {"CycleGAN"},
            (),
            None,
            {
                "gen_blocks": ArgSpec("int", 9, "residual blocks per generator", minimum=1, maximum=32),
                "lsgan": ArgSpec("bool", True, "least-squares GAN loss (false: binary cross-entropy)"),
                "n_gen_filters": ArgSpec("int", 64, "filters of the first generator layer", minimum=1, maximum=1024),
                "n_dscr_filters": ArgSpec(
                    "int", 64, "filters of the first discriminator layer", minimum=1, maximum=1024
                ),
            },
            esri_model_name="CycleGAN",
        ),
        _mt(
            "PIX2PIXHD",
            "gan",
            "translation",
            {"Pix2Pix"},
            (),
            None,
            {
                "n_gen_filters": ArgSpec("int", 64, "filters of the first generator layer", minimum=1, maximum=1024),
                "gen_network": ArgSpec(
                    "str", "local", "generator: global, or global + one local enhancer", ("global", "local")
                ),
                "n_downsample_global": ArgSpec(
                    "int", 4, "downsamplings of the global generator (capped for small chips)", minimum=1, maximum=8
                ),
                "n_blocks_global": ArgSpec("int", 9, "residual blocks of the global generator", minimum=1, maximum=32),
                "n_local_enhancers": ArgSpec("int", 1, "local enhancers", minimum=0, maximum=1),
                "n_blocks_local": ArgSpec("int", 3, "residual blocks of the local enhancer", minimum=1, maximum=32),
                "norm": ArgSpec("str", "instance", "normalisation layers", ("instance", "batch")),
                "lsgan": ArgSpec("bool", True, "least-squares GAN loss (false: binary cross-entropy)"),
                "n_dscr_filters": ArgSpec(
                    "int", 64, "filters of the first discriminator layer", minimum=1, maximum=1024
                ),
                "n_layers_dscr": ArgSpec("int", 3, "layers of each PatchGAN discriminator", minimum=1, maximum=8),
                "lambda_feat": ArgSpec(
                    "float",
                    10.0,
                    "weight of discriminator feature matching (and of the VGG loss)",
                    minimum=0,
                    maximum=1e4,
                ),
                "lambda_l1": ArgSpec(
                    "float", 100.0, "weight of the L1 term when l1_loss is true", minimum=0, maximum=1e4
                ),
                "vgg_loss": ArgSpec(
                    "bool", True, "VGG19 perceptual loss (needs vgg19-dcbb9e9d.pth in the weights dir)"
                ),
                "l1_loss": ArgSpec("bool", False, "add an L1 term to the generator loss"),
            },
            esri_model_name="Pix2PixHD",
        ),
    )
}

# DETREG (gpjobs.training.models.detr): Deformable DETR with DETReg's optional self-supervised pre-training.
MODEL_TYPES["DETREG"] = _mt(
    "DETREG",
    "detr",
    "detection",
    DETECTION_FORMATS,
    RESNETS,
    "RESNET50",
    {
        "num_queries": ArgSpec(
            "int", 100, "object queries (the most objects one chip can have)", minimum=1, maximum=1000
        ),
        "hidden_dim": ArgSpec(
            "int", 256, "transformer width (a multiple of 8: 8 attention heads)", minimum=8, maximum=2048
        ),
        "enc_layers": ArgSpec("int", 6, "deformable encoder layers", minimum=0, maximum=24),
        "dec_layers": ArgSpec("int", 6, "decoder layers (each adds an auxiliary loss)", minimum=1, maximum=24),
        "dim_feedforward": ArgSpec(
            "int", 1024, "feed-forward width of the transformer layers", minimum=8, maximum=16384
        ),
        "pretrain_epochs": ArgSpec(
            "int",
            0,
            "DETReg self-supervised pre-training epochs on the training chips without labels, before training (0: off)",
            minimum=0,
            maximum=1000,
        ),
        "pretrain_proposals": ArgSpec(
            "int", 30, "region proposals per chip used as pseudo-objects by the pre-training", minimum=1, maximum=1000
        ),
    },
    esri_model_name="DETReg",
)

# Edge, road, change and MMSegmentation types (gpjobs.training.models.edges / roads / change / mmseg).
_EDGE_ARGUMENTS: dict[str, ArgSpec] = {
    "edge_targets": ArgSpec(
        "str",
        "auto",
        "edge labels: the labelled pixels (labels), the class boundaries "
        "(boundaries), or per chip thin labels as-is else boundaries (auto)",
        ("auto", "labels", "boundaries"),
    ),
}
_ROAD_ARGUMENTS: dict[str, ArgSpec] = {
    "mtl_model": ArgSpec(
        "str",
        "hourglass",
        "network: linknet (ResNet encoder); hourglass is trained as linknet here",
        ("hourglass", "linknet"),
    ),
    "gaussian_thresh": ArgSpec(
        "float",
        0.76,
        "road width comes from the labels",
        minimum=0,
        maximum=1,
        no_effect="road width comes from the labels, not from a Gaussian threshold",
    ),
    "orient_bin_size": ArgSpec(
        "int", 20, "orientation label bin size in degrees (road direction 0..180)", minimum=1, maximum=180
    ),
    "orient_theta": ArgSpec(
        "int", 8, "width in pixels of the orientation label band along the road centre", minimum=1, maximum=256
    ),
    "loss_weights": ArgSpec(
        "float_list", [1.0, 1.0], "weights of the segmentation and orientation losses", minimum=0, maximum=100
    ),
    "ignore_classes": SEGMENTATION_ARGUMENTS["ignore_classes"],
    "class_balancing": SEGMENTATION_ARGUMENTS["class_balancing"],
}
MODEL_TYPES["DEEPSORT"] = _mt(
    "DEEPSORT", "reid", "classification", {"Imagenet"}, ("REID_V1", "REID_V2"), "REID_V1", esri_model_name="DeepSort"
)
# The `model` names arcgis.learn documents for MMDetection / MMSegmentation, plus the ones we accepted before
# (gpjobs.training.models.mmdet / mmseg say which implementation trains each).
_MMDET_MODELS = (
    "atss",
    "carafe",
    "cascade_rcnn",
    "cascade_rpn",
    "dcn",
    "detectors",
    "double_heads",
    "dynamic_rcnn",
    "empirical_attention",
    "faster_rcnn",
    "fcos",
    "foveabox",
    "fsaf",
    "ghm",
    "hrnet",
    "libra_rcnn",
    "nas_fcos",
    "pafpn",
    "pisa",
    "regnet",
    "reppoints",
    "res2net",
    "retinanet",
    "sabl",
    "ssd",
    "vfnet",
    "yolo",
    "yolov3",
)
_MMSEG_MODELS = (
    "ann",
    "apcnet",
    "ccnet",
    "cgnet",
    "deeplabv3",
    "deeplabv3plus",
    "dmnet",
    "dnlnet",
    "emanet",
    "fastscnn",
    "fcn",
    "gcnet",
    "hrnet",
    "mobilenet_v2",
    "nonlocal_net",
    "ocrnet",
    "psanet",
    "pspnet",
    "resnest",
    "sem_fpn",
    "unet",
    "upernet",
)


def _openmmlab_model_name(toolbox: str, names: tuple[str, ...]) -> Callable[[Any], str]:
    """Parser of an MMDetection / MMSegmentation `model`: a name (any case); a config file path is refused."""

    def parse(raw: Any) -> str:
        name = str(raw).strip()
        if name.lower() in names:
            return name.lower()
        if "/" in name or "\\" in name or name.lower().endswith(".py"):
            raise ValueError(
                f"a config file path; this server trains the {toolbox} models by name with its own "
                f"implementations and cannot read OpenMMLab config files: use one of {', '.join(names)}"
            )
        raise ValueError(
            f"not a {toolbox} model this server trains{_did_you_mean(name.lower(), names)}; "
            f"use one of {', '.join(names)}"
        )

    return parse


MODEL_TYPES["MMDETECTION"] = _mt(
    "MMDETECTION",
    "mmdet",
    "detection",
    DETECTION_FORMATS,
    FPN_BACKBONES,
    "RESNET50",
    {
        **DETECTION_RCNN_ARGUMENTS,  # read by the R-CNN implementations (faster_rcnn, cascade_rcnn and their variants)
        "model": ArgSpec(
            "str",
            "faster_rcnn",
            "detector: an mmdetection model name arcgis.learn documents (config file paths are not "
            "supported); names without an implementation here train as the closest one, and the job "
            "messages and the .emd say which",
            _MMDET_MODELS,
            parser=_openmmlab_model_name("mmdetection", _MMDET_MODELS),
        ),
        "model_weight": ArgSpec("bool", False, "OpenMMLab checkpoint: not available offline (warns)"),
    },
    esri_model_name="MMDetection",
)
MODEL_TYPES.update(
    {
        m.name: m
        for m in (
            _mt(
                "HED_EDGEDETECTOR",
                "edges",
                "segmentation",
                SEGMENTATION_FORMATS,
                RESNETS + VGGS,
                "VGG19",
                _EDGE_ARGUMENTS,
                esri_model_name="HEDEdgeDetector",
            ),
            _mt(
                "BDCN_EDGEDETECTOR",
                "edges",
                "segmentation",
                SEGMENTATION_FORMATS,
                RESNETS + VGGS,
                "VGG19",
                _EDGE_ARGUMENTS,
                esri_model_name="BDCNEdgeDetector",
            ),
            _mt(
                "MULTITASK_ROADEXTRACTOR",
                "roads",
                "segmentation",
                SEGMENTATION_FORMATS,
                RESNETS,
                "RESNET34",
                {**_ROAD_ARGUMENTS, "monitor": ArgSpec("str", "miou", COMMON_ARGUMENTS["monitor"].help)},
                esri_model_name="MultiTaskRoadExtractor",
            ),
            _mt(
                "CONNECTNET",
                "roads",
                "segmentation",
                SEGMENTATION_FORMATS,
                RESNETS,
                "RESNET34",
                {**_ROAD_ARGUMENTS, "monitor": ArgSpec("str", "miou", COMMON_ARGUMENTS["monitor"].help)},
                esri_model_name="ConnectNet",
            ),
            _mt(
                "CHANGEDETECTOR",
                "change",
                "change",
                {"ChangeDetection"},
                RESNETS,
                "RESNET18",
                {
                    "attention_type": ArgSpec(
                        "str", "PAM", "spatial-temporal attention: PAM (pyramid) or BAM (basic)", ("PAM", "BAM")
                    ),
                },
                esri_model_name="ChangeDetector",
            ),
            _mt(
                "MMSEGMENTATION",
                "mmseg",
                "segmentation",
                SEGMENTATION_FORMATS,
                CLASSIFICATION_BACKBONES,
                "RESNET50",
                {
                    **SEGMENTATION_ARGUMENTS,
                    "model": ArgSpec(
                        "str",
                        "deeplabv3",
                        "segmentation network: an mmsegmentation model name arcgis.learn documents (config file "
                        "paths are not supported); names without an implementation here train as the closest "
                        "one, and the job messages and the .emd say which",
                        _MMSEG_MODELS,
                        parser=_openmmlab_model_name("mmsegmentation", _MMSEG_MODELS),
                    ),
                    "model_weight": ArgSpec("bool", False, "OpenMMLab checkpoint: not available offline (warns)"),
                },
                esri_model_name="MMSegmentation",
            ),
        )
    }
)


# Image captioning, object tracking and panoptic segmentation (gpjobs.training.models.captioning / siammask /
# maxdeeplab).
DECODER_PARAMS_DEFAULTS: dict[str, Any] = {
    "embed_size": 100,
    "hidden_size": 100,
    "attention_size": 100,
    "teacher_forcing": 1.0,
    "dropout": 0.1,
    "pretrained_emb": False,
}


def _parse_decoder_params(raw: Any) -> dict[str, Any]:
    """IMAGECAPTIONER `decoder_params`: a JSON object over DECODER_PARAMS_DEFAULTS' keys (the rest default)."""
    value = loads_json(raw) if isinstance(raw, str) else raw
    if not isinstance(value, dict):
        raise ValueError('expected a JSON object such as {"embed_size": 100, "hidden_size": 100}')
    out = dict(DECODER_PARAMS_DEFAULTS)
    for key, item in value.items():
        name = str(key).strip().lower()
        if name not in out:
            raise ValueError(f"unknown key '{key}'{_did_you_mean(name, out)}; keys: {', '.join(out)}")
        try:
            if name == "pretrained_emb":
                out[name] = parse_bool(item)
            elif name in ("teacher_forcing", "dropout"):
                out[name] = parse_float(item, 0.0, 1.0)
            else:
                out[name] = parse_int(item, 1, 4096)
        except ValueError as exc:
            raise ValueError(f"{name}: {exc}") from None
    return out


# Chip sizes a model type's network needs: the side must be a multiple of this (checked at submit and in the child).
CHIP_MULTIPLES: dict[str, int] = {"MAXDEEPLAB": 16}
MODEL_TYPES.update(
    {
        m.name: m
        for m in (
            _mt(
                "IMAGECAPTIONER",
                "captioning",
                "captioning",
                {"ImageCaptioning"},
                RESNETS,
                "RESNET34",
                {
                    "decoder_params": ArgSpec(
                        "object",
                        dict(DECODER_PARAMS_DEFAULTS),
                        "attention LSTM decoder: embed_size, hidden_size, attention_size (1..4096), "
                        "teacher_forcing (share of steps fed the true word, 0..1), dropout (0..1), "
                        "pretrained_emb (fastText embeddings: not available offline, ignored with a warning)",
                        parser=_parse_decoder_params,
                    ),
                    "beam_width": ArgSpec(
                        "int", 3, "beam search width when captioning (validation BLEU, predict)", minimum=1, maximum=32
                    ),
                    "max_len": ArgSpec("int", 20, "longest caption generated, in words", minimum=1, maximum=200),
                    "vocab_min_freq": ArgSpec(
                        "int",
                        4,
                        "words seen fewer times in the training captions become 'xxunk'",
                        minimum=1,
                        maximum=1_000_000,
                    ),
                },
                esri_model_name="ImageCaptioner",
            ),
            _mt(
                "SIAMMASK",
                "siammask",
                "tracking",
                {"ObjectTracking"},
                RESNETS,
                "RESNET50",
                {
                    "exemplar_size": ArgSpec(
                        "int",
                        128,
                        "side of the template crop around the target, pixels (multiple of 8)",
                        minimum=16,
                        maximum=1024,
                    ),
                    "instance_size": ArgSpec(
                        "int",
                        256,
                        "side of the search crop, pixels (multiple of 8, > exemplar_size)",
                        minimum=32,
                        maximum=2048,
                    ),
                    "seg_thr": ArgSpec(
                        "float",
                        0.35,
                        "mask probability above which a pixel belongs to the target",
                        minimum=0,
                        maximum=1,
                    ),
                    "penalty_k": ArgSpec(
                        "float", 0.04, "tracker: penalty on changes of box size and aspect ratio", minimum=0, maximum=10
                    ),
                    "window_influence": ArgSpec(
                        "float",
                        0.4,
                        "tracker: weight of the cosine window that favours small moves",
                        minimum=0,
                        maximum=1,
                    ),
                },
                esri_model_name="SiamMask",
            ),
            _mt(
                "MAXDEEPLAB",
                "maxdeeplab",
                "panoptic",
                {"Panoptic_Segmentation"},
                (),
                None,
                {
                    "n_masks": ArgSpec(
                        "int",
                        None,
                        "mask slots of the memory path (default: the most segments in a "
                        "training chip, background included, as arcgis.learn computes)",
                        minimum=1,
                        maximum=1024,
                    ),
                    "score_thresh": ArgSpec(
                        "float", 0.5, "segments whose class probability is below this are dropped", minimum=0, maximum=1
                    ),
                },
                esri_model_name="MaXDeepLab",
            ),
        )
    }
)


def chip_size_problem(info: ModelTypeInfo, chip_size: int | tuple[int, int] | None) -> str | None:
    """Why a chip size (the `chip_size` argument, else the export's tile size) cannot train `info`, or None."""
    multiple = CHIP_MULTIPLES.get(info.name)
    if not multiple or chip_size is None:
        return None
    sides = {int(s) for s in (chip_size if isinstance(chip_size, (tuple, list)) else (chip_size, chip_size))}
    bad = sorted(s for s in sides if s % multiple)
    if not bad:
        return None
    near = sorted(
        {max(multiple, s // multiple * multiple) for s in bad} | {(s // multiple + 1) * multiple for s in bad}
    )
    return (
        f"{info.name} needs chips whose side is a multiple of {multiple}; {bad[0]} px is not. Set the "
        f"chip_size argument to one (e.g. {' or '.join(map(str, near[:2]))}) or re-export with such a tile size."
    )


def implemented_model_types() -> list[str]:
    """Every model type the task lists, in catalog order (this server trains all of them)."""
    return list(MODEL_TYPES)


def backbone_choices() -> tuple[str, ...]:
    """Every backbone some model type accepts (the task's backbone_model choice list)."""
    seen = dict.fromkeys(b for info in MODEL_TYPES.values() for b in info.backbones)
    return tuple(seen)


def lookup_model_type(name: str) -> ModelTypeInfo:
    """The model type for a (case-insensitive) `model_type` value, or ArgumentError saying what is allowed."""
    info = MODEL_TYPES.get(str(name).strip().upper())
    if info is None:
        raise ArgumentError(
            f"model_type '{name}' is not a TrainDeepLearningModel model type"
            f"{_did_you_mean(str(name).strip().upper(), MODEL_TYPES)}. "
            f"Use one of: {', '.join(implemented_model_types())}."
        )
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
            f"Valid backbones: {', '.join(info.backbones)}."
        )
    return name


def parse_given_arguments(info: ModelTypeInfo, raw: dict[str, Any] | None) -> dict[str, Any]:
    """The arguments the user set, typed and under their canonical (lower-case) names; ArgumentError
    lists every unknown name and bad value at once, each with what is accepted.

    Names are matched case-insensitively (`MIXUP` == `mixup`); values may be strings as the ArcGIS
    clients send them ("True", "[1, 2, 3, 6]", "0.3"). Empty values count as not set.
    """
    values: dict[str, Any] = {}
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
            values[name] = spec.parse(raw_value)
        except (ValueError, TypeError) as exc:
            problems.append(f"argument '{key}' = {_shown(raw_value)} is not valid: {exc}")
    if problems:
        known = ", ".join(sorted(info.arguments))
        raise ArgumentError("; ".join(problems) + f". Arguments {info.name} accepts: {known}.")
    return values


def parse_arguments(info: ModelTypeInfo, raw: dict[str, Any] | None) -> dict[str, Any]:
    """Every argument of the model type, typed: the given values over the declared defaults."""
    return {**{name: spec.default for name, spec in info.arguments.items()}, **parse_given_arguments(info, raw)}


def _shown(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."
