"""MMSEGMENTATION decode heads over FeatureBackbone taps: UPerNet, OCRNet, Semantic FPN and HRNetV2's head.

Written from the papers and mmsegmentation's head configurations (channel widths capped by the backbone's
deepest width so small backbones get thin heads). Each pyramid-style head takes the stride-4..32 taps and
returns logits at the input size; OCRNet is a whole network because its head needs the auxiliary head's
soft object regions at inference too.

These heads get the undilated backbone (stride 32), where mmsegmentation's ResNet-OCR config dilates to stride
8: they read the finer taps themselves (FPN fusion, stride-8 concatenation) instead.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import FeaturePyramidNetwork

from gpjobs.training.models.decoders import FCNHead, PyramidPooling, conv_bn_relu


def _up(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)


def head_width(channels: Sequence[int]) -> int:
    """mmsegmentation's 512-channel heads, thinner for backbones whose deepest map is narrower."""
    return int(min(512, channels[-1]))


def classifier(cin: int, num_outputs: int) -> nn.Sequential:
    return nn.Sequential(nn.Dropout(0.1), nn.Conv2d(cin, num_outputs, 1))


class UPerHead(nn.Module):
    """UPerNet (Xiao et al. 2018): pyramid pooling on the deepest tap, an FPN over the others, every level
    upsampled to stride 4, concatenated and fused."""

    def __init__(self, channels: Sequence[int], num_outputs: int) -> None:
        super().__init__()
        taps = list(channels[1:])  # strides 4, 8, 16, 32
        width = head_width(channels)
        self.ppm = PyramidPooling(taps[-1], [1, 2, 3, 6], cout=width)
        self.lateral = nn.ModuleList(conv_bn_relu(c, width, k=1) for c in taps[:-1])
        self.fpn = nn.ModuleList(conv_bn_relu(width, width) for _ in taps[:-1])
        self.fuse = conv_bn_relu(width * len(taps), width)
        self.cls = classifier(width, num_outputs)

    def forward(
        self, feats: Sequence[torch.Tensor], deep: torch.Tensor | None = None, size: Sequence[int] | None = None
    ) -> torch.Tensor:
        taps = list(feats[1:])
        laterals = [conv(f) for conv, f in zip(self.lateral, taps[:-1])] + [self.ppm(taps[-1])]
        for i in range(len(laterals) - 1, 0, -1):  # top-down
            laterals[i - 1] = laterals[i - 1] + _up(laterals[i], laterals[i - 1].shape[-2:])
        outs = [conv(x) for conv, x in zip(self.fpn, laterals[:-1])] + [laterals[-1]]
        base = outs[0].shape[-2:]
        x = self.cls(self.fuse(torch.cat([outs[0]] + [_up(o, base) for o in outs[1:]], 1)))
        return x if size is None else _up(x, size)


class SemanticFPNHead(nn.Module):
    """Panoptic FPN's semantic branch (Kirillov et al. 2019, mmseg `sem_fpn`): an FPN (256) over the stride
    4..32 taps; each level is brought to stride 4 by (3x3 conv 128, x2 upsampling) steps and the levels are
    summed."""

    def __init__(self, channels: Sequence[int], num_outputs: int, strides: Sequence[int]) -> None:
        super().__init__()
        taps = list(channels[1:])
        self.fpn = FeaturePyramidNetwork(taps, 256)
        self.scale_heads = nn.ModuleList()
        base = strides[1]
        for stride in strides[1:]:
            steps = max(1, round(math.log2(stride / base)))
            layers: list[nn.Module] = []
            for k in range(steps):
                layers.append(conv_bn_relu(256 if k == 0 else 128, 128))
                if stride != base:
                    layers.append(nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False))
            self.scale_heads.append(nn.Sequential(*layers))
        self.cls = classifier(128, num_outputs)

    def forward(
        self, feats: Sequence[torch.Tensor], deep: torch.Tensor | None = None, size: Sequence[int] | None = None
    ) -> torch.Tensor:
        levels = list(self.fpn(OrderedDict((str(i), f) for i, f in enumerate(feats[1:]))).values())
        base = levels[0].shape[-2:]
        x = sum(_up(head(level), base) for head, level in zip(self.scale_heads, levels))
        x = self.cls(x)
        return x if size is None else _up(x, size)


