"""MMSEGMENTATION: supported `model` names train on our decoders; others are submit-time errors."""

from __future__ import annotations

import json

import pytest
import torch

from gpjobs.training.protocol import ExitCode
from tests.builders.exports import write_classified_tiles
from tests.training.helpers import emd_of, epochs_of, gpjobs, make_spec, result_of, train

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
    from types import SimpleNamespace

    from gpjobs.catalog import lookup_model_type, parse_arguments
    from gpjobs.export import ClassInfo
    from gpjobs.training.models import family_for
    from gpjobs.training.weights import WeightsPolicy

    info = SimpleNamespace(bands=3, extract_bands=[0, 1, 2], classes=[ClassInfo(1, "a"), ClassInfo(2, "b")],
                           chip_size=(32, 32), task="segmentation")
    mt = lookup_model_type("MMSEGMENTATION")
    messages = []
    fam = family_for("MMSEGMENTATION")(mt, info, "RESNET18", parse_arguments(mt, {"model": model}),
                                       WeightsPolicy(), lambda level, text: messages.append(text))
    net = fam.build()
    loss = fam.training_loss(net, (torch.randn(2, 3, 32, 32), torch.randint(0, 3, (2, 32, 32))),
                             torch.device("cpu"))
    loss.backward()
    assert torch.isfinite(loss)
    assert net.eval()(torch.randn(1, 3, 32, 32)).shape == (1, 3, 32, 32)
    if model == "mobilenet_v2":
        assert fam.backbone == "MOBILENET_V2" and any("MobileNetV2" in m for m in messages)


def test_mmseg_deeplabv3plus_trains_packages_and_predicts(tmp_path):
    folder = write_classified_tiles(tmp_path, n=16, size=32)
    spec = make_spec(tmp_path, [folder], "MMSEGMENTATION", backbone_model="RESNET18", max_epochs=3,
                     stop_training=False, arguments={"model": "deeplabv3plus", "class_balancing": True})
    code, reporter = train(spec)
    assert code == ExitCode.OK, [e for e in reporter.events if e["type"] in ("failed", "message")]
    epochs = epochs_of(reporter)
    assert epochs[-1]["train_loss"] < epochs[0]["train_loss"]
    result = result_of(reporter)
    assert 0.0 <= result["metrics"]["accuracy"] <= 1.0 and 0.0 <= result["metrics"]["miou"] <= 1.0
    emd = emd_of(result)
    assert emd["ModelName"] == "MMSegmentation" and emd["ModelConfiguration"] == "_model_extension_inferencing"
    assert emd["ModelParameters"]["model"] == "deeplabv3plus" and "not OpenMMLab" in emd["ModelParameters"][
        "implementation"]
    chips = [str(p) for p in sorted((folder / "images").iterdir())[:2]]
    done = gpjobs("predict", result["package"], *chips, "--json")
    assert done.returncode == 0, done.stderr
    assert all(sum(json.loads(line)["class_pixels"].values()) == 32 * 32 for line in done.stdout.splitlines())
