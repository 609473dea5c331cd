"""The task's backbones as feature extractors with taps for decoders and detectors.

`build_backbone(name, in_channels, weights=..., say=..., output_stride=32)` returns a `FeatureBackbone`:
`forward(x)` gives an `OrderedDict[str, Tensor]` of feature maps from shallow to deep (strides 2, 4, 8, 16, 32 for
every torchvision family), with `.out_channels` and `.strides` beside it. Any band count works: when bands != 3 the
first convolution is rebuilt and initialised from the RGB filters (cycled over the bands and rescaled so the
activations keep their size), and it stays trainable while the rest of the backbone is frozen.

`output_stride` 16 or 8 gives the dilated backbone of DeepLab and PSPNet: the deepest downsamplings become stride 1
and every later 3x3 convolution is dilated instead (the first one of a stage keeps the previous rate, as in
torchvision's `replace_stride_with_dilation`), so the deepest taps stay at 1/16 or 1/8 of the input with the same
receptive field and the same weights. Unlike torchvision this also works for RESNET18/34 (BasicBlock), DenseNet,
VGG and MobileNetV2: a strided pooling becomes a 3x3 pooling of stride 1.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

from torch import nn

from gpjobs.catalog import ALL_BACKBONES, DENSENETS, MOBILENETS, RESNETS, VGGS
from gpjobs.training.feature_backbone import FeatureBackbone, adapt_first_conv
from gpjobs.training.weights import WeightsPolicy

Say = Callable[[str, str], None]

__all__ = ["FeatureBackbone", "build_backbone", "set_backbone_frozen", "set_output_stride"]

# The first convolution's name in torchvision's model of each family.
_FIRST_CONV = {
    **{k: "conv1" for k in RESNETS},
    **{k: "features.conv0" for k in DENSENETS},
    **{k: "features.0.0" for k in MOBILENETS},
    **{k: "features.0" for k in VGGS},
}


def _quiet(level: str, text: str) -> None:
    pass


def build_backbone(
    name: str,
    in_channels: int = 3,
    *,
    weights: WeightsPolicy | None = None,
    say: Say | None = None,
    output_stride: int = 32,
) -> FeatureBackbone:
    """The named backbone (a catalog backbone_model value) as a FeatureBackbone for `in_channels` bands."""
    import torchvision.models as tvm

    key = str(name).strip().upper()
    say = say or _quiet
    weights = weights or WeightsPolicy()
    if key == "DARKNET53":
        # Owned by the detection family; imported lazily so classification jobs never pay for it.
        from gpjobs.training.models.detection.darknet import darknet53_features

        backbone = darknet53_features(in_channels, weights=weights, say=say)
        return set_output_stride(backbone, output_stride) if output_stride != 32 else backbone
    if key not in ALL_BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; valid backbones: {', '.join(ALL_BACKBONES)}")

    net = getattr(tvm, key.lower())(weights=None)
    pretrained = weights.load_into(key, net, say)
    source_ids = {id(t): k for k, t in net.state_dict(keep_vars=True).items()}
    children = [n for n, _ in net.named_children()]
    features = [n for n, _ in net.features.named_children()] if hasattr(net, "features") else []

    if key in RESNETS:
        net.conv1, adapted = adapt_first_conv(net.conv1, in_channels, pretrained)
        stages = OrderedDict(
            [
                ("stem", nn.Sequential(net.conv1, net.bn1, net.relu)),
                ("layer1", nn.Sequential(net.maxpool, net.layer1)),
                ("layer2", net.layer2),
                ("layer3", net.layer3),
                ("layer4", net.layer4),
            ]
        )
        first = "stages.stem.0"
    elif key in DENSENETS:
        f = net.features
        f.conv0, adapted = adapt_first_conv(f.conv0, in_channels, pretrained)
        stages = OrderedDict(
            [
                ("stem", nn.Sequential(f.conv0, f.norm0, f.relu0)),
                ("block1", nn.Sequential(f.pool0, f.denseblock1)),
                ("block2", nn.Sequential(f.transition1, f.denseblock2)),
                ("block3", nn.Sequential(f.transition2, f.denseblock3)),
                ("block4", nn.Sequential(f.transition3, f.denseblock4, f.norm5, nn.ReLU(inplace=False))),
            ]
        )
        first = "stages.stem.0"
    elif key in MOBILENETS:
        f = net.features
        f[0][0], adapted = adapt_first_conv(f[0][0], in_channels, pretrained)
        cuts = [(0, 2), (2, 4), (4, 7), (7, 14), (14, len(f))]
        stages = OrderedDict((f"stage{i + 1}", nn.Sequential(*f[a:b])) for i, (a, b) in enumerate(cuts))
        first = "stages.stage1.0.0"
    elif key in VGGS:
        f = net.features
        f[0], adapted = adapt_first_conv(f[0], in_channels, pretrained)
        stages, current, index = OrderedDict(), [], 1
        for layer in f:
            current.append(layer)
            if isinstance(layer, nn.MaxPool2d):  # tap after each pooling: strides 2..32
                stages[f"pool{index}"] = nn.Sequential(*current)
                current, index = [], index + 1
        first = "stages.pool1.0"
    else:  # pragma: no cover - the catalog lists nothing else
        raise ValueError(f"no feature taps defined for backbone {key}")
    if adapted:
        say(
            "info",
            f"{key}: first convolution rebuilt for {in_channels} bands"
            + (" from the pretrained RGB filters" if pretrained else ""),
        )
    if output_stride != 32:
        _dilate(nn.ModuleList(stages.values()), output_stride)
    source_names = _source_names(stages, source_ids, first, _FIRST_CONV[key])
    return FeatureBackbone(
        key,
        stages,
        in_channels,
        first,
        adapted,
        source_names=source_names,
        source_children=children,
        source_features=features,
        output_stride=output_stride,
    )


def _source_names(
    stages: OrderedDict[str, nn.Module], source_ids: dict[int, str], first: str, source_first: str
) -> dict[str, str]:
    """Our state-dict key -> torchvision's key of the same tensor (the rebuilt first conv by position)."""
    names = {}
    for key, tensor in nn.ModuleDict(stages).state_dict(prefix="stages.", keep_vars=True).items():
        if key.startswith(first + "."):
            names[key] = source_first + key[len(first) :]
        elif id(tensor) in source_ids:
            names[key] = source_ids[id(tensor)]
    return names


