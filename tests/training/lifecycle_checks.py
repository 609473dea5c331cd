"""Checks every new model type's tests share: resume after an interrupt gives the same numbers, and
`gpjobs predict` on a detector package gives the validation AP again."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from gpjobs.training.data import open_training_data
from gpjobs.training.events import ListReporter
from gpjobs.training.metrics_detection import DetectionEvaluator
from gpjobs.training.protocol import ExitCode
from tests.training.helpers import epochs_of, gpjobs, make_spec, result_of, train


class CancelAfterEpoch1(ListReporter):
    def emit(self, event_type: str, **fields: Any) -> None:
        super().emit(event_type, **fields)
        if event_type == "epoch" and fields["epoch"] == 1:
            self.request_cancel()


def assert_resume_matches_straight_run(tmp: Path, folders: list[Path], model_type: str,
                                       **kw: Any) -> ListReporter:
    """Train `max_epochs` (>= 2) straight, then interrupted after epoch 1 and resumed: same epochs, same
    validation losses and the same final metrics. Returns the straight run's reporter (for further checks)."""
    code, straight = train(make_spec(tmp / "straight", folders, model_type, **kw))
    assert code == ExitCode.OK, [e for e in straight.events if e["type"] in ("failed", "message")]
    spec = make_spec(tmp / "resumed", folders, model_type, **kw)
    code, _ = train(spec, CancelAfterEpoch1())
    assert code == ExitCode.CANCELLED and spec.checkpoint_path.is_file()
    code, resumed = train(spec)
    assert code == ExitCode.OK, [e for e in resumed.events if e["type"] in ("failed", "message")]
    assert any("resumed from the checkpoint after epoch 1" in e.get("text", "") for e in resumed.events)
    assert [e["epoch"] for e in epochs_of(resumed)] == [e["epoch"] for e in epochs_of(straight)][1:]
    assert [e["valid_loss"] for e in epochs_of(resumed)] == [e["valid_loss"] for e in epochs_of(straight)][1:]
    assert result_of(resumed)["metrics"] == result_of(straight)["metrics"]
    return straight


def assert_predict_cli_reproduces_ap(folder: Path, result: dict[str, Any], validation_percent: float = 25.0,
                                    *, cli: bool = True) -> list[dict[str, Any]]:
    """`gpjobs predict` on the validation chips, scored like validation, gives the `.emd`'s AP and mAP
    (`cli=False`: the same through `load_model` in this process, which saves starting an interpreter).
    Returns the predictions (one per validation chip; the CLI's carry their "chip" path)."""
    emd = result["emd"]
    names = [c["Name"] for c in emd["Classes"]]
    data = open_training_data([folder], task="detection", validation_percent=validation_percent, seed=42)
    truths = [data.valid[i][1] for i in range(len(data.valid))]
    if cli:
        run = gpjobs("predict", result["package"], *[str(r.image) for r in data.valid.records], "--json")
        assert run.returncode == 0, run.stderr
        predictions = [json.loads(line) for line in run.stdout.splitlines() if line.startswith("{")]
    else:
        from gpjobs.training.package import load_model, open_package

        with open_package(result["package"]) as package:
            family, model = load_model(package)
            predictions = family.predict(model, torch.stack([data.valid[i][0] for i in range(len(truths))]))
    assert len(predictions) == len(truths)
    detect_thresh = float(emd["MetricsNote"].split("score >= ")[1].split(",")[0])
    evaluator = DetectionEvaluator(len(names), iou_thresh=0.1, detect_thresh=detect_thresh)
    for pred, truth in zip(predictions, truths):
        evaluator.add({"boxes": torch.tensor(pred["boxes"]).reshape(-1, 4), "scores": pred["scores"],
                       "labels": [names.index(n) + 1 for n in pred["labels"]]}, truth)
    ap = evaluator.compute(names)
    assert ap["average_precision"] == pytest.approx(emd["average_precision"], abs=1e-6)
    assert ap["map_50"] == pytest.approx(emd["map_50"], abs=1e-6)
    return predictions
