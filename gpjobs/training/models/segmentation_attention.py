"""MMSEGMENTATION's attention context heads on the deepest tap: non-local, disentangled non-local, global
context (GCNet) and criss-cross (CCNet) attention.

Each head is mmsegmentation's FCN-style head around its block: 3x3 conv -> block -> 3x3 conv -> concat the
input -> 3x3 conv -> classifier. The blocks are residual and start as the identity (their output projection
or gain is zero-initialised), so a pretrained backbone's features pass through unchanged at the start.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import torch
from torch import nn

from gpjobs.training.models.decoders import conv_bn_relu


class NonLocalBlock(nn.Module):
    """Non-local block (Wang et al. 2018), embedded Gaussian with scaled dot products; `disentangled` makes it
    DNL (Yin et al. 2020): whitened pairwise term (temperature 0.05) plus a unary term."""

    def __init__(self, channels: int, disentangled: bool = False) -> None:
        super().__init__()
        inner = max(1, channels // 2)
        self.theta, self.phi, self.g = (nn.Conv2d(channels, inner, 1) for _ in range(3))
        self.out = nn.Sequential(nn.Conv2d(inner, channels, 1, bias=False), nn.BatchNorm2d(channels))
        nn.init.zeros_(self.out[1].weight)
        self.mask = nn.Conv2d(channels, 1, 1) if disentangled else None
        self.scale = inner**-0.5 / (0.05 if disentangled else 1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        q = self.theta(x).flatten(2)  # [B, D, HW]
        k = self.phi(x).flatten(2)
        v = self.g(x).flatten(2).transpose(1, 2)  # [B, HW, D]
        if self.mask is not None:
            q = q - q.mean(2, keepdim=True)
            k = k - k.mean(2, keepdim=True)
        y = torch.bmm((torch.bmm(q.transpose(1, 2), k) * self.scale).softmax(-1), v)  # [B, HW, D]
        if self.mask is not None:
            unary = self.mask(x).flatten(2).softmax(-1)  # [B, 1, HW]
            y = y + torch.bmm(unary, v)
        return x + self.out(y.transpose(1, 2).reshape(b, -1, h, w))


class GlobalContextBlock(nn.Module):
    """GC block (Cao et al. 2019): attention-pooled global context, a bottleneck transform (ratio 1/4,
    LayerNorm), added to every position."""

    def __init__(self, channels: int, ratio: float = 0.25) -> None:
        super().__init__()
        inner = max(1, int(channels * ratio))
        self.mask = nn.Conv2d(channels, 1, 1)
        self.transform = nn.Sequential(
            nn.Conv2d(channels, inner, 1),
            nn.LayerNorm([inner, 1, 1]),
            nn.ReLU(inplace=True),
            nn.Conv2d(inner, channels, 1),
        )
        nn.init.zeros_(self.transform[-1].weight)
        nn.init.zeros_(self.transform[-1].bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, _, _ = x.shape
        weights = self.mask(x).flatten(2).softmax(-1)  # [B, 1, HW]
        context = torch.bmm(x.flatten(2), weights.transpose(1, 2)).view(b, c, 1, 1)
        return x + self.transform(context)


class CrissCrossAttention(nn.Module):
    """Criss-cross attention (Huang et al. 2019): each position attends to its row and column; applied
    `recurrence` times (2, as CCNet) the context reaches the whole map."""

    def __init__(self, channels: int, recurrence: int = 2) -> None:
        super().__init__()
        inner = max(1, channels // 8)
        self.query, self.key = nn.Conv2d(channels, inner, 1), nn.Conv2d(channels, inner, 1)
        self.value = nn.Conv2d(channels, channels, 1)
        self.gamma = nn.Parameter(torch.zeros(1))
        self.recurrence = recurrence

    def _once(self, x: torch.Tensor) -> torch.Tensor:
        h = x.shape[2]
        q, k, v = self.query(x), self.key(x), self.value(x)
        column = torch.einsum("bchw,bcgw->bhwg", q, k)  # [B, H, W, H]: same column
        self_position = torch.eye(h, dtype=torch.bool, device=x.device)[:, None, :]  # counted once, in the row
        column = column.masked_fill(self_position, float("-inf"))
        row = torch.einsum("bchw,bchg->bhwg", q, k)  # [B, H, W, W]: same row
        attention = torch.cat([column, row], -1).softmax(-1)
        out = torch.einsum("bhwg,bcgw->bchw", attention[..., :h], v) + torch.einsum(
            "bhwg,bchg->bchw", attention[..., h:], v
        )
        return x + self.gamma * out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for _ in range(self.recurrence):
            x = self._once(x)
        return x


BLOCKS: dict[str, Callable[[int], nn.Module]] = {
    "nonlocal_net": NonLocalBlock,
    "dnlnet": partial(NonLocalBlock, disentangled=True),
    "gcnet": GlobalContextBlock,
    "ccnet": CrissCrossAttention,
}


class ContextHead(nn.Module):
    """mmsegmentation's NLHead / DNLHead / GCHead / CCHead shape around one of BLOCKS."""

    def __init__(self, cin: int, num_outputs: int, block: str) -> None:
        super().__init__()
        width = int(min(512, cin))
        self.conv_in = conv_bn_relu(cin, width)
        self.block = BLOCKS[block](width)
        self.conv_out = conv_bn_relu(width, width)
        self.fuse = conv_bn_relu(cin + width, width)
        self.cls = nn.Sequential(nn.Dropout(0.1), nn.Conv2d(width, num_outputs, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv_out(self.block(self.conv_in(x)))
        return self.cls(self.fuse(torch.cat([x, y], 1)))
