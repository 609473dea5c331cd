"""Pieces shared by the binary pixel families (edges, change): counts, scores, balanced BCE, label maps."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F


class BinaryCounts:
    """tp / fp / fn / tn of a binary pixel prediction, accumulated on the device (one sync per pass)."""

    def __init__(self) -> None:
        self.counts: torch.Tensor | None = None

    def update(self, truth: torch.Tensor, pred: torch.Tensor) -> None:
        truth, pred = truth.bool().reshape(-1), pred.bool().reshape(-1)
        batch = torch.stack(
            [(truth & pred).sum(), (~truth & pred).sum(), (truth & ~pred).sum(), (~truth & ~pred).sum()]
        )
        self.counts = batch if self.counts is None else self.counts + batch

    def scores(self) -> dict[str, float]:
        """accuracy, precision, recall, f1 of the positive class (0 where undefined)."""
        tp, fp, fn, tn = (float(v) for v in (self.counts.tolist() if self.counts is not None else [0, 0, 0, 0]))
        total = tp + fp + fn + tn
        precision = tp / (tp + fp) if tp + fp else 0.0
        recall = tp / (tp + fn) if tp + fn else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        return {"accuracy": (tp + tn) / total if total else 0.0, "precision": precision, "recall": recall, "f1": f1}


def balanced_bce(logits: torch.Tensor, target: torch.Tensor, neg_factor: float = 1.0) -> torch.Tensor:
    """HED/RCF class-balanced BCE: positives weighted by the negative share of the batch and vice versa.

    Weights are computed over the whole batch (as the HED/RCF/BDCN reference code does), so a chip without
    edges still teaches "no edge" when its batch has edges. Mean over pixels (not the reference's sum),
    which keeps the loss scale independent of the chip size.
    """
    target = target.float()
    pos = target.sum()
    total = float(target.numel())
    neg = total - pos
    weight = torch.where(target > 0.5, neg / total, neg_factor * pos / total)
    return F.binary_cross_entropy_with_logits(logits.float(), target, weight=weight, reduction="mean")


def morph_range(index: torch.Tensor, k: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    """(max, min) of an integer label map (B, H, W) over k x k neighbourhoods; the image border is not padded
    with a value (max_pool pads with -inf), so chip edges never count as class boundaries."""
    m = index.float()[:, None]
    hi = F.max_pool2d(m, k, 1, k // 2)
    lo = -F.max_pool2d(-m, k, 1, k // 2)
    return hi[:, 0], lo[:, 0]


def save_panels(rows: Sequence[Sequence[tuple[str, Any]]], path: Path) -> None:
    """A grid of titled pictures (H, W, 3 floats 0..1), one row per chip: show_results.png."""
    from gpjobs.training.model_card import _plt

    plt = _plt()
    n, cols = len(rows), max(len(r) for r in rows)
    fig, axes = plt.subplots(n, cols, figsize=(2.5 * cols, 2.5 * n), squeeze=False)
    for i, row in enumerate(rows):
        for j in range(cols):
            ax = axes[i][j]
            ax.axis("off")
            if j < len(row):
                title, picture = row[j]
                ax.imshow(picture, interpolation="nearest")
                ax.set_title(title, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def binary_picture(mask: torch.Tensor) -> Any:
    """A boolean (H, W) map as a white-on-black picture."""
    import numpy as np

    arr = mask.detach().float().cpu().numpy()
    return np.repeat(arr[:, :, None], 3, 2)
