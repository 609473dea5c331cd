"""Start a model from weights trained elsewhere: a `pretrained_model` package (ours or arcgis.learn's), or the
COCO-trained torchvision detectors and DeepLabV3 when they are installed in the weights directory.

Packages
- gpjobs packages (`.emd` key `Gpjobs`): our own state dict; tensors load by name where the shapes match.
- arcgis.learn packages (no `Gpjobs` key, `ModelName` such as `UnetClassifier`, `Framework`
  `arcgis.learn.models._inferencing`): the `.pth` is fastai's `Learner.save`, a state dict or
  `{"model": state_dict, "opt": ...}` (DataParallel's `module.` prefix and weight-normed convs are undone).
  The backbone is found under any prefix, in any of the three layouts arcgis.learn saves:
    - fastai `create_body` (cnn_learner classifiers and SSD `0.<i>`, DynamicUnet `layers.0.<i>`, RetinaNet
      `encoder.<i>`, DeepLab `backbone.<i>`): `<i>` indexes torchvision's top-level children (ResNet: conv1, bn1,
      relu, maxpool, layer1..4; DenseNet/VGG/MobileNetV2: `features`);
    - the same with `features` unwrapped (PSPNet `model.layers.0.<i>` for DenseNet/VGG): `<i>` indexes the
      children of torchvision's `features`;
    - torchvision's own names (FasterRCNN/MaskRCNN `backbone.body.`, DeepLab-ResNet101 `backbone.`).
  The layout and prefix that read the most backbone tensors win. Heads load where the architectures match:
  FEATURE_CLASSIFIER (fastai `create_head` = our head), a DynamicUnet decoder (decoders.DynamicUnetDecoder;
  UNET itself uses our lighter decoder, so an arcgis.learn U-Net lends its backbone only), DEEPLAB
  (torchvision DeepLabHead and FCN aux head), PSPNET (pyramid pooling, and without use_unet the final convs where
  their widths agree, e.g. ResNet-50), FASTERRCNN / MASKRCNN
  (torchvision FPN, RPN and RoI heads). SSD, RetinaNet and YOLOv3 heads differ from ours and start fresh.
- A first convolution saved for 3 bands is spread over the data's bands (as for ImageNet weights).

When fewer than all backbone tensors load, the job stops before training (a partially random backbone that
freeze_model keeps fixed trains badly and silently) unless `allow_partial_pretrained` is true.

COCO weights (`catalog.TORCHVISION_COCO_WEIGHT_FILES`): FASTERRCNN / MASKRCNN / RETINANET on RESNET50 and DEEPLAB
on RESNET50 / RESNET101 start from torchvision's COCO model when its file is in the weights directory, as
arcgis.learn does: backbone, FPN, RPN and heads load; the layers whose shape depends on the classes start fresh.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import torch
from torch import nn

from gpjobs.catalog import TORCHVISION_COCO_WEIGHT_FILES
from gpjobs.training.feature_backbone import FeatureBackbone, spread_band_filters
from gpjobs.training.package import Package, PackageError
from gpjobs.training.weights import WeightsMissing, WeightsPolicy, torchvision_key_names

Say = Callable[[str, str], None]
State = dict[str, torch.Tensor]

# Source prefix -> our prefix, per model type, for the parts after the backbone (see the module docstring).
_FASTAI_CLASSIFIER_HEAD = {"1.2.": "head.1.", "1.4.": "head.3.", "1.6.": "head.5.", "1.8.": "head.7."}
_DEEPLAB_HEAD = {
    "classifier.": "head.",
    "aux_classifier.0.": "aux.0.0.",
    "aux_classifier.1.": "aux.0.1.",
    "aux_classifier.4.": "aux.2.",
}
# (arcgis.learn's U-Net PSPNet follows the pyramid with a biased conv and no BatchNorm: only the pyramid maps)
_PSPNET_HEAD = {
    "ppm.features.": "context.branches.",
    "final.0.": "context.fuse.0.",
    "final.1.": "context.fuse.1.",
    "final.4.": "head.1.",
    "model.layers.0.8.features.": "context.branches.",
}
_RCNN_HEAD = {"backbone.fpn.": "net.backbone.fpn.", "rpn.": "net.rpn.", "roi_heads.": "net.roi_heads."}
_RETINANET_HEAD = {"backbone.fpn.": "net.backbone.fpn.", "head.": "net.head."}
HEAD_RULES: dict[str, dict[str, str]] = {
    "FEATURE_CLASSIFIER": _FASTAI_CLASSIFIER_HEAD,
    "DEEPLAB": _DEEPLAB_HEAD,
    "PSPNET": _PSPNET_HEAD,
    "FASTERRCNN": _RCNN_HEAD,
    "MASKRCNN": _RCNN_HEAD,
    "RETINANET": _RETINANET_HEAD,
}


@dataclass
class LoadReport:
    """What loaded, per part of our model (backbone, head, aux, fpn, rpn, ...)."""

    source: str
    loaded: dict[str, int] = field(default_factory=dict)
    total: dict[str, int] = field(default_factory=dict)
    shape_mismatch: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def backbone_complete(self) -> bool:
        return self.loaded.get("backbone", 0) == self.total.get("backbone", 0)

    def counts(self) -> str:
        order = ["backbone"] + sorted(p for p in self.total if p != "backbone")
        return ", ".join(f"{p} {self.loaded.get(p, 0)}/{self.total[p]}" for p in order if p in self.total)


def start_from_pretrained(
    model: nn.Module, family: Any, package: Package | None, weights: WeightsPolicy, say: Say
) -> LoadReport | None:
    """Load a package's weights (fine-tuning) or, without one, COCO weights that fit; updates `weights.outcome`.

    Raises PackageError when a package leaves backbone tensors unloaded (unless allow_partial_pretrained) and
    WeightsMissing when missing_weights = "fail" had waited for COCO weights that do not fit this job.
    """
    if package is not None:
        loaded = load_package_weights(model, family, package, say)
        weights.outcome = f"fine-tuned from {loaded.source}: {loaded.counts()} tensors"
        return loaded
    report = load_coco_weights(model, family, weights, say)
    weights.settle_pending(say)
    return report


def load_package_weights(model: nn.Module, family: Any, package: Package, say: Say) -> LoadReport:
    """Map a pretrained_model package onto `model` and load it; the report says what loaded where."""
    name = Path(package.weights_path).name
    if package.backbone and package.backbone != str(family.backbone).upper():
        # deeper ResNets share their first blocks' shapes with shallower ones: names alone would "fit"
        raise PackageError(
            f"pretrained_model {name} was trained with backbone {package.backbone}; this job builds "
            f"{family.backbone}. Use backbone_model {package.backbone}."
        )
    with package.open_weights() as weights_file:  # inside the package's store (PackageError otherwise)
        source = read_state_dict(weights_file, name)
    if package.emd.get("Gpjobs"):
        mapped = _same_names(source, model)
        report = _load(model, family, mapped, f"{package.emd_path.stem} (gpjobs package)")
    else:
        esri = f"arcgis.learn {package.emd.get('ModelName', '?')}"
        mapped, layout = map_foreign_state(source, model, family)
        report = _load(model, family, mapped, f"{package.emd_path.stem} ({esri}, {layout})")
    old = [c.get("Value") for c in package.emd.get("Classes", [])]
    new = [c.value for c in family.info.classes]
    if old != new:
        say(
            "warning",
            f"the pretrained model's classes {old} differ from the data's {new}; layers whose shape "
            "depends on the classes start fresh",
        )
    _explain(report, family, f"pretrained_model {name}", say)
    return report


def load_coco_weights(model: nn.Module, family: Any, weights: WeightsPolicy, say: Say) -> LoadReport | None:
    """torchvision's COCO weights for this model type and backbone, when the file is in the weights directory."""
    file_name = TORCHVISION_COCO_WEIGHT_FILES.get((family.model_type.name, str(family.backbone).upper()))
    if not file_name or not weights.weights_dir or not (Path(weights.weights_dir) / file_name).is_file():
        return None
    path = Path(weights.weights_dir) / file_name
    try:
        source = read_state_dict(path)
    except PackageError as exc:
        raise WeightsMissing(f"COCO weights {file_name} could not be read: {exc}") from exc
    mapped, _ = map_foreign_state(source, model, family)
    report = _load(model, family, mapped, f"{file_name} (COCO)")
    if not report.backbone_complete:
        raise WeightsMissing(
            f"COCO weights {file_name} do not fit {family.backbone}: backbone "
            f"{report.loaded.get('backbone', 0)}/{report.total['backbone']} tensors loaded. "
            "Replace the file with torchvision's, or remove it to start from ImageNet weights."
        )
    weights.pending = None
    fresh = (
        f"; {len(report.shape_mismatch)} class-dependent tensors re-initialised for {family.num_classes} classes"
        if report.shape_mismatch
        else ""
    )
    weights.outcome = f"loaded {file_name} (COCO: {report.counts()} tensors{fresh})"
    weights.history.append(weights.outcome)
    say("info", f"Pretrained weights: {weights.outcome}")
    return report


