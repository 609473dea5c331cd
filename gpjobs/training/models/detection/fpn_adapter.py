"""A feature pyramid over any of our feature backbones, shaped like torchvision's BackboneWithFPN.

torchvision's `resnet_fpn_backbone` builds its own ResNet (3 bands, its own weight loading). Going through the
backbone factory instead keeps one place for multispectral first convs and local weights, and lets the same
detectors run over DenseNet / VGG / MobileNet taps. Anchor sizes are set relative to the (resized) chip, not
torchvision's 800-px defaults, so that 32-px and 448-px chips both get anchors of the size of their objects.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Sequence

import torch
from torch import nn
from torchvision.ops.feature_pyramid_network import FeaturePyramidNetwork, LastLevelMaxPool, LastLevelP6P7

FPN_CHANNELS = 256


class FeaturePyramid(nn.Module):
    """body taps (strides >= min_stride, at most `levels` of the deepest) -> FPN maps; `.out_channels` = 256.

    `extra="maxpool"` adds a pooled level (Faster/Mask R-CNN), `extra="p6p7"` two strided convs (RetinaNet).
    """

    def __init__(self, body: nn.Module, *, min_stride: int = 4, levels: int = 4, extra: str = "maxpool") -> None:
        super().__init__()
        self.body = body
        strides = list(body.strides)
        usable = [i for i, s in enumerate(strides) if s >= min_stride] or [len(strides) - 1]
        self.taps = usable[-levels:]
        in_channels = [int(body.out_channels[i]) for i in self.taps]
        blocks = LastLevelMaxPool() if extra == "maxpool" else LastLevelP6P7(FPN_CHANNELS, FPN_CHANNELS)
        self.fpn = FeaturePyramidNetwork(in_channels, FPN_CHANNELS, extra_blocks=blocks)
        self.out_channels = FPN_CHANNELS
        self.level_strides = [strides[i] for i in self.taps] + (
            [strides[self.taps[-1]] * 2] if extra == "maxpool" else [strides[self.taps[-1]] * 2,
                                                                     strides[self.taps[-1]] * 4])

    @property
    def num_levels(self) -> int:
        return len(self.level_strides)

    def forward(self, x: torch.Tensor) -> "OrderedDict[str, torch.Tensor]":
        feats = list(self.body(x).values())
        return self.fpn(OrderedDict((str(k), feats[i]) for k, i in enumerate(self.taps)))


def relative_anchor_sizes(image_size: int, levels: int, scales: Sequence[float] = (1.0,)) -> tuple[tuple[float, ...], ...]:
    """Anchor sizes per pyramid level, finest first: the deepest level spans the whole (resized) chip and each
    finer level halves it, times each scale (RetinaNet's `scales`)."""
    base = [image_size / 2 ** (levels - 1 - i) for i in range(levels)]
    return tuple(tuple(float(b * s) for s in scales) for b in base)
