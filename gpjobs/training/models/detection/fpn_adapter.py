"""A feature pyramid over any of our feature backbones, shaped like torchvision's BackboneWithFPN.

torchvision's `resnet_fpn_backbone` builds its own ResNet (3 bands, its own weight loading). Going through the
backbone factory instead keeps one place for multispectral first convs and local weights, and lets the same
detectors run over DenseNet / VGG / MobileNet taps. Anchor sizes follow the (resized) chip but are never
narrower than 4 strides of their level (see `level_anchor_sizes`), not torchvision's 800-px defaults, so that
32-px and 448-px chips both get anchors of the size of their objects. The FPN is GroupNorm'ed.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch
from torch import nn
from torchvision.ops.feature_pyramid_network import FeaturePyramidNetwork, LastLevelMaxPool, LastLevelP6P7

FPN_CHANNELS = 256


def group_norm(channels: int) -> nn.GroupNorm:
    """GroupNorm with 32 groups (or fewer when the channels do not divide): batch-size independent."""
    groups = 32
    while channels % groups:
        groups //= 2
    return nn.GroupNorm(groups, channels)


class FeaturePyramid(nn.Module):
    """body taps (strides >= min_stride, at most `levels` of the deepest) -> FPN maps; `.out_channels` = 256.

    `extra="maxpool"` adds a pooled level (Faster/Mask R-CNN), `extra="p6p7"` two strided convs (RetinaNet).
    """

    def __init__(
        self, body: nn.Module, *, min_stride: int = 4, levels: int = 4, extra: str = "maxpool", norm: bool = True
    ) -> None:
        super().__init__()
        self.body = body
        strides = list(body.strides)
        usable = [i for i, s in enumerate(strides) if s >= min_stride] or [len(strides) - 1]
        self.taps = usable[-levels:]
        in_channels = [int(body.out_channels[i]) for i in self.taps]
        blocks = LastLevelMaxPool() if extra == "maxpool" else LastLevelP6P7(FPN_CHANNELS, FPN_CHANNELS)
        # GroupNorm in the FPN keeps its outputs at unit scale whatever the backbone's (random or pretrained)
        # feature magnitudes are; without it Adam's first steps blew the heads' logits up (focal loss ~300).
        self.fpn = FeaturePyramidNetwork(
            in_channels, FPN_CHANNELS, extra_blocks=blocks, norm_layer=group_norm if norm else None
        )
        self.out_channels = FPN_CHANNELS
        self.level_strides = [strides[i] for i in self.taps] + (
            [strides[self.taps[-1]] * 2]
            if extra == "maxpool"
            else [strides[self.taps[-1]] * 2, strides[self.taps[-1]] * 4]
        )

    @property
    def num_levels(self) -> int:  # FCOS's points and ATSS's per-level scales
        return len(self.level_strides)

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        feats = list(self.body(x).values())
        return self.fpn(OrderedDict((str(k), feats[i]) for k, i in enumerate(self.taps)))


def level_anchor_sizes(
    image_size: int, strides: Sequence[int], scales: Sequence[float] = (1.0,), min_strides: float = 4.0
) -> tuple[tuple[float, ...], ...]:
    """Anchor sizes per pyramid level, finest first.

    The deepest level spans the whole (resized) chip and each finer level halves it, so large chips get
    anchors the size of their objects; but no anchor is narrower than `min_strides` strides of its level:
    smaller anchors sit so far apart on the feature grid that most objects overlap none of them well (on a
    48 px input the chip-relative rule alone gave 3 px anchors every 4 px and the R-CNNs scored AP 0).
    Each size is then multiplied by RetinaNet's `scales`.
    """
    levels = len(strides)
    base = [max(image_size / 2 ** (levels - 1 - i), min_strides * float(strides[i])) for i in range(levels)]
    return tuple(tuple(float(b * s) for s in scales) for b in base)
