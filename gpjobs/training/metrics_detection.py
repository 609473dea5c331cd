"""Average precision for object detection and instance segmentation.

Two families of numbers are reported side by side, clearly named, because they answer different questions:

- **Esri-style AP** (`average_precision_score`): what arcgis.learn reports — per class, all-point interpolated
  (VOC2010 precision envelope), a prediction counts when its IoU with an unmatched ground-truth box of the same
  class is >= `iou_thresh` (0.1 by default, a very lenient overlap), predictions scoring below
  `detect_thresh` are dropped first.
- **COCO-style mAP**: `map_50` (IoU 0.5) and `map_50_95` (mean over IoU 0.50:0.05:0.95), 101-point interpolated
  as pycocotools does, over every prediction the model keeps.

Matching is greedy in descending score order, per image and class; each ground truth matches at most once
(the unmatched ground truth with the highest IoU wins). Pure numpy: usable on any device's outputs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

ESRI_IOU_THRESH = 0.1
COCO_IOU_THRESHOLDS: tuple[float, ...] = tuple(round(0.5 + 0.05 * i, 2) for i in range(10))


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU matrix [len(a), len(b)] of xyxy boxes."""
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    area_a = np.clip(a[:, 2] - a[:, 0], 0, None) * np.clip(a[:, 3] - a[:, 1], 0, None)
    area_b = np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    wh = np.clip(rb - lt, 0, None)
    inter = wh[..., 0] * wh[..., 1]
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def mask_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU matrix of binary masks a [P, H, W] and b [G, H, W] (values > 0.5 are inside)."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.size == 0 or b.size == 0:
        return np.zeros((len(a), len(b)))
    a = (a.reshape(len(a), -1) > 0.5).astype(np.float64)
    b = (b.reshape(len(b), -1) > 0.5).astype(np.float64)
    inter = a @ b.T
    union = a.sum(1)[:, None] + b.sum(1)[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def ap_all_points(precision: np.ndarray, recall: np.ndarray) -> float:
    """VOC2010 all-point interpolated AP: area under the precision envelope (what arcgis.learn computes)."""
    if len(precision) == 0:
        return 0.0
    mrec = np.concatenate(([0.0], recall, [1.0]))
    mpre = np.concatenate(([0.0], precision, [0.0]))
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    steps = np.where(mrec[1:] != mrec[:-1])[0]
    return float(np.sum((mrec[steps + 1] - mrec[steps]) * mpre[steps + 1]))


def ap_101_points(precision: np.ndarray, recall: np.ndarray) -> float:
    """COCO 101-point interpolated AP (pycocotools' accumulate)."""
    if len(precision) == 0:
        return 0.0
    envelope = np.maximum.accumulate(np.asarray(precision)[::-1])[::-1]
    points = np.linspace(0.0, 1.0, 101)
    idx = np.searchsorted(recall, points, side="left")
    values = np.where(idx < len(envelope), envelope[np.minimum(idx, len(envelope) - 1)], 0.0)
    return float(values.mean())


def _greedy_match(iou: np.ndarray, thresh: float) -> np.ndarray:
    """TP flag per prediction (rows already in descending score order)."""
    tp = np.zeros(iou.shape[0], dtype=bool)
    if iou.shape[1] == 0:
        return tp
    taken = np.zeros(iou.shape[1], dtype=bool)
    # a prediction whose IoUs (NaN aside) are all below the threshold matches nothing: skip it
    for p in np.flatnonzero(np.fmax.reduce(iou, axis=1) >= thresh):
        candidates = np.where(taken, -1.0, iou[p])
        g = int(np.argmax(candidates))
        if candidates[g] >= thresh:
            taken[g] = True
            tp[p] = True
            if taken.all():  # every truth is matched: the rest are false positives
                break
    return tp


@dataclass
class _ClassRecord:
    scores: list[np.ndarray] = field(default_factory=list)
    tps: list[np.ndarray] = field(default_factory=list)  # each [T, P] bool
    n_gt: int = 0


class DetectionEvaluator:
    """Accumulates predictions and ground truth image by image, then computes every AP number at once.

    Labels are model indices 1..num_classes (0 is background and never appears). With `use_masks`, the
    IoU is computed on instance masks (mask AP) instead of boxes.
    """

    def __init__(
        self,
        num_classes: int,
        *,
        iou_thresh: float = ESRI_IOU_THRESH,
        detect_thresh: float = 0.2,
        use_masks: bool = False,
    ) -> None:
        self.num_classes = num_classes
        self.iou_thresh = float(iou_thresh)
        self.detect_thresh = float(detect_thresh)
        self.use_masks = use_masks
        self.thresholds = (self.iou_thresh,) + COCO_IOU_THRESHOLDS
        self._records = [_ClassRecord() for _ in range(num_classes + 1)]
        self.images = 0

    def add(self, pred: dict[str, Any], target: dict[str, Any]) -> None:
        """One image: pred {boxes [P,4], scores [P], labels [P], (masks [P,H,W])}, target {boxes, labels, (masks)}."""
        self.images += 1
        p_labels = _np(pred.get("labels"), np.int64).reshape(-1)
        p_scores = _np(pred.get("scores"), np.float64).reshape(-1)
        g_labels = _np(target.get("labels"), np.int64).reshape(-1)
        key = "masks" if self.use_masks else "boxes"
        p_geo = _np(pred.get(key), np.float64)
        g_geo = _np(target.get(key), np.float64)
        for cls in range(1, self.num_classes + 1):
            record = self._records[cls]
            g_idx = np.where(g_labels == cls)[0]
            p_idx = np.where(p_labels == cls)[0]
            record.n_gt += len(g_idx)
            if len(p_idx) == 0:
                continue
            p_idx = p_idx[np.argsort(-p_scores[p_idx], kind="stable")]
            if self.use_masks:
                iou = mask_iou(p_geo[p_idx], g_geo[g_idx]) if len(g_idx) else np.zeros((len(p_idx), 0))
            else:
                iou = box_iou(p_geo[p_idx], g_geo[g_idx])
            record.scores.append(p_scores[p_idx])
            record.tps.append(np.stack([_greedy_match(iou, t) for t in self.thresholds]))

    def compute(self, class_names: Sequence[str] | None = None) -> dict[str, Any]:
        """Esri AP per class and its mean, plus COCO mAP@0.5 and mAP@[.5:.95] (means over classes with ground truth).

        Keys: `average_precision` (mean Esri AP), `average_precision_score` ({name: AP}, every class, 0.0 where
        the validation set has none of it, as arcgis writes it), `map_50`, `map_50_95`, `ap_iou_thresh`,
        `ap_detect_thresh`, `classes_evaluated`.
        """
        names = list(class_names) if class_names is not None else [str(i) for i in range(1, self.num_classes + 1)]
        esri: dict[str, float] = {}
        esri_present: list[float] = []
        coco50: list[float] = []
        coco: list[float] = []
        for cls in range(1, self.num_classes + 1):
            record = self._records[cls]
            name = names[cls - 1]
            if record.n_gt == 0:
                esri[name] = 0.0
                continue
            scores = np.concatenate(record.scores) if record.scores else np.zeros(0)
            tps = np.concatenate(record.tps, axis=1) if record.tps else np.zeros((len(self.thresholds), 0), bool)
            order = np.argsort(-scores, kind="stable")
            scores, tps = scores[order], tps[:, order]
            keep = scores >= self.detect_thresh
            ap = _ap(tps[0][keep], record.n_gt, ap_all_points)
            esri[name] = ap
            esri_present.append(ap)
            per_t = [_ap(tps[i], record.n_gt, ap_101_points) for i in range(1, len(self.thresholds))]
            coco50.append(per_t[0])
            coco.append(float(np.mean(per_t)))
        return {
            "average_precision": float(np.mean(esri_present)) if esri_present else 0.0,
            "average_precision_score": esri,
            "map_50": float(np.mean(coco50)) if coco50 else 0.0,
            "map_50_95": float(np.mean(coco)) if coco else 0.0,
            "ap_iou_thresh": self.iou_thresh,
            "ap_detect_thresh": self.detect_thresh,
            "classes_evaluated": len(esri_present),
        }


def _ap(tp: np.ndarray, n_gt: int, rule) -> float:
    if n_gt == 0 or len(tp) == 0:
        return 0.0
    tp_cum = np.cumsum(tp)
    fp_cum = np.cumsum(~tp)
    precision = tp_cum / np.maximum(tp_cum + fp_cum, 1e-12)
    recall = tp_cum / n_gt
    return rule(precision, recall)


def _np(value: Any, dtype) -> np.ndarray:
    if value is None:
        return np.zeros(0, dtype=dtype)
    if hasattr(value, "detach"):  # a torch tensor, without importing torch here
        value = value.detach().cpu()
        if value.is_floating_point():  # bfloat16 (autocast on a GPU) has no numpy dtype
            value = value.float()
        value = value.numpy()
    return np.asarray(value, dtype=dtype)
