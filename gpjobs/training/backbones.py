"""The task's backbones as feature extractors with taps for decoders and detectors.

`build_backbone(name, in_channels, weights=..., say=...)` returns a `FeatureBackbone`: `forward(x)` gives an
`OrderedDict[str, Tensor]` of feature maps from shallow to deep (strides 2, 4, 8, 16, 32 for every torchvision
family), with `.out_channels` and `.strides` beside it. Any band count works: when bands != 3 the first
convolution is rebuilt and initialised from the RGB filters (cycled over the bands and rescaled so the
activations keep their size), and it stays trainable while the rest of the backbone is frozen.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Callable, Iterator

import torch
from torch import nn

from gpjobs.catalog import ALL_BACKBONES, DENSENETS, MOBILENETS, RESNETS, VGGS
from gpjobs.training.weights import WeightsPolicy

Say = Callable[[str, str], None]


def _quiet(level: str, text: str) -> None:
    pass


class FeatureBackbone(nn.Module):
    """Stages run in order; the output of each stage is one tap."""

    def __init__(self, name: str, stages: "OrderedDict[str, nn.Module]", in_channels: int,
                 first_conv_name: str, first_conv_adapted: bool) -> None:
        super().__init__()
        self.name = name
        self.stages = nn.ModuleDict(stages)
        self.in_channels = in_channels
        self.first_conv_name = first_conv_name  # dotted path inside this module
        self.first_conv_adapted = first_conv_adapted
        self.out_channels, self.strides = self._probe()

    def forward(self, x: torch.Tensor) -> "OrderedDict[str, torch.Tensor]":
        features: OrderedDict[str, torch.Tensor] = OrderedDict()
        for tap, stage in self.stages.items():
            x = stage(x)
            features[tap] = x
        return features

    @property
    def tap_names(self) -> list[str]:
        return list(self.stages.keys())

    def first_conv(self) -> nn.Conv2d:
        return self.get_submodule(self.first_conv_name)  # type: ignore[return-value]

    def first_conv_parameters(self) -> Iterator[nn.Parameter]:
        return self.first_conv().parameters()

    @torch.no_grad()
    def _probe(self) -> tuple[list[int], list[int]]:
        # One tiny forward in eval mode (running BN stats untouched) tells channels and strides exactly.
        was_training = self.training
        self.eval()
        size = 64
        feats = self.forward(torch.zeros(1, self.in_channels, size, size))
        self.train(was_training)
        return [f.shape[1] for f in feats.values()], [size // f.shape[-1] for f in feats.values()]


def build_backbone(name: str, in_channels: int = 3, *, weights: WeightsPolicy | None = None,
                   say: Say | None = None) -> FeatureBackbone:
    """The named backbone (a catalog backbone_model value) as a FeatureBackbone for `in_channels` bands."""
    import torchvision.models as tvm

    key = str(name).strip().upper()
    say = say or _quiet
    weights = weights or WeightsPolicy()
    if key == "DARKNET53":
        # Owned by the detection family; imported lazily so classification jobs never pay for it.
        import inspect

        from gpjobs.training.models.detection.darknet import darknet53_features

        params = inspect.signature(darknet53_features).parameters
        if "weights" in params:
            return darknet53_features(in_channels, weights=weights, say=say)
        module = darknet53_features(in_channels)
        weights.load_into("DARKNET53", module, say)
        return module
    if key not in ALL_BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; valid backbones: {', '.join(ALL_BACKBONES)}")

    builder = getattr(tvm, key.lower())
    net = builder(weights=None)
    pretrained = weights.load_into(key, net, say)

    if key in RESNETS:
        net.conv1, adapted = _adapt_conv(net.conv1, in_channels, pretrained)
        stages = OrderedDict([
            ("stem", nn.Sequential(net.conv1, net.bn1, net.relu)),
            ("layer1", nn.Sequential(net.maxpool, net.layer1)),
            ("layer2", net.layer2), ("layer3", net.layer3), ("layer4", net.layer4),
        ])
        first = "stages.stem.0"
    elif key in DENSENETS:
        f = net.features
        f.conv0, adapted = _adapt_conv(f.conv0, in_channels, pretrained)
        stages = OrderedDict([
            ("stem", nn.Sequential(f.conv0, f.norm0, f.relu0)),
            ("block1", nn.Sequential(f.pool0, f.denseblock1)),
            ("block2", nn.Sequential(f.transition1, f.denseblock2)),
            ("block3", nn.Sequential(f.transition2, f.denseblock3)),
            ("block4", nn.Sequential(f.transition3, f.denseblock4, f.norm5, nn.ReLU(inplace=False))),
        ])
        first = "stages.stem.0"
    elif key in MOBILENETS:
        f = net.features
        f[0][0], adapted = _adapt_conv(f[0][0], in_channels, pretrained)
        cuts = [(0, 2), (2, 4), (4, 7), (7, 14), (14, len(f))]
        stages = OrderedDict((f"stage{i + 1}", nn.Sequential(*f[a:b])) for i, (a, b) in enumerate(cuts))
        first = "stages.stage1.0.0"
    elif key in VGGS:
        f = net.features
        f[0], adapted = _adapt_conv(f[0], in_channels, pretrained)
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
        say("info", f"{key}: first convolution rebuilt for {in_channels} bands"
                    + (" from the pretrained RGB filters" if pretrained else ""))
    return FeatureBackbone(key, stages, in_channels, first, adapted)


def _adapt_conv(conv: nn.Conv2d, in_channels: int, pretrained: bool) -> tuple[nn.Conv2d, bool]:
    """`conv` for `in_channels` inputs: unchanged for 3 bands, else rebuilt from its RGB filters."""
    if in_channels == conv.in_channels:
        return conv, False
    new = nn.Conv2d(in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                    conv.dilation, conv.groups, conv.bias is not None)
    if pretrained:
        with torch.no_grad():
            rgb = conv.weight
            idx = torch.arange(in_channels) % rgb.shape[1]
            # Cycling R,G,B over the bands keeps the learned edge detectors; the 3/N factor keeps the
            # summed response (and so the following BatchNorm statistics) at the RGB scale.
            new.weight.copy_(rgb[:, idx] * (rgb.shape[1] / in_channels))
            if conv.bias is not None:
                new.bias.copy_(conv.bias)
    return new, True


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
