"""Losses shared by the pixel- and image-classification families (models.md §2.8).

Every loss returns one value per sample so that mixup can weight the two partners of a mixed chip.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


class SegmentationLoss:
    """Cross-entropy per pixel with class weights (class_balancing, ignore_classes = weight 0),
    optionally per-pixel focal (gamma 2) and a dice share (dice_loss_fraction)."""

    def __init__(
        self,
        num_outputs: int,
        *,
        class_weights: torch.Tensor | None = None,
        ignore_indices: list[int] | None = None,
        focal: bool = False,
        gamma: float = 2.0,
        dice_fraction: float = 0.0,
        dice_average: str = "micro",
        weighted_dice: bool = False,
    ) -> None:
        weights = torch.ones(num_outputs) if class_weights is None else class_weights.clone().float()
        for index in ignore_indices or []:
            weights[index] = 0.0
        self.weights = weights
        self.uses_weights = class_weights is not None or bool(ignore_indices)
        self.ignore_indices = list(ignore_indices or [])
        self.focal = focal
        self.gamma = gamma
        self.dice_fraction = float(dice_fraction)
        self.dice_average = dice_average
        self.weighted_dice = weighted_dice
        self.num_outputs = num_outputs

    def per_sample(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """(B,) loss of each chip: weighted mean over its pixels."""
        if logits.shape[-2:] != target.shape[-2:]:
            logits = F.interpolate(logits, size=target.shape[-2:], mode="bilinear", align_corners=False)
        logits = logits.float()
        weights = self.weights.to(logits.device)
        ce = F.cross_entropy(logits, target, reduction="none")  # (B, H, W), unweighted
        if self.focal:
            # Per-pixel focal loss (models.md §1C: arcgis applies it to the batch mean; we do it per pixel).
            ce = (1.0 - torch.exp(-ce)).pow(self.gamma) * ce
        pixel_w = weights[target] if self.uses_weights else None
        if pixel_w is not None:
            loss = (ce * pixel_w).flatten(1).sum(1) / pixel_w.flatten(1).sum(1).clamp_min(1e-6)
        else:
            loss = ce.flatten(1).mean(1)
        if self.dice_fraction > 0:
            loss = (1 - self.dice_fraction) * loss + self.dice_fraction * self._dice_loss(logits, target, weights)
        return loss

    def __call__(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.per_sample(logits, target).mean()

    def _dice_loss(self, logits: torch.Tensor, target: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        probs = logits.softmax(1)
        onehot = F.one_hot(target, self.num_outputs).permute(0, 3, 1, 2).float()
        keep = torch.ones(self.num_outputs, device=logits.device)
        keep[self.ignore_indices] = 0.0
        inter = (probs * onehot).sum((2, 3))  # (B, K)
        total = probs.sum((2, 3)) + onehot.sum((2, 3))
        if self.dice_average == "macro":
            dice = (2 * inter + 1.0) / (total + 1.0)
            w = keep * (weights if self.weighted_dice else 1.0)
            return 1.0 - (dice * w).sum(1) / w.sum().clamp_min(1e-6)
        w = keep * (weights if self.weighted_dice else 1.0)
        return 1.0 - (2 * (inter * w).sum(1) + 1.0) / ((total * w).sum(1) + 1.0)


def mixup(
    images: torch.Tensor, alpha: float = 0.4, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """fastai's MixUpCallback: lambda ~ Beta(alpha, alpha) per chip, lambda = max(lambda, 1 - lambda).

    Returns (mixed images, lambda (B,), partner permutation).
    """
    batch = images.shape[0]
    beta = torch.distributions.Beta(torch.tensor(alpha), torch.tensor(alpha))
    lam = beta.sample((batch,)).to(images.device)
    lam = torch.maximum(lam, 1 - lam)
    perm = torch.randperm(batch, device=images.device)
    shape = (batch,) + (1,) * (images.ndim - 1)
    mixed = images * lam.view(shape) + images[perm] * (1 - lam.view(shape))
    return mixed, lam, perm