def set_output_stride(backbone: FeatureBackbone, output_stride: int) -> FeatureBackbone:
    """Dilate an already built backbone to `output_stride` (16 or 8) and re-measure its taps."""
    _dilate(backbone.stages, output_stride)
    backbone.output_stride = output_stride
    backbone.out_channels, backbone.strides = backbone.probe()
    return backbone


def _dilate(stages: nn.Module, output_stride: int) -> None:
    """Replace every downsampling that would take the features below 1/output_stride by dilation.

    Modules are visited in registration order, which is forward order in every family here; a strided 1x1
    convolution is a residual shortcut beside its block's strided 3x3 conv and never counts as a downsampling.
    """
    if output_stride not in (8, 16, 32):
        raise ValueError(f"output stride must be 8, 16 or 32, not {output_stride}")
    stride, dilation = 1, 1
    for module in stages.modules():
        if isinstance(module, nn.Conv2d):
            k, s = module.kernel_size[0], module.stride[0]
            if k == 1:
                if s > 1 and dilation > 1:
                    module.stride = (1, 1)
                continue
            if s > 1 and stride * s > output_stride:
                module.stride = (1, 1)
                _set_dilation(module, dilation)
                dilation *= s
            elif s > 1:
                stride *= s
            elif dilation > 1:
                _set_dilation(module, dilation)
        elif isinstance(module, (nn.MaxPool2d, nn.AvgPool2d)):
            s = module.stride if isinstance(module.stride, int) else module.stride[0]
            if s > 1 and stride * s > output_stride:
                module.kernel_size, module.stride, module.padding = 3, 1, 1
                if isinstance(module, nn.AvgPool2d):
                    module.count_include_pad = False
                dilation *= s
            elif s > 1:
                stride *= s


def _set_dilation(conv: nn.Conv2d, dilation: int) -> None:
    k = conv.kernel_size[0]
    conv.dilation = (dilation, dilation)
    conv.padding = (dilation * (k - 1) // 2, dilation * (k - 1) // 2)


def set_backbone_frozen(backbone: nn.Module, frozen: bool) -> None:
    """Freeze (or unfreeze) a backbone the way fastai does.

    Frozen: convolution weights fixed, BatchNorm layers still trainable (fastai's train_bn) and a rebuilt
    multispectral first convolution trainable (its filters must adapt to the new bands).
    """
    for module in backbone.modules():
        is_norm = isinstance(module, (nn.BatchNorm2d, nn.GroupNorm, nn.LayerNorm))
        for param in module.parameters(recurse=False):
            param.requires_grad = (not frozen) or is_norm
    if frozen and isinstance(backbone, FeatureBackbone) and backbone.first_conv_adapted:
        for param in backbone.first_conv_parameters():
            param.requires_grad = True
