"""Anchor boxes: SSD grids/zooms/ratios (arcgis.learn semantics) and k-means anchors from the training boxes.

Pure numpy so the shapes can be pinned by tests without a model. Coordinates are normalised to the chip
(0..1) for SSD and in pixels for YOLOv3 anchors.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np


def ssd_anchors(grids: Sequence[int], zooms: Sequence[float], ratios: Sequence[Sequence[float]]) -> np.ndarray:
    """SSD anchors [N, 4] as (cx, cy, w, h) in chip fractions, ordered grid, row (y), column (x), anchor.

    As arcgis.learn builds them: every cell of every `g x g` grid carries one anchor per (zoom, ratio) pair,
    centred on the cell, of size (zoom * ratio_w / g, zoom * ratio_h / g). The head emits its outputs in the
    same order, so anchor i always belongs to output i.
    """
    shapes = [(z * float(r[0]), z * float(r[1])) for z in zooms for r in ratios]
    out = []
    for g in grids:
        centres = (np.arange(g, dtype=np.float64) + 0.5) / g
        cy, cx = np.meshgrid(centres, centres, indexing="ij")
        cells = np.stack([cx.ravel(), cy.ravel()], axis=1)  # row-major: y outer, x inner
        for cell in cells:
            for w, h in shapes:
                out.append((cell[0], cell[1], w / g, h / g))
    return np.asarray(out, dtype=np.float32).reshape(-1, 4)


def wh_iou(wh: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """IoU of boxes and centroids given only (w, h), both centred at the origin: [N, K]."""
    wh = np.asarray(wh, dtype=np.float64).reshape(-1, 2)
    centroids = np.asarray(centroids, dtype=np.float64).reshape(-1, 2)
    inter = np.minimum(wh[:, None, 0], centroids[None, :, 0]) * np.minimum(wh[:, None, 1], centroids[None, :, 1])
    union = (wh[:, 0] * wh[:, 1])[:, None] + (centroids[:, 0] * centroids[:, 1])[None, :] - inter
    return inter / np.maximum(union, 1e-12)


def kmeans_wh(wh: np.ndarray, k: int, *, seed: int = 0, iterations: int = 100) -> tuple[np.ndarray, float]:
    """k-means on box (w, h) with 1 - IoU as distance (the YOLO recipe). Returns (centroids [k, 2] sorted by
    area, mean best IoU of the boxes with their centroid). With fewer distinct boxes than k, centroids repeat."""
    wh = np.asarray(wh, dtype=np.float64).reshape(-1, 2)
    wh = wh[(wh[:, 0] > 0) & (wh[:, 1] > 0)]
    if len(wh) == 0:
        raise ValueError("no boxes to cluster")
    rng = np.random.default_rng(seed)
    unique = np.unique(wh, axis=0)
    if len(unique) >= k:
        centroids = unique[rng.choice(len(unique), size=k, replace=False)]
    else:  # too few distinct boxes: pad by scaling the ones there are, so every centroid is used
        centroids = np.concatenate([unique * (1.0 + 0.25 * i) for i in range(int(np.ceil(k / len(unique))))])[:k]
    for _ in range(iterations):
        assign = np.argmax(wh_iou(wh, centroids), axis=1)
        updated = centroids.copy()
        for j in range(k):
            members = wh[assign == j]
            if len(members):
                updated[j] = np.median(members, axis=0)
        if np.allclose(updated, centroids):
            break
        centroids = updated
    centroids = centroids[np.argsort(centroids[:, 0] * centroids[:, 1])]
    fit = float(np.mean(np.max(wh_iou(wh, centroids), axis=1)))
    return centroids, fit


def auto_ssd_grids(
    box_wh: np.ndarray, chip_size: int, *, max_k: int = 4, min_gain: float = 0.05, seed: int = 0
) -> list[int]:
    """SSD grid sizes chosen from the training boxes (arcgis.learn ssd_version 2 with grids=None).

    k-means on the box sizes for k = 1, 2, ... while the mean IoU of boxes with their centroid still improves
    by >= `min_gain`; each centroid becomes a grid of round(chip / centroid size) cells, so that one cell
    roughly matches one typical box. Without boxes: a single 4x4 grid.
    """
    wh = np.asarray(box_wh, dtype=np.float64).reshape(-1, 2)
    wh = wh[(wh[:, 0] > 0) & (wh[:, 1] > 0)]
    if len(wh) == 0:
        return [4]
    best, best_fit = kmeans_wh(wh, 1, seed=seed)
    for k in range(2, max_k + 1):
        if len(np.unique(wh, axis=0)) < k:
            break
        centroids, fit = kmeans_wh(wh, k, seed=seed)
        if fit - best_fit < min_gain:
            break
        best, best_fit = centroids, fit
    grids = {int(np.clip(round(chip_size / float(np.sqrt(w * h))), 1, max(1, chip_size // 2))) for w, h in best}
    return sorted(grids)


def yolo_anchors(box_wh: np.ndarray, *, k: int = 9, seed: int = 0, fallback_chip: int = 416) -> list[list[float]]:
    """Nine YOLOv3 anchors [w, h] in pixels from k-means over the training boxes, smallest first.

    Without boxes, the COCO anchors scaled from 416 px to the chip size (so small chips get small anchors).
    """
    wh = np.asarray(box_wh, dtype=np.float64).reshape(-1, 2)
    wh = wh[(wh[:, 0] > 0) & (wh[:, 1] > 0)]
    if len(wh) == 0:
        scale = fallback_chip / 416.0
        return [[w * scale, h * scale] for w, h in COCO_YOLO_ANCHORS]
    centroids, _ = kmeans_wh(wh, k, seed=seed)
    return [[float(w), float(h)] for w, h in centroids]


COCO_YOLO_ANCHORS: tuple[tuple[int, int], ...] = (
    (10, 13),
    (16, 30),
    (33, 23),
    (30, 61),
    (62, 45),
    (59, 119),
    (116, 90),
    (156, 198),
    (373, 326),
)


def boxes_wh(targets: Iterable[dict]) -> np.ndarray:
    """All (w, h) of the xyxy boxes in an iterable of target dicts (torch tensors or arrays)."""
    sizes = []
    for target in targets:
        boxes = target["boxes"]
        if hasattr(boxes, "detach"):
            boxes = boxes.detach().cpu().numpy()
        boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        if len(boxes):
            sizes.append(np.stack([boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]], axis=1))
    return np.concatenate(sizes) if sizes else np.zeros((0, 2))
