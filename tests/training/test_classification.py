"""FEATURE_CLASSIFIER on Labeled_Tiles, Imagenet and MultiLabeled_Tiles, trained for real."""

from __future__ import annotations

import json
import zipfile

import pytest
import torch

from gpjobs.training.data import open_training_data
from gpjobs.training.protocol import ExitCode
from tests.builders.exports import write_imagenet, write_labeled_tiles, write_multilabeled_tiles
from tests.training.helpers import dlpk_members, epochs_of, gpjobs, make_spec, result_of, train

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def labeled_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fc")
    folder = write_labeled_tiles(tmp, n=48, size=32, classes=((1, "a"), (2, "b"), (3, "c")))
    # Uniform synthetic chips + random (not ImageNet) weights: the whole network trains (at one rate, 3e-3),
    # batch 8, 6 epochs of 4 steps (margins over 10 seeds in tests/learning_margins.py).
    spec = make_spec(tmp, [folder], "FEATURE_CLASSIFIER", backbone_model="RESNET18", max_epochs=6,
                     stop_training=False, validation_percent=25.0, learning_rate=0.003, batch_size=8,
                     freeze_model=False)
    code, reporter = train(spec)
    assert code == ExitCode.OK, [e for e in reporter.events if e["type"] in ("failed", "message")]
    return spec, folder, reporter


def test_feature_classifier_learns(labeled_run):
    _, _, reporter = labeled_run
    epochs = epochs_of(reporter)
    assert epochs[-1]["train_loss"] < epochs[0]["train_loss"]
    metrics = result_of(reporter)["metrics"]
    assert metrics["accuracy"] > 0.6  # three classes: chance is 1/3


def test_feature_classifier_package(labeled_run):
    _, _, reporter = labeled_run
    result = result_of(reporter)
    members = dlpk_members(result["package"])
    assert {"model.emd", "model.pth", "model.pt", "ModelCharacteristics/confusion_matrix.png",
            "ModelCharacteristics/show_results.png", "ModelCharacteristics/loss_graph.png"} <= members
    with zipfile.ZipFile(result["package"]) as zf:
        emd = json.loads(zf.read("model.emd"))
    assert emd["ModelType"] == "ObjectClassification" and emd["ModelName"] == "FeatureClassifier"
    assert emd["ModelConfiguration"] == "_FeatureClassifier" and emd["MetaDataMode"] == "Labeled_Tiles"
    matrix = emd["confusion_matrix"]["matrix"]
    assert len(matrix) == 3 and sum(map(sum, matrix)) == 12  # 25% of 48 chips validated


def test_predict_reproduces_classification_accuracy(labeled_run):
    spec, folder, reporter = labeled_run
    data = open_training_data([folder], task="classification", validation_percent=spec.validation_percent,
                              seed=42, augment=False)
    records = data.valid.records
    done = gpjobs("predict", result_of(reporter)["package"], *[str(r.image) for r in records], "--json")
    assert done.returncode == 0, done.stderr
    predictions = [json.loads(line) for line in done.stdout.splitlines()]
    truth = [r.value if r.value is not None else r.objects[0][0] for r in records]
    accuracy = sum(p["class_value"] == t for p, t in zip(predictions, truth)) / len(records)
    assert accuracy == pytest.approx(result_of(reporter)["metrics"]["accuracy"])


def test_imagenet_layout_with_oversample(tmp_path):
    folder = write_imagenet(tmp_path, n=12, size=32)
    spec = make_spec(tmp_path, [folder], "FEATURE_CLASSIFIER", backbone_model="MOBILENET_V2", max_epochs=2,
                     arguments={"oversample": True, "mixup": True})
    code, reporter = train(spec)
    assert code == ExitCode.OK, [e for e in reporter.events if e["type"] in ("failed", "message")]
    texts = " ".join(e.get("text", "") for e in reporter.events if e["type"] == "message")
    assert "oversample: training chips drawn by inverse class frequency" in texts
    assert result_of(reporter)["emd"]["MetaDataMode"] == "Imagenet"


def test_multilabel(tmp_path):
    folder = write_multilabeled_tiles(tmp_path, n=16, size=32)
    spec = make_spec(tmp_path, [folder], "FEATURE_CLASSIFIER", backbone_model="RESNET18", max_epochs=3,
                     stop_training=False, freeze_model=False)
    code, reporter = train(spec)
    assert code == ExitCode.OK, [e for e in reporter.events if e["type"] in ("failed", "message")]
    metrics = result_of(reporter)["metrics"]
    assert 0.0 <= metrics["fbeta"] <= 1.0 and 0.0 <= metrics["accuracy"] <= 1.0
    emd = result_of(reporter)["emd"]
    assert emd["IsMultiLabel"] is True and "fbeta" in emd
    chip = sorted((folder / "images").iterdir())[0]
    done = gpjobs("predict", result_of(reporter)["package"], str(chip), "--json")
    assert done.returncode == 0, done.stderr
    assert "classes" in json.loads(done.stdout)
