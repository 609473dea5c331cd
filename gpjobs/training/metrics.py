"""Metrics of the pixel- and image-classification families, computed from confusion matrices.

The confusion matrix is accumulated on the device batch by batch (one bincount per batch, no host sync)
and turned into numbers once per validation pass.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch


class Confusion:
    """Rows = truth, columns = prediction, over `n` model indices."""

    def __init__(self, n: int, device: torch.device | str = "cpu") -> None:
        self.n = n
        self.matrix = torch.zeros(n * n, dtype=torch.int64, device=device)

    def update(self, truth: torch.Tensor, pred: torch.Tensor, keep: torch.Tensor | None = None) -> None:
        truth, pred = truth.reshape(-1), pred.reshape(-1)
        if keep is not None:
            keep = keep.reshape(-1)
            truth, pred = truth[keep], pred[keep]
        if self.matrix.device != truth.device:
            self.matrix = self.matrix.to(truth.device)
        self.matrix += torch.bincount(truth * self.n + pred, minlength=self.n * self.n)

    def result(self) -> torch.Tensor:
        return self.matrix.view(self.n, self.n).cpu()


def per_class_scores(matrix: torch.Tensor, names: Sequence[str]) -> dict[str, dict[str, float]]:
    """precision / recall / f1 / iou per class (0 where undefined, as arcgis.learn reports)."""
    m = matrix.double()
    tp = m.diag()
    predicted, actual = m.sum(0), m.sum(1)
    precision = torch.where(predicted > 0, tp / predicted.clamp_min(1), torch.zeros_like(tp))
    recall = torch.where(actual > 0, tp / actual.clamp_min(1), torch.zeros_like(tp))
    denom = precision + recall
    f1 = torch.where(denom > 0, 2 * precision * recall / denom.clamp_min(1e-12), torch.zeros_like(tp))
    union = predicted + actual - tp
    iou = torch.where(union > 0, tp / union.clamp_min(1), torch.zeros_like(tp))
    return {
        name: {
            "precision": round(float(precision[i]), 10),
            "recall": round(float(recall[i]), 10),
            "f1": round(float(f1[i]), 10),
            "iou": round(float(iou[i]), 10),
        }
        for i, name in enumerate(names)
    }


def segmentation_metrics(matrix: torch.Tensor, names: Sequence[str]) -> dict[str, Any]:
    """accuracy (pixel), miou (mean IoU over classes that occur in truth or prediction), per-class scores."""
    m = matrix.double()
    total = m.sum()
    accuracy = float(m.diag().sum() / total) if total > 0 else 0.0
    per_class = per_class_scores(matrix, names)
    occurs = (m.sum(0) + m.sum(1)) > 0
    ious = [per_class[name]["iou"] for i, name in enumerate(names) if occurs[i]]
    miou = sum(ious) / len(ious) if ious else 0.0
    return {"accuracy": accuracy, "miou": miou, "per_class_metrics": per_class}


def classification_metrics(matrix: torch.Tensor, names: Sequence[str]) -> dict[str, Any]:
    """accuracy, per-class precision/recall/f1 and the confusion matrix (nested lists)."""
    m = matrix.double()
    total = m.sum()
    return {
        "accuracy": float(m.diag().sum() / total) if total > 0 else 0.0,
        "per_class_metrics": per_class_scores(matrix, names),
        "confusion_matrix": matrix.tolist(),
    }


def multilabel_metrics(
    tp: torch.Tensor,
    fp: torch.Tensor,
    fn: torch.Tensor,
    correct: int,
    total: int,
    names: Sequence[str],
    beta: float = 2.0,
) -> dict[str, Any]:
    """accuracy (label-wise, threshold 0.5 as fastai accuracy_multi), micro F-beta (fastai default beta 2)."""
    tp_s, fp_s, fn_s = float(tp.sum()), float(fp.sum()), float(fn.sum())
    precision = tp_s / (tp_s + fp_s) if tp_s + fp_s else 0.0
    recall = tp_s / (tp_s + fn_s) if tp_s + fn_s else 0.0
    b2 = beta * beta
    fbeta = (1 + b2) * precision * recall / (b2 * precision + recall) if precision + recall else 0.0
    per_class = {}
    for i, name in enumerate(names):
        p = float(tp[i] / (tp[i] + fp[i])) if tp[i] + fp[i] else 0.0
        r = float(tp[i] / (tp[i] + fn[i])) if tp[i] + fn[i] else 0.0
        per_class[name] = {"precision": p, "recall": r, "f1": 2 * p * r / (p + r) if p + r else 0.0}
    return {"accuracy": correct / total if total else 0.0, "fbeta": fbeta, "per_class_metrics": per_class}


def scalar_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    """The metrics that are plain numbers (what goes into epoch events and the loss history)."""
    return {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
