"""Checks the DETREG and MMDETECTION/MMSEGMENTATION tests share: resume after an interrupt gives the same
numbers, and `gpjobs predict` on a detector package gives the validation AP again."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from gpjobs.training.metrics_detection import DetectionEvaluator
from tests.training.helpers import TrainedModel, interrupted_and_resumed, predict_json

# what every package holds beside the network: the model card and the Python raster function it names
CARD = {
    "model_metrics.html",
    "ModelCharacteristics/loss_graph.png",
    "ModelCharacteristics/show_results.png",
    "gpjobs_prf_core.py",
}


def assert_resume_matches_straight_run(tmp: Path, folder: Path, model_type: str, **kw: Any) -> TrainedModel:
    """Train `max_epochs` (>= 2) straight, then interrupted after epoch 1 and resumed: same epochs, same
    validation losses and the same final metrics. Returns the straight run (for further checks)."""
    straight, resumed = interrupted_and_resumed(tmp, folder, model_type, **kw)
    assert any("resumed from the checkpoint after epoch 1" in t for t in resumed.messages)
    assert [e["epoch"] for e in resumed.epochs] == [e["epoch"] for e in straight.epochs][1:]
    assert [e["valid_loss"] for e in resumed.epochs] == [e["valid_loss"] for e in straight.epochs][1:]
    assert resumed.metrics == straight.metrics
    return straight


def assert_predict_cli_reproduces_ap(run: TrainedModel, *, cli: bool = True) -> list[dict[str, Any]]:
    """`gpjobs predict` on the validation chips, scored like validation, gives the `.emd`'s AP and mAP
    (`cli=False`: the same through `load_model` in this process, which saves starting an interpreter).
    Returns the predictions (one per validation chip)."""
    emd = run.emd
    names = [c["Name"] for c in emd["Classes"]]
    data = run.validation_data("detection", augment=False)
    truths = [data.valid[i][1] for i in range(len(data.valid))]
    if cli:
        predictions = predict_json(run.package, *[r.image for r in data.valid.records])
    else:
        from gpjobs.training.package import load_model, open_package

        with open_package(run.package) as package:
            family, model = load_model(package)
            predictions = family.predict(model, torch.stack([data.valid[i][0] for i in range(len(truths))]))
    assert len(predictions) == len(truths)
    detect_thresh = float(emd["MetricsNote"].split("score >= ")[1].split(",")[0])
    evaluator = DetectionEvaluator(len(names), iou_thresh=0.1, detect_thresh=detect_thresh)
    for pred, truth in zip(predictions, truths):
        evaluator.add(
            {
                "boxes": torch.tensor(pred["boxes"]).reshape(-1, 4),
                "scores": pred["scores"],
                "labels": [names.index(n) + 1 for n in pred["labels"]],
            },
            truth,
        )
    ap = evaluator.compute(names)
    assert ap["average_precision"] == pytest.approx(emd["average_precision"], abs=1e-6)
    assert ap["map_50"] == pytest.approx(emd["map_50"], abs=1e-6)
    return predictions
