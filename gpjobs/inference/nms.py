"""Non-maximum suppression over finished features (Detect Objects' runNMS): of two objects of one class whose
envelopes overlap by more than `max_overlap_ratio` (intersection over union), the one with the lower confidence
goes. Tiles overlap by their padding, so an object near a tile edge can be found twice; this removes the copy.
"""

from __future__ import annotations

from typing import Any

import numpy as np

CLASS_FIELDS = ("classvalue", "value")  # Esri's defaults when no class field is named


def envelope(geometry: dict[str, Any]) -> tuple[float, float, float, float]:
    """(xmin, ymin, xmax, ymax) of a GeoJSON Polygon / MultiPolygon."""
    rings = (
        geometry["coordinates"] if geometry["type"] == "Polygon" else [r for p in geometry["coordinates"] for r in p]
    )
    points = np.asarray([pt for ring in rings for pt in ring], dtype=np.float64)
    return float(points[:, 0].min()), float(points[:, 1].min()), float(points[:, 0].max()), float(points[:, 1].max())


def _field(properties: dict[str, Any], name: str | None) -> str | None:
    """The property named `name` (any case), or the first of Esri's default class fields."""
    lowered = {k.lower(): k for k in properties}
    if name is not None:
        return lowered.get(name.lower())
    return next((lowered[c] for c in CLASS_FIELDS if c in lowered), None)


def suppress(
    features: list[dict[str, Any]], *, confidence_field: str, class_field: str | None, max_overlap_ratio: float
) -> list[dict[str, Any]]:
    """The features that survive, in their original order. Features without a geometry are kept; a missing
    confidence counts as 0; no class field means one class."""
    boxes, scores, classes, index = [], [], [], []
    for i, feature in enumerate(features):
        geometry = feature.get("geometry")
        if not geometry:
            continue
        props = feature.get("properties") or {}
        score_key, class_key = _field(props, confidence_field), _field(props, class_field)
        boxes.append(envelope(geometry))
        scores.append(float(props.get(score_key) or 0.0) if score_key else 0.0)
        classes.append(str(props.get(class_key)) if class_key else "")
        index.append(i)
    if not boxes:
        return list(features)
    b = np.asarray(boxes)
    order = np.argsort(-np.asarray(scores), kind="stable")
    area = np.maximum(b[:, 2] - b[:, 0], 0) * np.maximum(b[:, 3] - b[:, 1], 0)
    removed = np.zeros(len(boxes), dtype=bool)
    for rank, i in enumerate(order):
        if removed[i]:
            continue
        rest = order[rank + 1 :]
        rest = rest[~removed[rest] & (np.asarray(classes, dtype=object)[rest] == classes[i])]
        if rest.size == 0:
            continue
        w = np.clip(np.minimum(b[i, 2], b[rest, 2]) - np.maximum(b[i, 0], b[rest, 0]), 0, None)
        h = np.clip(np.minimum(b[i, 3], b[rest, 3]) - np.maximum(b[i, 1], b[rest, 1]), 0, None)
        inter = w * h
        union = area[i] + area[rest] - inter
        ratio = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
        removed[rest[(ratio > max_overlap_ratio) & (inter > 0)]] = True
    dropped = {index[i] for i in np.nonzero(removed)[0]}
    return [f for i, f in enumerate(features) if i not in dropped]
