"""SUPERRESOLUTION trains for real on a tiny Export_Tiles; image-quality metrics are right; predict translates."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from gpjobs.catalog import lookup_model_type, parse_arguments, resolve_backbone
from gpjobs.export import read_chip
from gpjobs.training.models.image_quality import degrade, psnr, ssim
from tests.builders.exports import write_export_tiles
from tests.training.helpers import predict_json, train_and_package

torch.set_num_threads(1)


# --- metrics and degradation ---------------------------------------------------------------------


def test_psnr_known_values():
    x = torch.rand(2, 3, 16, 16) * 0.5
    assert psnr(x, x).tolist() == [100.0, 100.0]  # identical chips are capped, not infinite
    assert psnr(x + 0.1, x) == pytest.approx(torch.tensor([20.0, 20.0]), abs=1e-3)  # MSE 0.01 -> 20 dB
    assert psnr(x + 0.01, x)[0] == pytest.approx(40.0, abs=1e-3)


def test_ssim_properties():
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 32, 32, generator=gen)
    assert ssim(x, x) == pytest.approx(torch.ones(2), abs=1e-5)
    noisy = (x + 0.2 * torch.randn(x.shape, generator=gen)).clamp(0, 1)
    slightly = (x + 0.02 * torch.randn(x.shape, generator=gen)).clamp(0, 1)
    s_noisy, s_slight = ssim(noisy, x), ssim(slightly, x)
    assert torch.all(s_noisy < s_slight) and torch.all(s_slight < 1) and torch.all(s_noisy > -1)
    assert ssim(noisy, x) == pytest.approx(ssim(x, noisy), abs=1e-6)  # symmetric
    # a brightness shift keeps the structure: SSIM stays far above that of noise
    assert torch.all(ssim((x * 0.9 + 0.05), x) > s_noisy)
    # chips smaller than the 11 px window still work
    assert ssim(x[..., :6, :6], x[..., :6, :6]) == pytest.approx(torch.ones(2), abs=1e-5)


def test_degrade_removes_detail_only():
    flat = torch.full((1, 3, 16, 16), 0.7)
    assert torch.allclose(degrade(flat, 2), flat, atol=1e-6)  # nothing to lose
    checker = (torch.arange(16)[:, None] + torch.arange(16)[None, :]) % 2
    checker = checker.float().expand(1, 3, 16, 16)
    low = degrade(checker, 2)
    assert low.shape == checker.shape
    assert float(low.std()) < 0.05 < float(checker.std())  # a 1-px pattern cannot survive a 2x shrink
    assert torch.equal(degrade(checker, 1), checker)


# --- SUPERRESOLUTION end to end ------------------------------------------------------------------


def test_catalog_superresolution_is_a_real_model_type():
    info = lookup_model_type("superresolution")
    assert info.family == "translation" and info.formats == {"Export_Tiles"}
    assert resolve_backbone(info, None) == "RESNET34"
    assert parse_arguments(info, {"downsample_factor": "4"})["downsample_factor"] == 4


@pytest.fixture(scope="module")
def superres_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("superres")
    # 8 epochs: at 6 (chips no longer augmented from random weights) PSNR over bilinear missed its +0.3 dB bar
    # in 1/10 seeds and the valid loss fell by 4 % at worst (tests/learning_margins.py "superres")
    return train_and_package(
        tmp,
        write_export_tiles(tmp, n=24, size=32),
        "SUPERRESOLUTION",
        backbone_model="RESNET18",
        max_epochs=8,
        stop_training=False,
        learning_rate=0.01,
        freeze_model=False,
    )


@pytest.mark.slow
def test_superres_learns_beyond_bilinear_upsampling(superres_run):
    epochs = superres_run.epochs
    assert len(epochs) == 8
    assert epochs[-1]["train_loss"] < epochs[0]["train_loss"]
    assert epochs[-1]["valid_loss"] < epochs[0]["valid_loss"]
    best = superres_run.metrics
    assert 0 < best["PSNR"] < 100 and 0 < best["SSIM"] <= 1
    # the untrained net returns its bilinear input; the trained one restores edges the shrink blurred
    assert best["PSNR"] > best["PSNR_upsampled"] + 0.3
    assert best["SSIM"] > best["SSIM_upsampled"]
    # it says which feature loss it used
    assert any("feature loss" in t and "VGG16_BN" in t for t in superres_run.messages)


@pytest.mark.slow
def test_superres_package_emd(superres_run):
    assert {
        "model.emd",
        "model.pth",
        "model.pt",
        "GpjobsImageTranslator.py",
        "gpjobs_prf_core.py",
        "model_metrics.html",
        "ModelCharacteristics/loss_graph.png",
        "ModelCharacteristics/show_results.png",
    } <= superres_run.members
    emd = superres_run.packaged_json("model.emd")
    assert emd["ModelType"] == "SuperResolution" and emd["ModelName"] == "SuperResolution"
    assert emd["ModelConfiguration"] == "_superres"
    assert emd["ModelParameters"] == {"backbone": "resnet18", "backend": "pytorch", "downsample_factor": 2}
    assert emd["MetaDataMode"] == "Export_Tiles" and emd["ImageHeight"] == 32
    assert float(emd["PSNR"]) == pytest.approx(superres_run.metrics["PSNR"], rel=1e-3)  # a string, as arcgis writes it
    assert isinstance(emd["SSIM"], str) and 0 < float(emd["SSIM"]) <= 1


@pytest.mark.slow
def test_predict_upscales_low_resolution_chips_from_the_package_alone(superres_run, tmp_path):
    data = superres_run.validation_data("translation")
    import tifffile

    originals, lows = [], []
    for rec in data.valid.records:  # chips the model never trained on, shrunk 2x the way training did
        original = read_chip(rec.image)
        t = torch.from_numpy(original.astype(np.float32)).permute(2, 0, 1)[None]
        small = F.interpolate(t, scale_factor=0.5, mode="bilinear", antialias=True, align_corners=False)
        low = np.clip(np.rint(small[0].permute(1, 2, 0).numpy()), 0, 255).astype(np.uint8)
        path = tmp_path / f"{rec.image.stem}.tif"
        tifffile.imwrite(path, low)
        originals.append(original)
        lows.append(path)
    out = tmp_path / "out"
    lines = predict_json(superres_run.package, *lows, "--out-dir", out)
    assert len(lines) == len(lows)
    model_db, bilinear_db = [], []
    for line, original, low in zip(lines, originals, lows):
        assert line["translated"] == "SuperResolution" and line["size"] == [32, 32] and line["bands"] == 3
        written = tifffile.imread(line["output"])
        assert written.shape == (32, 32, 3) and written.dtype == np.uint8
        assert np.allclose(written.reshape(-1, 3).mean(0), line["band_mean"], atol=0.6)
        truth = torch.from_numpy(original.astype(np.float32) / 255).permute(2, 0, 1)[None]
        ours = torch.from_numpy(written.astype(np.float32) / 255).permute(2, 0, 1)[None]
        small = torch.from_numpy(tifffile.imread(low).astype(np.float32) / 255).permute(2, 0, 1)[None]
        plain = F.interpolate(small, size=(32, 32), mode="bilinear", align_corners=False)
        model_db.append(float(psnr(ours, truth)))
        bilinear_db.append(float(psnr(plain, truth)))
    assert np.mean(model_db) > np.mean(bilinear_db) + 0.3, (model_db, bilinear_db)
