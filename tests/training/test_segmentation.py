"""UNET / PSPNET / DEEPLAB train for real on tiny Classified_Tiles; the package stands alone."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile

import numpy as np
import pytest
import torch

from gpjobs.export import read_label_raster

from gpjobs.training.data import open_training_data
from gpjobs.training.protocol import ExitCode
from tests.builders.exports import write_classified_tiles
from tests.training.helpers import dlpk_members, epochs_of, gpjobs, make_spec, result_of, train

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def unet_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("unet")
    folder = write_classified_tiles(tmp, n=16, size=32)
    # a random backbone trains whole at the full rate: 3e-3 (the helper's 1e-2 wrecks its BatchNorm statistics
    # in these 12 steps; margins over 10 seeds in tests/learning_margins.py)
    spec = make_spec(tmp, [folder], "UNET", backbone_model="RESNET18", max_epochs=4, stop_training=False,
                     learning_rate=0.003)
    code, reporter = train(spec)
    assert code == ExitCode.OK, [e for e in reporter.events if e["type"] in ("failed", "message")]
    return spec, folder, reporter


def test_unet_learns(unet_run):
    _, _, reporter = unet_run
    epochs = epochs_of(reporter)
    assert [e["epoch"] for e in epochs] == [1, 2, 3, 4]
    assert epochs[-1]["train_loss"] < epochs[0]["train_loss"]
    best = result_of(reporter)["metrics"]
    assert 0.0 <= best["miou"] <= 1.0
    assert best["accuracy"] > 0.75  # background is ~70% of pixels; above that the rectangles were learned


def test_unet_package_members_and_emd(unet_run):
    spec, _, reporter = unet_run
    result = result_of(reporter)
    members = dlpk_members(result["package"])
    assert {"model.emd", "model.pth", "model.pt", "GpjobsInference.py", "model_metrics.html",
            "ModelCharacteristics/loss_graph.png", "ModelCharacteristics/show_results.png"} <= members
    with zipfile.ZipFile(result["package"]) as zf:
        emd = json.loads(zf.read("model.emd"))
    assert emd == result["emd"]
    assert emd["ModelType"] == "ImageClassification" and emd["ModelName"] == "UnetClassifier"
    assert emd["ModelFile"] == "model.pth" and emd["ImageHeight"] == emd["ImageWidth"] == 32
    assert emd["ExtractBands"] == [0, 1, 2] and emd["IsImageNetNormalization"] is True
    assert [c["Value"] for c in emd["Classes"]] == [1, 2]
    assert emd["ModelParameters"]["backbone"] == "resnet18"
    assert emd["PretrainedWeights"].startswith("none: no weights directory")
    assert emd["LearningRate"] == "3.0000e-03"  # a random backbone trains at the full rate (one rate, no slice)
    per_class = json.loads(emd["per_class_metrics"])
    assert set(per_class) == {"NoData", "a", "b"}
    assert float(emd["accuracy"]) == pytest.approx(result["metrics"]["accuracy"], rel=1e-3)
    assert emd["monitored_valid_loss"] == pytest.approx(result["metrics"]["valid_loss"])
    # the best epoch's weights are packaged: its validation loss is the minimum of the run
    assert emd["monitored_valid_loss"] == pytest.approx(min(e["valid_loss"] for e in epochs_of(reporter)))


def test_predict_reproduces_validation_accuracy_from_package_alone(unet_run, tmp_path):
    spec, folder, reporter = unet_run
    data = open_training_data([folder], task="segmentation", validation_percent=spec.validation_percent,
                              seed=42, augment=False)
    chips = [str(r.image) for r in data.valid.records]
    done = gpjobs("predict", result_of(reporter)["package"], *chips, "--json", "--masks-dir", str(tmp_path))
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    assert len(lines) == len(chips) and all("class_pixels" in line for line in lines)
    import tifffile

    correct = total = 0
    for rec in data.valid.records:
        truth = read_label_raster(rec.label)
        truth = truth[..., 0] if truth.ndim == 3 else truth
        pred = tifffile.imread(tmp_path / f"{rec.image.stem}.tif")
        correct += int((pred == truth).sum())
        total += truth.size
    assert correct / total == pytest.approx(result_of(reporter)["metrics"]["accuracy"], abs=1e-6)


def test_shipped_inference_script_runs_without_gpjobs(unet_run, tmp_path):
    spec, folder, reporter = unet_run
    with zipfile.ZipFile(result_of(reporter)["package"]) as zf:
        zf.extractall(tmp_path)
    chip = sorted((folder / "images").iterdir())[0]
    done = subprocess.run([sys.executable, "-I", "GpjobsInference.py", "model.emd", str(chip)], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)  # -I: gpjobs is not importable
    assert done.returncode == 0, done.stderr
    ours = gpjobs("predict", str(tmp_path / "model.emd"), str(chip), "--json")
    assert json.loads(done.stdout)["class_pixels"] == json.loads(ours.stdout)["class_pixels"]


@pytest.mark.parametrize("model_type,arguments", [
    ("PSPNET", {"pyramid_sizes": "[1, 2]", "mixup": True}),
    ("PSPNET", {"use_unet": False, "focal_loss": True}),
    ("DEEPLAB", {"class_balancing": True, "dice_loss_fraction": 0.3}),
])
def test_pspnet_and_deeplab_learn(tmp_path, model_type, arguments):
    folder = write_classified_tiles(tmp_path, n=16, size=32, classes=((1, "a"), (2, "b"), (3, "c")))
    # 1e-3: the random backbone trains at the full rate; min margin over 10 seeds 0.13 (PSPNET focal_loss failed
    # 2/10 at the helper's 1e-2, before and after that change: tests/learning_margins.py)
    spec = make_spec(tmp_path, [folder], model_type, backbone_model="RESNET18", max_epochs=3,
                     stop_training=False, arguments=arguments, learning_rate=0.001)
    code, reporter = train(spec)
    assert code == ExitCode.OK, [e for e in reporter.events if e["type"] in ("failed", "message")]
    epochs = epochs_of(reporter)
    assert epochs[-1]["train_loss"] < epochs[0]["train_loss"]
    result = result_of(reporter)
    assert 0.0 <= result["metrics"]["accuracy"] <= 1.0 and 0.0 <= result["metrics"]["miou"] <= 1.0
    emd = result["emd"]
    assert emd["ModelName"] == {"PSPNET": "PSPNetClassifier", "DEEPLAB": "DeepLab"}[model_type]
    if model_type == "PSPNET":
        expected = json.loads(arguments["pyramid_sizes"]) if "pyramid_sizes" in arguments else [1, 2, 3, 6]
        assert emd["ModelParameters"]["pyramid_sizes"] == expected
        assert emd["ModelParameters"]["use_unet"] == arguments.get("use_unet", True)
    texts = " ".join(e.get("text", "") for e in reporter.events if e["type"] == "message")
    if arguments.get("class_balancing"):
        assert "class_balancing: loss weights" in texts


def test_ignore_classes_leave_the_metrics(tmp_path):
    folder = write_classified_tiles(tmp_path, n=8, size=32, classes=((1, "a"), (2, "b"), (3, "c")))
    spec = make_spec(tmp_path, [folder], "UNET", backbone_model="RESNET18", max_epochs=1,
                     arguments={"ignore_classes": [3]})
    code, reporter = train(spec)
    assert code == ExitCode.OK
    emd = result_of(reporter)["emd"]
    assert emd["ignore_mapped_class"] == [3]
    per_class = json.loads(emd["per_class_metrics"])
    assert per_class["c"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0}  # no ignored pixel was counted


def test_multispectral_uint16_unet(tmp_path):
    folder = write_classified_tiles(tmp_path, n=8, size=32, bands=5, dtype="uint16")
    spec = make_spec(tmp_path, [folder], "UNET", backbone_model="RESNET18", max_epochs=1)
    code, reporter = train(spec)
    assert code == ExitCode.OK, [e for e in reporter.events if e["type"] in ("failed", "message")]
    emd = result_of(reporter)["emd"]
    assert emd["IsMultispectral"] is True and emd["ExtractBands"] == [0, 1, 2, 3, 4]
    assert len(emd["NormalizationStats"]["band_min_values"]) == 5
    assert np.isfinite(result_of(reporter)["metrics"]["valid_loss"])


@pytest.mark.parametrize("model_type,backbone", [
    ("UNET", "RESNET34"), ("PSPNET", "DENSENET121"), ("PSPNET", "VGG11_BN"), ("DEEPLAB", "MOBILENET_V2"),
    ("DEEPLAB", "RESNET50")])
def test_every_backbone_family_builds_and_steps(model_type, backbone):
    from types import SimpleNamespace

    from gpjobs.catalog import lookup_model_type, parse_arguments
    from gpjobs.export import ClassInfo
    from gpjobs.training.models import family_for
    from gpjobs.training.weights import WeightsPolicy

    info = SimpleNamespace(bands=4, extract_bands=[0, 1, 2, 3], classes=[ClassInfo(1, "a"), ClassInfo(2, "b")],
                           chip_size=(32, 32), task="segmentation")
    mt = lookup_model_type(model_type)
    fam = family_for(model_type)(mt, info, backbone, parse_arguments(mt, {}), WeightsPolicy(), lambda l, t: None)
    model = fam.build()
    fam.freeze(model, True)
    assert fam.backbone_parameters(model) and fam.head_parameters(model)
    images, masks = torch.randn(2, 4, 32, 32), torch.randint(0, 3, (2, 32, 32))
    loss = fam.training_loss(model, (images, masks), torch.device("cpu"))
    loss.backward()
    assert torch.isfinite(loss)
    assert model.eval()(images).shape == (2, 3, 32, 32)
