"""Pixel operations shared by samples, batches and `gpjobs predict`: dihedral augmentation, Esri
normalisation and resizing, in torch (CPU or accelerator), on batches of raw chips.

One code path for every consumer, so a chip gives the same bits whether it came through a loader
worker, `dataset[i]` or `to_model_input`. Geometry is an integer 0..7 (bit 0: flip left-right, bit 1:
flip up-down, bit 2: transpose, after the flips); together they are the 8 flips/90-degree rotations.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

FLIP_W, FLIP_H, TRANSPOSE = 1, 2, 4


def dihedral(t: torch.Tensor, code: int, h_axis: int) -> torch.Tensor:
    """`t` with geometry `code` applied to its (h_axis, h_axis + 1) plane (flips copy, transpose is a view)."""
    dims = [d for bit, d in ((FLIP_W, h_axis + 1), (FLIP_H, h_axis)) if code & bit]
    if dims:
        t = t.flip(dims)
    return t.transpose(h_axis, h_axis + 1) if code & TRANSPOSE else t


def dihedral_boxes(boxes: torch.Tensor, code: int, h: int, w: int) -> torch.Tensor:
    """xyxy boxes moved like the pixels of an (h, w) chip under `code` (h, w: sizes before the transpose)."""
    if not boxes.numel() or not code:
        return boxes
    x0, y0, x1, y1 = boxes.unbind(1)
    if code & FLIP_W:
        x0, x1 = w - x1, w - x0
    if code & FLIP_H:
        y0, y1 = h - y1, h - y0
    if code & TRANSPOSE:
        x0, y0, x1, y1 = y0, x0, y1, x1
    return torch.stack([x0, y0, x1, y1], 1)


def finish_images(
    raw: torch.Tensor,
    codes: Sequence[int] | None,
    scale: torch.Tensor,
    offset: torch.Tensor,
    size: tuple[int, int],
    *,
    pin_memory: bool = False,
) -> torch.Tensor:
    """Raw chips (B, H, W, C), any dtype -> normalised float32 (B, C, H', W') = x * scale + offset, resized.

    `scale`/`offset` are float32 (C, 1, 1) on raw's device. On the CPU each chip is converted and
    normalised while it is in cache (three passes over 1/B of the batch beat three over all of it);
    multiply then add, the same two roundings on every device.
    """
    b, h, w, c = raw.shape
    if b > 1 and h != w and codes and any(k & TRANSPOSE for k in codes):
        # Transposed non-square chips differ in shape from their batch-mates until resized.
        return torch.cat([finish_images(raw[i : i + 1], codes[i : i + 1], scale, offset, size) for i in range(b)])
    if codes and codes[0] & TRANSPOSE:
        h, w = w, h
    out = torch.empty(
        (b, c, h, w), dtype=torch.float32, device=raw.device, pin_memory=pin_memory and raw.device.type == "cpu"
    )
    per_chip = raw.device.type == "cpu"
    for i in range(b):
        chip = raw[i] if not codes else dihedral(raw[i], int(codes[i]), 0)
        o = out[i]
        o.copy_(chip.permute(2, 0, 1))
        if per_chip:
            o.mul_(scale).add_(offset)
    if not per_chip:
        out.mul_(scale[None]).add_(offset[None])
    return resize_images(out, size)


def dihedral_np(a: np.ndarray, code: int, h_axis: int) -> np.ndarray:
    """numpy twin of `dihedral`, as a view (no copy)."""
    index = [slice(None)] * a.ndim
    if code & FLIP_W:
        index[h_axis + 1] = slice(None, None, -1)
    if code & FLIP_H:
        index[h_axis] = slice(None, None, -1)
    a = a[tuple(index)]
    return np.swapaxes(a, h_axis, h_axis + 1) if code & TRANSPOSE else a


def finish_masks(
    raw: torch.Tensor,
    codes: Sequence[int] | None,
    lut: torch.Tensor,
    size: tuple[int, int],
    *,
    identity_upto: int = -1,
) -> torch.Tensor:
    """Label rasters (B, H, W) of class values -> int64 model indices (B, H', W'), with the same geometry
    as their chips. `lut` (int64, on raw's device) maps every value raw's dtype can hold;
    `identity_upto`: lut[v] == v for every v up to it (-1: not known).

    On the CPU one pass per chip does the class mapping, the flips and the widening: np.take, or a plain
    widening copy when the batch holds no value above `identity_upto` (Esri's classes 1..K: 2-3x cheaper).
    """
    b, h, w = raw.shape
    codes = list(codes) if codes else [0] * b
    if b > 1 and h != w and any(k & TRANSPOSE for k in codes):
        return torch.cat(
            [finish_masks(raw[i : i + 1], codes[i : i + 1], lut, size, identity_upto=identity_upto) for i in range(b)]
        )
    if codes[0] & TRANSPOSE:
        h, w = w, h
    out = torch.empty((b, h, w), dtype=torch.int64, device=raw.device)
    if raw.device.type == "cpu":
        values, table, target = raw.numpy(), lut.numpy(), out.numpy()
        identity = identity_upto >= 0 and values.size > 0 and int(values.max()) <= identity_upto
        for i in range(b):
            chip = dihedral_np(values[i], int(codes[i]), 0)
            if identity:
                np.copyto(target[i], chip, casting="safe")
            else:
                np.take(table, chip, out=target[i], mode="clip")
    else:
        indices = lut[raw.to(torch.int64)]
        for i in range(b):
            out[i].copy_(dihedral(indices[i], int(codes[i]), 0))
    return resize_masks(out, size)


def resize_images(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of (C, H, W) or (B, C, H, W) float images; unchanged when already `size`."""
    if tuple(image.shape[-2:]) == tuple(size):
        return image
    batch = image if image.ndim == 4 else image[None]
    out = F.interpolate(batch, size=tuple(size), mode="bilinear", align_corners=False)
    return out if image.ndim == 4 else out[0]


def resize_masks(mask: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Nearest resize of (H, W) or (N, H, W) integer masks, keeping their dtype."""
    if tuple(mask.shape[-2:]) == tuple(size):
        return mask
    squeeze = mask.ndim == 2
    batch = mask[None, None] if squeeze else mask[None]
    out = F.interpolate(batch.float(), size=tuple(size), mode="nearest")[0]
    return (out[0] if squeeze else out).to(mask.dtype)
