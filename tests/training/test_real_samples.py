"""`gpjobs train` on the real Esri exports in ../shared/samples (skipped when absent)."""

from __future__ import annotations

import json

import pytest

from gpjobs.training.protocol import ExitCode
from tests.training.helpers import dlpk_members, gpjobs

pytestmark = pytest.mark.slow  # `gpjobs train` in a fresh interpreter on the real exports


def test_real_kitti_6band_uint16_trains_and_packages(samples_dir, tmp_path):
    folder = samples_dir / "phragmites-kitti"
    out = tmp_path / "phragmites.dlpk"
    done = gpjobs(
        "train",
        "--in-folder",
        str(folder),
        "--model-type",
        "RETINANET",
        "--backbone-model",
        "RESNET18",
        "--max-epochs",
        "1",
        "--batch-size",
        "8",
        "--learning-rate",
        "0.001",
        "--no-freeze-model",
        "--threads",
        "1",
        "--output",
        str(out),
        "--json",
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "first convolution rebuilt for 6 bands" in done.stderr
    assert {
        "phragmites.emd",
        "phragmites.pth",
        "model_metrics.html",
        "ModelCharacteristics/loss_graph.png",
    } <= dlpk_members(out)
    chip = sorted((folder / "images").glob("*.tif"))[0]
    predicted = gpjobs("predict", str(out), str(chip), "--json")
    assert predicted.returncode == 0, predicted.stderr[-2000:]
    assert json.loads(predicted.stdout)["chip"] == str(chip)


def test_metadata_only_sample_fails_with_a_fix_it_message(samples_dir, tmp_path):
    done = gpjobs(
        "train",
        "--in-folder",
        str(samples_dir / "building-unet-classified-tiles"),
        "--model-type",
        "UNET",
        "--backbone-model",
        "RESNET18",
        "--output",
        str(tmp_path / "b.dlpk"),
    )
    assert done.returncode == ExitCode.BAD_INPUT
    assert "has no image chips" in done.stderr and "re-export" in done.stderr
    assert not (tmp_path / "b.dlpk").exists()
