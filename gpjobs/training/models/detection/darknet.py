"""Darknet-53 (YOLOv3's backbone) as a feature backbone: five taps, strides 2..32, any band count.

torchvision has no Darknet; this follows the YOLOv3 paper's layout (conv-BN-LeakyReLU(0.1), residual blocks
1-2-8-8-4). Weights, when a local `darknet53.pth` exists, are loaded by the backbone factory like any other.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn


def conv_bn(in_ch: int, out_ch: int, kernel: int, stride: int = 1) -> nn.Sequential:
    """Darknet's unit: conv (no bias) + BatchNorm + LeakyReLU(0.1)."""
    return nn.Sequential(
        OrderedDict(
            conv=nn.Conv2d(in_ch, out_ch, kernel, stride, kernel // 2, bias=False),
            bn=nn.BatchNorm2d(out_ch),
            act=nn.LeakyReLU(0.1, inplace=True),
        )
    )


class DarknetResidual(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.reduce = conv_bn(channels, channels // 2, 1)
        self.expand = conv_bn(channels // 2, channels, 3)
        # Each block starts as the identity: a randomly initialised 53-layer body then trains like a shallow
        # one (zero-initialised residual branches, Goyal et al. 2017); loaded weights overwrite this.
        nn.init.zeros_(self.expand.bn.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.expand(self.reduce(x))


BLOCKS = (1, 2, 8, 8, 4)


def darknet53_stages(in_channels: int = 3) -> OrderedDict[str, nn.Module]:
    """Darknet-53 as five stages (64, 128, 256, 512, 1024 channels at strides 2, 4, 8, 16, 32)."""
    stages: OrderedDict[str, nn.Module] = OrderedDict()
    channels = 32
    for i, n_blocks in enumerate(BLOCKS):
        layers = [conv_bn(in_channels, 32, 3)] if i == 0 else []  # the stem rides with the first stage
        layers.append(conv_bn(channels, channels * 2, 3, stride=2))
        channels *= 2
        layers += [DarknetResidual(channels) for _ in range(n_blocks)]
        stages[f"stage{i + 1}"] = nn.Sequential(*layers)
    return stages


def darknet53_features(in_channels: int = 3, *, weights=None, say=None):
    """The Darknet-53 FeatureBackbone for `backbones.build_backbone('DARKNET53', ...)`.

    Local `darknet53.pth` weights (a state dict of this 3-band module) load through the WeightsPolicy; for
    another band count the first conv is then rebuilt from the RGB filters, as for torchvision backbones.
    """
    from gpjobs.training.feature_backbone import FeatureBackbone, adapt_first_conv

    stages = darknet53_stages(3)
    pretrained = False
    if weights is not None:
        probe = nn.ModuleDict(stages)  # same key names as the stages of the FeatureBackbone
        pretrained = weights.load_into("DARKNET53", _StagesModule(probe), say)
    stem = stages["stage1"][0]
    stem.conv, adapted = adapt_first_conv(stem.conv, in_channels, pretrained)
    if adapted and say is not None:
        say("info", f"DARKNET53: first convolution rebuilt for {in_channels} bands")
    return FeatureBackbone("DARKNET53", stages, in_channels, "stages.stage1.0.conv", adapted)


class _StagesModule(nn.Module):
    """Holds the stages under `stages.` so a saved FeatureBackbone state dict loads with strict names."""

    def __init__(self, stages: nn.ModuleDict) -> None:
        super().__init__()
        self.stages = stages
