"""MMSEGMENTATION: supported `model` names train on our decoders; others are submit-time errors."""

from __future__ import annotations

import pytest
import torch

from tests.builders.exports import write_classified_tiles
from tests.training.helpers import build_family, predict_json, train_and_package

torch.set_num_threads(1)


def test_unsupported_model_is_a_submit_error_listing_the_supported_ones():
    from gpjobs.catalog import ArgumentError, lookup_model_type, parse_arguments

    info = lookup_model_type("MMSEGMENTATION")
    with pytest.raises(ArgumentError) as err:
        parse_arguments(info, {"model": "ocrnet"})
    for name in ("unet", "pspnet", "deeplabv3", "deeplabv3plus", "fcn", "mobilenet_v2"):
        assert name in str(err.value)
    assert parse_arguments(info, {})["model"] == "deeplabv3"


@pytest.mark.parametrize("model", ["unet", "pspnet", "deeplabv3", "deeplabv3plus", "fcn", "mobilenet_v2"])
def test_every_model_builds_and_steps(model):
    messages: list[tuple[str, str]] = []
    fam = build_family("MMSEGMENTATION", arguments={"model": model}, messages=messages)
    net = fam.build()
    loss = fam.training_loss(net, (torch.randn(2, 3, 32, 32), torch.randint(0, 3, (2, 32, 32))),
                             torch.device("cpu"))
    loss.backward()
    assert torch.isfinite(loss)
    assert net.eval()(torch.randn(1, 3, 32, 32)).shape == (1, 3, 32, 32)
    if model == "mobilenet_v2":
        assert fam.backbone == "MOBILENET_V2" and any("MobileNetV2" in text for _, text in messages)


@pytest.mark.slow
def test_mmseg_deeplabv3plus_trains_packages_and_predicts(tmp_path):
    folder = write_classified_tiles(tmp_path, n=16, size=32)
    run = train_and_package(tmp_path, folder, "MMSEGMENTATION", backbone_model="RESNET18", max_epochs=3,
                            stop_training=False, arguments={"model": "deeplabv3plus", "class_balancing": True})
    assert run.epochs[-1]["train_loss"] < run.epochs[0]["train_loss"]
    assert 0.0 <= run.metrics["accuracy"] <= 1.0 and 0.0 <= run.metrics["miou"] <= 1.0
    emd = run.emd
    assert emd["ModelName"] == "MMSegmentation" and emd["ModelConfiguration"] == "_model_extension_inferencing"
    assert emd["ModelParameters"]["model"] == "deeplabv3plus" and "not OpenMMLab" in emd["ModelParameters"][
        "implementation"]
    lines = predict_json(run.package, *sorted((folder / "images").iterdir())[:2])
    assert len(lines) == 2 and all(sum(line["class_pixels"].values()) == 32 * 32 for line in lines)