class HRNetV2Head(nn.Module):
    """HRNetV2's representation head (Sun et al. 2019, mmseg `hrnet`): every tap resized to stride 4,
    concatenated, a 1x1 conv and the classifier."""

    def __init__(self, channels: Sequence[int], num_outputs: int) -> None:
        super().__init__()
        total = int(sum(channels[1:]))
        width = min(512, total)
        self.fuse = conv_bn_relu(total, width, k=1)
        self.cls = classifier(width, num_outputs)

    def forward(
        self, feats: Sequence[torch.Tensor], deep: torch.Tensor | None = None, size: Sequence[int] | None = None
    ) -> torch.Tensor:
        base = feats[1].shape[-2:]
        x = self.cls(self.fuse(torch.cat([feats[1]] + [_up(f, base) for f in feats[2:]], 1)))
        return x if size is None else _up(x, size)


class ObjectContext(nn.Module):
    """OCR's object-contextual representation: soft object regions gather region features; each pixel
    attends to the regions (key/query 256) and its context is fused with its own feature."""

    def __init__(self, channels: int, key_channels: int = 256) -> None:
        super().__init__()
        self.query = nn.Sequential(
            conv_bn_relu(channels, key_channels, k=1), conv_bn_relu(key_channels, key_channels, k=1)
        )
        self.key = nn.Sequential(
            conv_bn_relu(channels, key_channels, k=1), conv_bn_relu(key_channels, key_channels, k=1)
        )
        self.value = conv_bn_relu(channels, key_channels, k=1)
        self.out = conv_bn_relu(key_channels, channels, k=1)
        self.fuse = conv_bn_relu(2 * channels, channels, k=1)
        self.key_channels = key_channels

    def forward(self, pixels: torch.Tensor, regions: torch.Tensor) -> torch.Tensor:
        b, _, h, w = pixels.shape
        probs = regions.flatten(2).softmax(2)  # [B, K, HW]: each region's spatial distribution
        context = torch.bmm(probs, pixels.flatten(2).transpose(1, 2))  # [B, K, C]
        context = context.transpose(1, 2)[..., None]  # [B, C, K, 1]
        q = self.query(pixels).flatten(2).transpose(1, 2)  # [B, HW, D]
        k = self.key(context).flatten(2)  # [B, D, K]
        v = self.value(context).flatten(2).transpose(1, 2)  # [B, K, D]
        attention = (torch.bmm(q, k) * self.key_channels**-0.5).softmax(-1)
        ctx = torch.bmm(attention, v).transpose(1, 2).reshape(b, self.key_channels, h, w)
        return self.fuse(torch.cat([self.out(ctx), pixels], 1))


class OCRNet(nn.Module):
    """OCRNet (Yuan et al. 2020) as mmsegmentation's HRNet-OCR: the stride-8, 16 and 32 taps resized to stride
    8 and concatenated form the pixel representation (the resolution mmseg's dilated ResNet-OCR works at; the
    backbone here is undilated); an FCN head on it gives the soft object regions (and the auxiliary loss, weight
    0.4), which the OCR head then uses. Same interface as SegmentationNet."""

    def __init__(self, backbone: nn.Module, num_outputs: int) -> None:
        super().__init__()
        strides = [int(s) for s in backbone.strides]
        self.taps = [i for i, s in enumerate(strides) if s >= 8] or [len(strides) - 1]
        channels = [int(c) for c in backbone.out_channels]
        concat = sum(channels[i] for i in self.taps)
        width = head_width(backbone.out_channels)
        self.backbone = backbone
        self.aux = FCNHead(concat, num_outputs)
        self.bottleneck = conv_bn_relu(concat, width)
        self.ocr = ObjectContext(width, min(256, width))
        self.cls = classifier(width, num_outputs)

    def forward_train(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        size = x.shape[-2:]
        feats = list(self.backbone(x).values())
        base = feats[self.taps[0]].shape[-2:]
        rep = torch.cat([feats[self.taps[0]]] + [_up(feats[i], base) for i in self.taps[1:]], 1)
        regions = self.aux(rep)
        logits = _up(self.cls(self.ocr(self.bottleneck(rep), regions)), size)
        return logits, (_up(regions, size) if self.training else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_train(x)[0]
