"""Held-out predictions of both sides, and the one metric code that scores them.

Both sides are scored on the same held-out chips, in model-index space (0 = background, 1..K the classes
in export order): segmentation pixel accuracy and foreground IoU from one confusion matrix, classification
accuracy, detection Esri AP (IoU 0.1, the row's score threshold) and COCO mAP@0.5 from our
`gpjobs/training/metrics_detection.py`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from bench.qualitylib.data import DataSet


def lut(data: DataSet) -> np.ndarray:
    """Class value -> model index (1..K); everything else 0."""
    values = [v for v, _ in data.classes]
    table = np.zeros(max(values) + 1, np.int64)
    table[values] = np.arange(1, len(values) + 1)
    return table


def truth(data: DataSet) -> dict:
    """Held-out ground truth in index space."""
    arrays, table = data.arrays("heldout"), lut(data)
    if data.task == "segmentation":
        return {"masks": table[arrays["masks"]]}
    if data.task == "classification":
        return {"labels": table[arrays["labels"]]}
    return {
        "boxes": [arrays["boxes"][arrays["box_image"] == i] for i in range(len(arrays["images"]))],
        "labels": [table[arrays["box_labels"][arrays["box_image"] == i]] for i in range(len(arrays["images"]))],
    }


def predict_ours(package: Path, data: DataSet, batch: int = 16) -> list:
    """Our package's predictions on the held-out chip files, read and normalised as `gpjobs predict` does."""
    import torch

    from gpjobs.export import read_chip
    from gpjobs.training.data import to_model_input
    from gpjobs.training.package import load_model, open_package

    table = lut(data)
    chips = data.heldout_chips()
    out: list = []
    torch.set_num_threads(1)
    with open_package(package) as pkg, torch.no_grad():
        family, model = load_model(pkg)
        for start in range(0, len(chips), batch):
            images = torch.stack([to_model_input(read_chip(c), family.info) for c in chips[start : start + batch]])
            for p in family.predict(model, images):
                if data.task == "segmentation":
                    out.append(table[np.clip(p["_mask"], 0, len(table) - 1)])
                elif data.task == "classification":
                    out.append(int(table[p["class_value"]]) - 1)
                else:
                    out.append(
                        {
                            "boxes": np.asarray(p["boxes"], np.float64).reshape(-1, 4),
                            "scores": np.asarray(p["scores"], np.float64),
                            "labels": np.asarray(
                                [table[v] if v is not None else 0 for v in p["class_values"]], np.int64
                            ),
                        }
                    )
    return out


def score(data: DataSet, predictions: list, detect_thresh: float = 0.2) -> dict[str, float]:
    """The row's metrics for one side's held-out predictions."""
    gt = truth(data)
    k = len(data.classes)
    if data.task == "segmentation":
        pred = np.stack(predictions).reshape(-1)
        true = gt["masks"].reshape(-1)
        confusion = np.bincount(true * (k + 1) + pred, minlength=(k + 1) ** 2).reshape(k + 1, k + 1)
        inter = np.diag(confusion).astype(np.float64)
        union = confusion.sum(0) + confusion.sum(1) - inter
        iou = np.where(union > 0, inter / np.maximum(union, 1), np.nan)
        return {"pixel_accuracy": float(inter.sum() / confusion.sum()), "iou": float(np.nanmean(iou[1:]))}
    if data.task == "classification":
        return {"accuracy": float(np.mean(np.asarray(predictions) == gt["labels"] - 1))}
    from gpjobs.training.metrics_detection import DetectionEvaluator

    evaluator = DetectionEvaluator(k, iou_thresh=0.1, detect_thresh=detect_thresh)
    for p, boxes, labels in zip(predictions, gt["boxes"], gt["labels"]):
        evaluator.add(p, {"boxes": boxes, "labels": labels})
    result = evaluator.compute([n for _, n in data.classes])
    return {"esri_ap": result["average_precision"], "map_50": result["map_50"]}
