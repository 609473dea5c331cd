"""Multi-scale deformable attention (Deformable DETR, Zhu et al. 2021) in plain PyTorch with `grid_sample`.

Each query attends to `n_points` sampled locations per head and per feature level around its reference
point, instead of to every pixel: sampling offsets and attention weights are predicted from the query, the
values are bilinearly sampled from each level with `grid_sample`, weighted and summed. No CUDA extension: the
same code runs on CPU and GPU and traces to TorchScript.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def deformable_sample(
    value: torch.Tensor, shapes: Sequence[tuple[int, int]], locations: torch.Tensor, weights: torch.Tensor
) -> torch.Tensor:
    """The attention core.

    value [N, S, H, D] (S = sum of h*w over levels), locations [N, Lq, H, L, P, 2] in [0, 1] (x, y),
    weights [N, Lq, H, L, P] -> [N, Lq, H*D].
    """
    n, _, heads, dim = value.shape
    _, lq, _, levels, points, _ = locations.shape
    per_level = value.split([h * w for h, w in shapes], dim=1)
    grids = 2 * locations - 1  # grid_sample's [-1, 1] coordinates (align_corners=False: pixel edges)
    sampled = []
    for level, (h, w) in enumerate(shapes):
        v = per_level[level].flatten(2).transpose(1, 2).reshape(n * heads, dim, h, w)
        g = grids[:, :, :, level].transpose(1, 2).flatten(0, 1)  # [N*H, Lq, P, 2]
        sampled.append(F.grid_sample(v, g, mode="bilinear", padding_mode="zeros", align_corners=False))
    stacked = torch.stack(sampled, dim=-2).flatten(-2)  # [N*H, D, Lq, L*P]
    attention = weights.transpose(1, 2).reshape(n * heads, 1, lq, levels * points)
    return (stacked * attention).sum(-1).view(n, heads * dim, lq).transpose(1, 2)


class MSDeformAttn(nn.Module):
    """Deformable attention over `n_levels` feature maps with `n_heads` heads and `n_points` samples each."""

    def __init__(self, d_model: int = 256, n_levels: int = 4, n_heads: int = 8, n_points: int = 4) -> None:
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model {d_model} must be divisible by n_heads {n_heads}")
        self.d_model, self.n_levels, self.n_heads, self.n_points = d_model, n_levels, n_heads, n_points
        self.sampling_offsets = nn.Linear(d_model, n_heads * n_levels * n_points * 2)
        self.attention_weights = nn.Linear(d_model, n_heads * n_levels * n_points)
        self.value_proj = nn.Linear(d_model, d_model)
        self.output_proj = nn.Linear(d_model, d_model)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # Offsets start as a ring of points, one direction per head, 1..P pixels out: attention begins local
        # and spread out, so the sampled locations differ from the first step.
        nn.init.zeros_(self.sampling_offsets.weight)
        angles = torch.arange(self.n_heads, dtype=torch.float32) * (2.0 * math.pi / self.n_heads)
        grid = torch.stack([angles.cos(), angles.sin()], -1)
        grid = grid / grid.abs().max(-1, keepdim=True)[0]
        grid = grid.view(self.n_heads, 1, 1, 2).repeat(1, self.n_levels, self.n_points, 1)
        grid = grid * torch.arange(1, self.n_points + 1, dtype=torch.float32).view(1, 1, -1, 1)
        with torch.no_grad():
            self.sampling_offsets.bias.copy_(grid.flatten())
        nn.init.zeros_(self.attention_weights.weight)
        nn.init.zeros_(self.attention_weights.bias)
        nn.init.xavier_uniform_(self.value_proj.weight)
        nn.init.zeros_(self.value_proj.bias)
        nn.init.xavier_uniform_(self.output_proj.weight)
        nn.init.zeros_(self.output_proj.bias)

    def forward(
        self, query: torch.Tensor, reference: torch.Tensor, memory: torch.Tensor, shapes: Sequence[tuple[int, int]]
    ) -> torch.Tensor:
        """query [N, Lq, C], reference [N, Lq, L, 2] in [0, 1], memory [N, S, C] -> [N, Lq, C]."""
        n, lq, _ = query.shape
        heads, levels, points = self.n_heads, self.n_levels, self.n_points
        value = self.value_proj(memory).view(n, memory.shape[1], heads, self.d_model // heads)
        offsets = self.sampling_offsets(query).view(n, lq, heads, levels, points, 2)
        weights = self.attention_weights(query).view(n, lq, heads, levels * points).softmax(-1)
        weights = weights.view(n, lq, heads, levels, points)
        # offsets are in pixels of each level: divide by (w, h) to stay in normalised coordinates
        normaliser = torch.tensor([[w, h] for h, w in shapes], dtype=query.dtype, device=query.device)
        locations = reference[:, :, None, :, None, :] + offsets / normaliser[None, None, None, :, None, :]
        return self.output_proj(deformable_sample(value, shapes, locations, weights))