# --- reading ---------------------------------------------------------------------------------------------------


def read_state_dict(source: Path | BinaryIO, name: str | None = None) -> State:
    """The tensors of a saved model (a path or an open file): plain, fastai `{'model': ...}` or
    `{'state_dict': ...}`, DataParallel's `module.` prefix removed, weight-normed convs folded into plain weights,
    torchvision's legacy names fixed."""
    name = name or Path(str(source)).name
    try:
        state = torch.load(source, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickled classes, truncated file, not a torch file
        raise PackageError(
            f"{name} is not a readable PyTorch state dict ({type(exc).__name__}: "
            f"{exc}). Save it with torch.save(model.state_dict(), path)."
        ) from exc
    for key in ("model", "state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise PackageError(f"{name} holds a {type(state).__name__}, not a state dict")
    tensors = {str(k): v for k, v in state.items() if isinstance(v, torch.Tensor)}
    if tensors and all(k.startswith("module.") for k in tensors):
        tensors = {k[len("module.") :]: v for k, v in tensors.items()}
    for key in [k for k in tensors if k.endswith(".weight_g")]:
        base = key[: -len("_g")]
        if base + "_v" in tensors:  # torch weight_norm: w = g * v / ||v|| (norm over all but dim 0)
            g, v = tensors.pop(key), tensors.pop(base + "_v")
            norm = v.flatten(1).norm(dim=1).view(-1, *([1] * (v.dim() - 1)))
            tensors[base] = g * v / norm
    return torchvision_key_names(tensors)


# --- mapping ---------------------------------------------------------------------------------------------------


def map_foreign_state(source: State, model: nn.Module, family: Any) -> tuple[State, str]:
    """(our key -> tensor, layout description) for a state dict in arcgis.learn / fastai / torchvision naming."""
    backbone = family.backbone_module(model)
    prefix = _module_prefix(model, backbone)
    mapped: State = {}
    layout = "no backbone found"
    if isinstance(backbone, FeatureBackbone):
        body, layout, body_prefix = best_backbone_mapping(source, backbone)
        mapped.update({prefix + k: v for k, v in body.items()})
        rules = dict(HEAD_RULES.get(family.model_type.name, {}))
        decoder = getattr(model, "head", None)
        if decoder is not None and hasattr(decoder, "fastai_layers") and body_prefix.endswith("0."):
            parent = body_prefix[:-2]  # DynamicUnet: layers.0 is the body, layers.<i> the decoder
            rules.update({f"{parent}{i}.": f"head.{attr}." for i, attr in decoder.fastai_layers()})
        own = model.state_dict()
        for key, tensor in source.items():
            for src, dst in rules.items():
                if key.startswith(src) and dst + key[len(src) :] in own:
                    mapped[dst + key[len(src) :]] = tensor
    return mapped, layout


def best_backbone_mapping(source: State, backbone: FeatureBackbone) -> tuple[State, str, str]:
    """The backbone tensors found in `source` under the prefix and layout that give the most same-shape matches:
    (our backbone key -> tensor, layout description, source prefix)."""
    own = backbone.state_dict()
    anchors = [k for k, v in own.items() if k.endswith(".weight") and v.dim() == 4]  # every conv
    best: tuple[State, str, str] = ({}, "no backbone found", "")
    for layout, translate in _layouts(backbone).items():
        names = [translate(backbone.source_names.get(k, k)) for k in anchors]
        for prefix in _prefixes(source, [n for n in names if n is not None]):
            found: State = {}
            for ours, theirs in backbone.source_names.items():
                name = translate(theirs)
                tensor = source.get(prefix + name) if name is not None else None
                if tensor is not None and _fits(tensor, own[ours], ours == backbone.first_conv_name + ".weight"):
                    found[ours] = tensor
            if len(found) > len(best[0]):
                best = (found, f"{layout} under '{prefix}'", prefix)
    return best


def _layouts(backbone: FeatureBackbone) -> dict[str, Callable[[str], str | None]]:
    children, features = backbone.source_children, backbone.source_features

    def torchvision(name: str) -> str | None:
        return name

    def create_body(name: str) -> str | None:
        head, _, rest = name.partition(".")
        return f"{children.index(head)}.{rest}" if head in children else None

    def unwrapped(name: str) -> str | None:
        top, _, rest = name.partition(".")
        child, _, rest = rest.partition(".")
        return f"{features.index(child)}.{rest}" if top == "features" and child in features else None

    layouts: dict[str, Callable[[str], str | None]] = {"torchvision names": torchvision}
    if children:
        layouts["fastai create_body"] = create_body
    if features:
        layouts["fastai create_body, features unwrapped"] = unwrapped
    return layouts


def _prefixes(source: State, anchors: list[str]) -> list[str]:
    """Every prefix P (empty or ending with '.') such that P + an anchor is a key of `source`."""
    found = set()
    for anchor in anchors:
        found |= {
            k[: -len(anchor)]
            for k in source
            if k.endswith(anchor) and (len(k) == len(anchor) or k[-len(anchor) - 1] == ".")
        }
    return sorted(found)


def _fits(tensor: torch.Tensor, target: torch.Tensor, first_conv: bool) -> bool:
    if tensor.shape == target.shape:
        return True
    # a first conv saved for 3 bands is spread over ours (rebuilt in _load)
    return (
        first_conv and tensor.dim() == 4 and tensor.shape[0] == target.shape[0] and tensor.shape[2:] == target.shape[2:]
    )


def _same_names(source: State, model: nn.Module) -> State:
    own = model.state_dict()
    return {k: v for k, v in source.items() if k in own}


def _module_prefix(model: nn.Module, module: nn.Module | None) -> str:
    for name, candidate in model.named_modules():
        if candidate is module:
            return f"{name}." if name else ""
    return ""


# --- loading and reporting -------------------------------------------------------------------------------------


def _part(key: str, backbone_prefix: str) -> str:
    if backbone_prefix and key.startswith(backbone_prefix):
        return "backbone"
    parts = key.split(".")
    if parts[0] == "net":
        parts = parts[1:]
    if parts[:2] == ["backbone", "fpn"]:
        return "fpn"
    return parts[0]


def _load(model: nn.Module, family: Any, mapped: State, source: str) -> LoadReport:
    own = model.state_dict()
    backbone = family.backbone_module(model)
    prefix = _module_prefix(model, backbone) if backbone is not None else ""
    first = f"{prefix}{backbone.first_conv_name}.weight" if isinstance(backbone, FeatureBackbone) else None
    report = LoadReport(source)
    usable: State = {}
    for key, target in own.items():
        if key.endswith("num_batches_tracked"):
            continue
        part = _part(key, prefix)
        report.total[part] = report.total.get(part, 0) + 1
        tensor = mapped.get(key)
        if tensor is None:
            continue
        if tensor.shape != target.shape:
            if key == first and _fits(tensor, target, True):
                tensor = spread_band_filters(tensor, target.shape[1])
                report.notes.append(f"first convolution spread from {mapped[key].shape[1]} to {target.shape[1]} bands")
            else:
                report.shape_mismatch.append(key)
                continue
        usable[key] = tensor.to(target.dtype)
        report.loaded[part] = report.loaded.get(part, 0) + 1
    model.load_state_dict(usable, strict=False)
    return report


def _explain(report: LoadReport, family: Any, what: str, say: Say) -> None:
    """The job message; stops the job when the backbone is incomplete and partial loads were not accepted."""
    text = f"Fine-tuning from {report.source}: {report.counts()} weight tensors loaded"
    if report.shape_mismatch:
        text += f"; {len(report.shape_mismatch)} start fresh (shapes differ, e.g. class outputs)"
    if report.notes:
        text += "; " + "; ".join(report.notes)
    if report.backbone_complete:
        say("info", text)
        return
    loaded, total = report.loaded.get("backbone", 0), report.total.get("backbone", 0)
    if not family.args.get("allow_partial_pretrained"):
        raise PackageError(
            f"{what}: only {loaded} of the {total} backbone tensors of {family.backbone} could be read "
            f"({report.counts()}). Training would start from a partly random backbone. Use the package's "
            "backbone_model and model_type, or pass the argument allow_partial_pretrained=true to train anyway "
            "(with freeze_model=false, so that the layers left random can learn)."
        )
    say(
        "warning",
        text + f". allow_partial_pretrained: {total - loaded} backbone tensors start from random "
        "weights; train with freeze_model=false so that they can learn",
    )
