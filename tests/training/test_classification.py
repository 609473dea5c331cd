"""FEATURE_CLASSIFIER on Labeled_Tiles, Imagenet and MultiLabeled_Tiles, trained for real."""

from __future__ import annotations

import pytest
import torch

from tests.builders.exports import write_imagenet, write_labeled_tiles, write_multilabeled_tiles
from tests.training.helpers import predict_json, train_and_package

torch.set_num_threads(1)
pytestmark = pytest.mark.slow  # every test here trains a model


@pytest.fixture(scope="module")
def labeled_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fc")
    folder = write_labeled_tiles(tmp, n=48, size=32, classes=((1, "a"), (2, "b"), (3, "c")))
    # Uniform synthetic chips + random (not ImageNet) weights: the whole network trains (at one rate, 3e-3),
    # batch 8, 6 epochs of 4 steps (margins over 10 seeds in tests/learning_margins.py).
    return train_and_package(
        tmp,
        folder,
        "FEATURE_CLASSIFIER",
        backbone_model="RESNET18",
        max_epochs=6,
        stop_training=False,
        validation_percent=25.0,
        learning_rate=0.003,
        batch_size=8,
        freeze_model=False,
    )


def test_feature_classifier_learns(labeled_run):
    epochs = labeled_run.epochs
    assert epochs[-1]["train_loss"] < epochs[0]["train_loss"]
    assert labeled_run.metrics["accuracy"] > 0.6  # three classes: chance is 1/3


def test_feature_classifier_package(labeled_run):
    assert {
        "model.emd",
        "model.pth",
        "model.pt",
        "ModelCharacteristics/confusion_matrix.png",
        "ModelCharacteristics/show_results.png",
        "ModelCharacteristics/loss_graph.png",
    } <= labeled_run.members
    emd = labeled_run.packaged_json("model.emd")
    assert emd["ModelType"] == "ObjectClassification" and emd["ModelName"] == "FeatureClassifier"
    assert emd["ModelConfiguration"] == "_FeatureClassifier" and emd["MetaDataMode"] == "Labeled_Tiles"
    matrix = emd["confusion_matrix"]["matrix"]
    assert len(matrix) == 3 and sum(map(sum, matrix)) == 12  # 25% of 48 chips validated


def test_predict_reproduces_classification_accuracy(labeled_run):
    data = labeled_run.validation_data("classification")
    records = data.valid.records
    predictions = predict_json(labeled_run.package, *(r.image for r in records))
    truth = [r.value if r.value is not None else r.objects[0][0] for r in records]
    accuracy = sum(p["class_value"] == t for p, t in zip(predictions, truth)) / len(records)
    assert accuracy == pytest.approx(labeled_run.metrics["accuracy"])


def test_imagenet_layout_with_oversample(tmp_path):
    folder = write_imagenet(tmp_path, n=12, size=32)
    run = train_and_package(
        tmp_path,
        folder,
        "FEATURE_CLASSIFIER",
        backbone_model="MOBILENET_V2",
        max_epochs=2,
        arguments={"oversample": True, "mixup": True},
    )
    assert any("oversample: training chips drawn by inverse class frequency" in t for t in run.messages)
    assert run.emd["MetaDataMode"] == "Imagenet"


def test_multilabel(tmp_path):
    folder = write_multilabeled_tiles(tmp_path, n=16, size=32)
    run = train_and_package(
        tmp_path,
        folder,
        "FEATURE_CLASSIFIER",
        backbone_model="RESNET18",
        max_epochs=3,
        stop_training=False,
        freeze_model=False,
    )
    assert 0.0 <= run.metrics["fbeta"] <= 1.0 and 0.0 <= run.metrics["accuracy"] <= 1.0
    assert run.emd["IsMultiLabel"] is True and "fbeta" in run.emd
    [prediction] = predict_json(run.package, sorted((folder / "images").iterdir())[0])
    assert "classes" in prediction
