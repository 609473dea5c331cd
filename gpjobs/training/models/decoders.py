"""Decoder heads over FeatureBackbone taps: U-Net decoder, pyramid pooling (PSPNet), ASPP (DeepLab)."""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def conv_bn_relu(cin: int, cout: int, k: int = 3, dilation: int = 1) -> nn.Sequential:
    pad = dilation * (k // 2)
    return nn.Sequential(nn.Conv2d(cin, cout, k, padding=pad, dilation=dilation, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class UnetBlock(nn.Module):
    """Upsample to the skip's size, concatenate the skip, two 3x3 convs."""

    def __init__(self, cin: int, cskip: int, cout: int) -> None:
        super().__init__()
        self.convs = nn.Sequential(conv_bn_relu(cin + cskip, cout), conv_bn_relu(cout, cout))

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
        return self.convs(torch.cat([x, skip], 1))


class UnetDecoder(nn.Module):
    """U-Net decoder over taps [shallow .. deep]: the deepest map (optionally replaced by a context module's
    output with `deep_channels`) is upsampled through every shallower tap, then to the input size."""

    def __init__(self, channels: Sequence[int], num_outputs: int, deep_channels: int | None = None) -> None:
        super().__init__()
        deep = deep_channels or channels[-1]
        width = [min(256, max(32, c)) for c in channels[:-1]]
        self.middle = conv_bn_relu(deep, width[-1] * 2 if width else deep)
        blocks, cin = [], width[-1] * 2 if width else deep
        for skip_c, out_c in zip(reversed(channels[:-1]), reversed(width)):
            blocks.append(UnetBlock(cin, skip_c, out_c))
            cin = out_c
        self.blocks = nn.ModuleList(blocks)
        self.final = nn.Sequential(conv_bn_relu(cin, max(16, cin // 2)), nn.Conv2d(max(16, cin // 2), num_outputs, 1))

    def forward(self, feats: Sequence[torch.Tensor], deep: torch.Tensor | None = None,
                size: Sequence[int] | None = None) -> torch.Tensor:
        x = self.middle(feats[-1] if deep is None else deep)
        for block, skip in zip(self.blocks, reversed(feats[:-1])):
            x = block(x, skip)
        if size is not None:
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        return self.final(x)


class PyramidPooling(nn.Module):
    """PSPNet pyramid pooling: pool to each size, 1x1 conv, upsample, concatenate with the input."""

    def __init__(self, cin: int, sizes: Sequence[int], cout: int = 256) -> None:
        super().__init__()
        branch = max(16, cin // max(1, len(sizes)))
        self.branches = nn.ModuleList(
            nn.Sequential(nn.AdaptiveAvgPool2d(int(s)), nn.Conv2d(cin, branch, 1, bias=False),
                          nn.BatchNorm2d(branch), nn.ReLU(inplace=True)) for s in sizes)
        self.fuse = conv_bn_relu(cin + branch * len(sizes), cout)
        self.out_channels = cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        pooled = [F.interpolate(b(x), size=size, mode="bilinear", align_corners=False) for b in self.branches]
        return self.fuse(torch.cat([x, *pooled], 1))


class FCNHead(nn.Sequential):
    """Auxiliary head on an intermediate tap (PSPNet/DeepLab aux loss)."""

    def __init__(self, cin: int, num_outputs: int) -> None:
        mid = max(16, cin // 4)
        super().__init__(conv_bn_relu(cin, mid), nn.Dropout(0.1), nn.Conv2d(mid, num_outputs, 1))


class SegmentationNet(nn.Module):
    """backbone -> (context) -> decoder; forward gives logits at input size, forward_train adds aux logits."""

    def __init__(self, backbone: nn.Module, head: nn.Module, *, context: nn.Module | None = None,
                 aux: nn.Module | None = None, unet: bool = True) -> None:
        super().__init__()
        self.backbone = backbone
        self.context = context
        self.head = head
        self.aux = aux
        self.unet = unet

    def forward_train(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        size = x.shape[-2:]
        feats = list(self.backbone(x).values())
        deep = self.context(feats[-1]) if self.context is not None else None
        if self.unet:
            logits = self.head(feats, deep, size)
        else:
            logits = F.interpolate(self.head(deep if deep is not None else feats[-1]), size=size,
                                   mode="bilinear", align_corners=False)
        aux = None
        if self.aux is not None and self.training:
            aux = F.interpolate(self.aux(feats[-2]), size=size, mode="bilinear", align_corners=False)
        return logits, aux

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_train(x)[0]
