"""MMDETECTION: supported `model` names train on our detector families; others are submit-time errors."""

from __future__ import annotations

import pytest
import torch

from tests.builders.exports import write_pascal_voc
from tests.training.helpers import build_family, predict_json, train_and_package

torch.set_num_threads(1)


def test_unsupported_model_is_a_submit_error_listing_the_supported_ones():
    from gpjobs.catalog import ArgumentError, lookup_model_type, parse_arguments

    info = lookup_model_type("MMDETECTION")
    assert info.implemented
    with pytest.raises(ArgumentError) as err:
        parse_arguments(info, {"model": "cascade_rcnn"})
    for name in ("faster_rcnn", "retinanet", "ssd", "yolov3"):
        assert name in str(err.value)
    assert parse_arguments(info, {})["model"] == "faster_rcnn"


@pytest.mark.parametrize("model, family, backbone", [
    ("faster_rcnn", "FasterRCNNFamily", "RESNET18"), ("retinanet", "RetinaNetFamily", "RESNET18"),
    ("ssd", "SSDFamily", "RESNET18"), ("yolo", "YOLOv3Family", "DARKNET53")])
def test_each_model_maps_onto_a_detector_family(model, family, backbone):
    messages: list[tuple[str, str]] = []
    fam = build_family("MMDETECTION", chip_size=(64, 64), export_format="PASCAL_VOC_rectangles",
                       arguments={"model": model, "model_weight": True}, messages=messages)
    assert family in [c.__name__ for c in type(fam).__mro__] and fam.backbone == backbone
    assert any(level == "warning" and "OpenMMLab" in text for level, text in messages)
    params = fam.model_parameters()
    assert params["model"] == ("yolov3" if model == "yolo" else model) and "not OpenMMLab" in params["implementation"]
    assert fam.emd_fields({})["ModelName"] == "MMDetection"


@pytest.mark.slow
def test_mmdet_ssd_trains_packages_and_predicts(tmp_path):
    voc = write_pascal_voc(tmp_path, n=8, size=32)
    # 1e-3 now that the random backbone trains at the full rate (3e-3: train-loss margin 3 % at worst over 10 seeds;
    # 1e-3: 14 %; tests/learning_margins.py)
    run = train_and_package(tmp_path, voc, "MMDETECTION", backbone_model="RESNET18", max_epochs=4, batch_size=2,
                            learning_rate=0.001, freeze_model=False, stop_training=False, arguments={"model": "ssd"})
    assert run.epochs[-1]["train_loss"] < run.epochs[0]["train_loss"]
    assert 0.0 <= run.metrics["average_precision"] <= 1.0
    emd = run.emd
    assert emd["ModelName"] == "MMDetection" and emd["ModelType"] == "ObjectDetection"
    assert emd["ModelParameters"]["model"] == "ssd"
    lines = predict_json(run.package, *sorted((voc / "images").iterdir())[:2])
    assert len(lines) == 2 and all("boxes" in line for line in lines)
