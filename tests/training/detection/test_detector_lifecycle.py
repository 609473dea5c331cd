"""Detectors through the engine's lifecycle features as the other families: early stopping, the LR finder
(learning_rate 0/None), resume after an interrupt, and fine-tuning from a detector `.dlpk` via `gpjobs train`.

Tiny on purpose (32 px chips, a handful of steps): these pin the plumbing, test_detectors_learn.py the learning.
"""

from __future__ import annotations

import json
import zipfile

import pytest

from gpjobs.training.events import ListReporter
from gpjobs.training.protocol import ExitCode
from tests.builders.exports import write_pascal_voc
from tests.training.helpers import dlpk_members, epochs_of, gpjobs, make_spec, result_of, train

TINY_RCNN = {"rpn_pre_nms_top_n_train": 50, "rpn_post_nms_top_n_train": 20, "rpn_pre_nms_top_n_test": 50,
             "rpn_post_nms_top_n_test": 20, "rpn_batch_size_per_image": 16, "box_batch_size_per_image": 16,
             "box_detections_per_img": 10}


@pytest.fixture(scope="module")
def voc(tmp_path_factory):
    return write_pascal_voc(tmp_path_factory.mktemp("voc"), n=8, size=32)


def _messages(reporter: ListReporter) -> list[str]:
    return [e.get("text", "") for e in reporter.events if e["type"] == "message"]


def test_early_stopping_on_a_detector_metric_keeps_the_best_epoch(tmp_path, voc):
    # AP cannot rise by 2.0: every epoch after the first is "no improvement", so patience 1 stops after epoch 2
    spec = make_spec(tmp_path, [voc], "SSD", backbone_model="RESNET18", max_epochs=5, batch_size=2,
                     learning_rate=0.003, freeze_model=False,
                     arguments={"monitor": "average_precision", "patience": 1, "min_delta": 2.0})
    code, reporter = train(spec)
    assert code == ExitCode.OK, _messages(reporter)
    assert [e["epoch"] for e in epochs_of(reporter)] == [1, 2]
    assert any(t.startswith("Early stopping: average_precision") for t in _messages(reporter))
    result = result_of(reporter)
    emd = result["emd"]
    assert result["best_epoch"] == 1 and emd["Gpjobs"]["stopped_early"] is True
    assert emd["monitored_average_precision"] == epochs_of(reporter)[0]["metrics"]["average_precision"]


def test_lr_finder_chooses_the_detector_learning_rate(tmp_path, voc):
    spec = make_spec(tmp_path, [voc], "SSD", backbone_model="RESNET18", max_epochs=1, batch_size=2,
                     learning_rate=0.0, freeze_model=False)
    code, reporter = train(spec)
    assert code == ExitCode.OK, _messages(reporter)
    emd = result_of(reporter)["emd"]
    finder = emd["Gpjobs"]["lr_finder"]
    assert finder is not None and finder["points"] >= 10
    assert finder["min_lr"] <= emd["Gpjobs"]["learning_rate"] == finder["chosen"] <= finder["max_lr"]
    assert any(t.startswith("LR finder:") for t in _messages(reporter))
    assert "ModelCharacteristics/lr_finder.png" in dlpk_members(result_of(reporter)["package"])


def test_interrupted_rcnn_resumes_to_the_same_result(tmp_path, voc):
    common = dict(backbone_model="RESNET18", max_epochs=3, batch_size=2, learning_rate=0.001, freeze_model=False,
                  stop_training=False, arguments=TINY_RCNN)
    code, straight = train(make_spec(tmp_path / "a", [voc], "FASTERRCNN", **common))
    assert code == ExitCode.OK, _messages(straight)

    class KillAfterEpoch1(ListReporter):
        def emit(self, event_type, **fields):  # the main thread's epoch event (the checkpoint one can be late)
            super().emit(event_type, **fields)
            if event_type == "epoch" and fields["epoch"] == 1:
                self.request_cancel()

    spec = make_spec(tmp_path / "b", [voc], "FASTERRCNN", **common)
    code, _ = train(spec, KillAfterEpoch1())
    assert code == ExitCode.CANCELLED and spec.checkpoint_path.is_file()
    code, resumed = train(spec)
    assert code == ExitCode.OK, _messages(resumed)
    assert any("resumed from the checkpoint after epoch 1" in t for t in _messages(resumed))
    assert [e["epoch"] for e in epochs_of(resumed)] == [2, 3]
    # RPN/RoI sampling draws from the RNG: equal numbers prove the RNG state was restored too
    assert [e["valid_loss"] for e in epochs_of(resumed)] == [e["valid_loss"] for e in epochs_of(straight)][1:]
    assert result_of(resumed)["metrics"] == result_of(straight)["metrics"]


def test_fine_tuning_from_a_detector_dlpk_via_gpjobs_train(tmp_path, voc):
    _, first = train(make_spec(tmp_path / "a", [voc], "SSD", backbone_model="RESNET18", max_epochs=2,
                               batch_size=2, learning_rate=0.003, freeze_model=False))
    package = result_of(first)["package"]
    out = tmp_path / "tuned.dlpk"
    run = gpjobs("train", "--in-folder", str(voc), "--model-type", "SSD", "--backbone-model", "RESNET34",
                 "--pretrained-model", package, "--max-epochs", "1", "--batch-size", "2", "--learning-rate",
                 "0.001", "--validation-percent", "25", "--no-freeze-model", "--threads", "1", "--output",
                 str(out), "--json")
    assert run.returncode == 0, run.stderr[-3000:]
    assert "using it instead of RESNET34" in run.stderr
    loaded = run.stderr.split("Fine-tuning from model (gpjobs package): ")[1].split(" weight tensors loaded")[0]
    counts = [part.split()[1].split("/") for part in loaded.split(", ")]
    assert counts and all(a == b for a, b in counts), loaded  # every tensor, anchors included
    with zipfile.ZipFile(out) as zf:
        emd = json.loads(zf.read("tuned.emd"))
    assert emd["PretrainedWeights"] == f"fine-tuned from model (gpjobs package): {loaded} tensors"
    assert emd["backbone"] == "resnet18"
    assert emd["Grids"] == result_of(first)["emd"]["Grids"]
    # a detector package cannot fine-tune another model type
    wrong = gpjobs("train", "--in-folder", str(voc), "--model-type", "RETINANET", "--pretrained-model", package,
                   "--max-epochs", "1", "--output", str(tmp_path / "x.dlpk"), "--threads", "1")
    assert wrong.returncode == ExitCode.BAD_INPUT and "is a SSD model" in wrong.stderr
