"""MULTITASK_ROADEXTRACTOR / CONNECTNET: orientation labels, LinkNet training, package, predict."""

from __future__ import annotations

import pytest
import torch

from tests.builders.exports import write_classified_tiles
from tests.training.helpers import predict_json, train_and_package

torch.set_num_threads(1)


def test_orientation_labels_follow_the_road_direction():
    from gpjobs.training.models.roads import orientation_bins, orientation_targets

    roads = torch.zeros(4, 40, 40, dtype=torch.bool)
    roads[0, 18:23, :] = True  # east-west
    roads[1, :, 18:23] = True  # north-south
    for i in range(40):  # south-west -> north-east (rows grow downwards)
        roads[2, max(0, 37 - i) : min(40, 42 - i), i] = True
    roads[3, 10:30, 10:30] = True  # a square has no single direction but its centre band still gets labels
    labels = orientation_targets(roads, bin_size=20, theta=8)
    none = orientation_bins(20)
    assert none == 9
    assert (labels[~roads] == none).all()  # off-road: "no orientation"
    for k, expected in ((0, 0), (1, 90 // 20), (2, 45 // 20)):
        on = labels[k][roads[k]]
        assert (on == expected).float().mean() > 0.9, (k, torch.unique(on, return_counts=True))
    # a narrow band on a wide road: theta=3 labels the centre only
    wide = torch.zeros(1, 40, 40, dtype=torch.bool)
    wide[0, 10:30, :] = True
    band = orientation_targets(wide, 20, 3)[0] != none
    assert band[20].all() and not band[11].any()


@pytest.fixture(scope="module")
def road_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("roads")
    folder = write_classified_tiles(tmp, n=16, size=32, classes=((1, "road"),))
    return train_and_package(
        tmp,
        folder,
        "MULTITASK_ROADEXTRACTOR",
        backbone_model="RESNET18",
        max_epochs=4,
        stop_training=False,
        freeze_model=False,
        arguments={"orient_bin_size": 30},
    )


@pytest.mark.slow
def test_road_extractor_learns_and_monitors_miou(road_run):
    epochs = road_run.epochs
    assert epochs[-1]["train_loss"] < epochs[0]["train_loss"]
    metrics = road_run.metrics
    assert {"miou", "accuracy", "dice", "orientation_accuracy"} <= set(metrics)
    assert all(0.0 <= metrics[k] <= 1.0 for k in ("miou", "accuracy", "dice", "orientation_accuracy"))
    assert metrics["accuracy"] > 0.75  # background is ~70%: above it the road pixels are being found
    emd = road_run.emd
    # default monitor miou: the packaged epoch is the best miou
    assert emd["monitored_miou"] == pytest.approx(max(e["metrics"]["miou"] for e in epochs))
    assert emd["ModelName"] == "MultiTaskRoadExtractor" and emd["ModelConfiguration"] == "_road_infrencing"
    params = emd["ModelParameters"]
    assert params["mtl_model"] == "linknet" and params["requested_mtl_model"] == "hourglass"
    assert params["orient_bin_size"] == 30 and params["loss_weights"] == [1.0, 1.0]
    assert any("mtl_model=hourglass is trained as LinkNet" in t for t in road_run.messages)
    assert {"model.emd", "model.pth", "model.pt", "ModelCharacteristics/show_results.png"} <= road_run.members


@pytest.mark.slow
def test_road_predict_from_package(road_run):
    lines = predict_json(road_run.package, *sorted((road_run.folder / "images").iterdir())[:3])
    assert len(lines) == 3 and all(sum(line["class_pixels"].values()) == 32 * 32 for line in lines)


@pytest.mark.slow
def test_connectnet_alias_with_linknet_and_weights(tmp_path):
    folder = write_classified_tiles(tmp_path, n=8, size=32, classes=((1, "road"), (2, "track")))
    run = train_and_package(
        tmp_path,
        folder,
        "CONNECTNET",
        backbone_model="RESNET18",
        max_epochs=1,
        arguments={"mtl_model": "linknet", "loss_weights": "[1.0, 0.5]", "ignore_classes": [2]},
    )
    emd = run.emd
    assert emd["ModelName"] == "ConnectNet" and emd["ModelParameters"]["loss_weights"] == [1.0, 0.5]
    assert emd["ignore_mapped_class"] == [2]
    assert not any("hourglass" in t for t in run.messages)


def test_bad_road_arguments_fail_at_submit():
    from gpjobs.catalog import ArgumentError, lookup_model_type, parse_arguments

    info = lookup_model_type("MULTITASK_ROADEXTRACTOR")
    with pytest.raises(ArgumentError, match="mtl_model"):
        parse_arguments(info, {"mtl_model": "unet"})
    assert parse_arguments(info, {})["monitor"] == "miou"
