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
    return nn.Sequential(OrderedDict(
        conv=nn.Conv2d(in_ch, out_ch, kernel, stride, kernel // 2, bias=False),
        bn=nn.BatchNorm2d(out_ch),
        act=nn.LeakyReLU(0.1, inplace=True),
    ))


class DarknetResidual(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.reduce = conv_bn(channels, channels // 2, 1)
        self.expand = conv_bn(channels // 2, channels, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.expand(self.reduce(x))


class Darknet53Features(nn.Module):
    """forward(x) -> OrderedDict stage1..stage5 (64, 128, 256, 512, 1024 channels at strides 2, 4, 8, 16, 32)."""

    BLOCKS = (1, 2, 8, 8, 4)

    def __init__(self, in_channels: int = 3) -> None:
        super().__init__()
        self.stem = conv_bn(in_channels, 32, 3)
        stages = []
        channels = 32
        for n_blocks in self.BLOCKS:
            layers = [conv_bn(channels, channels * 2, 3, stride=2)]
            channels *= 2
            layers += [DarknetResidual(channels) for _ in range(n_blocks)]
            stages.append(nn.Sequential(*layers))
        self.stages = nn.ModuleList(stages)
        self.names = [f"stage{i + 1}" for i in range(len(stages))]
        self.out_channels = [64, 128, 256, 512, 1024]
        self.strides = [2, 4, 8, 16, 32]

    @property
    def first_conv(self) -> nn.Conv2d:
        """The convolution that sees the bands (rebuilt for multispectral input, trainable when frozen)."""
        return self.stem.conv

    def forward(self, x: torch.Tensor) -> "OrderedDict[str, torch.Tensor]":
        features: OrderedDict[str, torch.Tensor] = OrderedDict()
        x = self.stem(x)
        for name, stage in zip(self.names, self.stages):
            x = stage(x)
            features[name] = x
        return features


def darknet53_features(in_channels: int = 3) -> Darknet53Features:
    """The Darknet-53 feature backbone for `backbones.build_backbone('DARKNET53', ...)`."""
    return Darknet53Features(in_channels)
