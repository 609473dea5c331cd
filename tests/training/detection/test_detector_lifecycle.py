"""Detectors through the engine's lifecycle features as the other families: early stopping, the LR finder
(learning_rate 0/None), resume after an interrupt, and fine-tuning from a detector `.dlpk` via `gpjobs train`.

Tiny on purpose (32 px chips, a handful of steps): these pin the plumbing, test_detectors_learn.py the learning.
"""

from __future__ import annotations

import json
import zipfile

import pytest

from gpjobs.training.protocol import ExitCode
from tests.builders.exports import write_pascal_voc
from tests.training.helpers import gpjobs, interrupted_and_resumed, train_and_package

pytestmark = pytest.mark.slow  # every test here trains a detector

TINY_RCNN = {
    "rpn_pre_nms_top_n_train": 50,
    "rpn_post_nms_top_n_train": 20,
    "rpn_pre_nms_top_n_test": 50,
    "rpn_post_nms_top_n_test": 20,
    "rpn_batch_size_per_image": 16,
    "box_batch_size_per_image": 16,
    "box_detections_per_img": 10,
}


@pytest.fixture(scope="module")
def voc(tmp_path_factory):
    return write_pascal_voc(tmp_path_factory.mktemp("voc"), n=8, size=32)


def test_early_stopping_on_a_detector_metric_keeps_the_best_epoch(tmp_path, voc):
    # AP cannot rise by 2.0: every epoch after the first counts against patience 1, which stops after epoch 2
    run = train_and_package(
        tmp_path,
        voc,
        "SSD",
        backbone_model="RESNET18",
        max_epochs=5,
        batch_size=2,
        learning_rate=0.003,
        freeze_model=False,
        arguments={"monitor": "average_precision", "patience": 1, "min_delta": 2.0},
    )
    assert [e["epoch"] for e in run.epochs] == [1, 2]
    assert any(t.startswith("Early stopping: average_precision") for t in run.messages)
    # the best epoch is the one of the highest AP (by any margin; the first of equals), min_delta or not
    aps = [e["metrics"]["average_precision"] for e in run.epochs]
    best = aps.index(max(aps)) + 1
    assert run.result["best_epoch"] == best and run.emd["Gpjobs"]["stopped_early"] is True
    assert run.emd["monitored_average_precision"] == aps[best - 1]


def test_lr_finder_chooses_the_detector_learning_rate(tmp_path, voc):
    # The range test may take 10 % of the planned steps and needs 20: plan 67 epochs of 3 steps, and stop after
    # epoch 2 (valid_loss cannot improve by 10)
    run = train_and_package(
        tmp_path,
        voc,
        "SSD",
        backbone_model="RESNET18",
        max_epochs=67,
        batch_size=2,
        learning_rate=0.0,
        freeze_model=False,
        arguments={"patience": 1, "min_delta": 10},
    )
    finder = run.emd["Gpjobs"]["lr_finder"]
    assert finder is not None and finder["points"] >= 10
    assert finder["min_lr"] <= run.emd["Gpjobs"]["learning_rate"] == finder["chosen"] <= finder["max_lr"]
    assert any(t.startswith("LR finder:") for t in run.messages)
    assert "ModelCharacteristics/lr_finder.png" in run.members


def test_interrupted_rcnn_resumes_to_the_same_result(tmp_path, voc):
    straight, resumed = interrupted_and_resumed(
        tmp_path,
        voc,
        "FASTERRCNN",
        backbone_model="RESNET18",
        max_epochs=3,
        batch_size=2,
        learning_rate=0.001,
        freeze_model=False,
        stop_training=False,
        arguments=TINY_RCNN,
    )
    assert any("resumed from the checkpoint after epoch 1" in t for t in resumed.messages)
    assert [e["epoch"] for e in resumed.epochs] == [2, 3]
    # RPN/RoI sampling draws from the RNG: equal numbers prove the RNG state was restored too
    assert [e["valid_loss"] for e in resumed.epochs] == [e["valid_loss"] for e in straight.epochs][1:]
    assert resumed.metrics == straight.metrics


def test_fine_tuning_from_a_detector_dlpk_via_gpjobs_train(tmp_path, voc):
    first = train_and_package(
        tmp_path / "a",
        voc,
        "SSD",
        backbone_model="RESNET18",
        max_epochs=2,
        batch_size=2,
        learning_rate=0.003,
        freeze_model=False,
    )
    package = first.package
    out = tmp_path / "tuned.dlpk"
    run = gpjobs(
        "train",
        "--in-folder",
        str(voc),
        "--model-type",
        "SSD",
        "--backbone-model",
        "RESNET34",
        "--pretrained-model",
        package,
        "--max-epochs",
        "1",
        "--batch-size",
        "2",
        "--learning-rate",
        "0.001",
        "--validation-percent",
        "25",
        "--no-freeze-model",
        "--threads",
        "1",
        "--output",
        str(out),
        "--json",
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert "using it instead of RESNET34" in run.stderr
    loaded = run.stderr.split("Fine-tuning from model (gpjobs package): ")[1].split(" weight tensors loaded")[0]
    counts = [part.split()[1].split("/") for part in loaded.split(", ")]
    assert counts and all(a == b for a, b in counts), loaded  # every tensor, anchors included
    with zipfile.ZipFile(out) as zf:
        emd = json.loads(zf.read("tuned.emd"))
    assert emd["PretrainedWeights"] == f"fine-tuned from model (gpjobs package): {loaded} tensors"
    assert emd["backbone"] == "resnet18"
    assert emd["Grids"] == first.emd["Grids"]
    # a detector package cannot fine-tune another model type
    wrong = gpjobs(
        "train",
        "--in-folder",
        str(voc),
        "--model-type",
        "RETINANET",
        "--pretrained-model",
        package,
        "--max-epochs",
        "1",
        "--output",
        str(tmp_path / "x.dlpk"),
        "--threads",
        "1",
    )
    assert wrong.returncode == ExitCode.BAD_INPUT and "is a SSD model" in wrong.stderr
