"""PIX2PIX, CYCLEGAN and PIX2PIXHD train for real on tiny exports (multi-network hook); packages stand alone."""

from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest
import torch

from gpjobs.catalog import lookup_model_type, resolve_backbone
from gpjobs.export import read_chip
from gpjobs.training.data import open_training_data
from gpjobs.training.models.image_quality import psnr
from gpjobs.training.protocol import ExitCode
from tests.builders.exports import write_cyclegan, write_pix2pix
from tests.training.helpers import dlpk_members, epochs_of, gpjobs, make_spec, result_of, train

torch.set_num_threads(1)


def _messages(reporter) -> list[str]:
    return [e["text"] for e in reporter.events if e["type"] == "message"]


def _training_log(package: str) -> dict:
    with zipfile.ZipFile(package) as zf:
        return json.loads(zf.read("training_log.json"))


def _emd(package: str) -> dict:
    with zipfile.ZipFile(package) as zf:
        return json.loads(zf.read("model.emd"))


def test_gan_model_types_have_no_backbone():
    for name in ("PIX2PIX", "CYCLEGAN", "PIX2PIXHD"):
        info = lookup_model_type(name)
        assert info.implemented and info.family == "gan" and info.backbones == ()
        assert resolve_backbone(info, None) == "" and resolve_backbone(info, "RESNET34") == ""
    assert lookup_model_type("PIX2PIX").formats == {"Pix2Pix"}
    assert lookup_model_type("CYCLEGAN").formats == {"CycleGAN"}


# --- PIX2PIX ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pix2pix_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("pix2pix")
    folder = write_pix2pix(tmp, n=16, size=32)
    spec = make_spec(tmp, [folder], "PIX2PIX", max_epochs=20, stop_training=False, learning_rate=0.002,
                     arguments={"n_gen_filters": 16, "n_dscr_filters": 16, "perceptual_loss": True})
    code, reporter = train(spec)
    assert code == ExitCode.OK, [e for e in reporter.events if e["type"] in ("failed", "message")]
    return spec, folder, reporter


def _identity_psnr(folder, spec) -> tuple[list, float]:
    """Validation records and the PSNR of leaving the input as it is (the baseline a model must beat)."""
    data = open_training_data([folder], task="translation", validation_percent=spec.validation_percent, seed=42,
                              augment=False)
    records = data.valid.records
    values = [float(psnr(torch.from_numpy(read_chip(r.image) / 255.0).permute(2, 0, 1)[None],
                         torch.from_numpy(read_chip(r.image2) / 255.0).permute(2, 0, 1)[None])) for r in records]
    return records, float(np.mean(values))


def test_pix2pix_learns_the_translation(pix2pix_run):
    spec, folder, reporter = pix2pix_run
    epochs = epochs_of(reporter)
    assert len(epochs) == 20
    assert epochs[-1]["train_loss"] < epochs[0]["train_loss"] / 2
    assert epochs[-1]["valid_loss"] < epochs[0]["valid_loss"] / 2
    best = result_of(reporter)["metrics"]
    _, baseline = _identity_psnr(folder, spec)
    assert 0 < best["SSIM"] <= 1
    assert best["PSNR"] > baseline + 1.0, (best, baseline)  # brighter squares were learned, not copied
    history = _training_log(result_of(reporter)["package"])["history"]
    assert {"train_d", "train_g_gan", "train_l1"} <= set(history[0])  # both networks' losses are recorded
    texts = _messages(reporter)
    assert any("perceptual_loss=true needs VGG16_BN" in t for t in texts)
    assert not any("freeze_model" in t for t in texts)  # nothing to freeze, nothing to warn about


def test_pix2pix_package(pix2pix_run):
    _, _, reporter = pix2pix_run
    result = result_of(reporter)
    assert {"model.emd", "model.pth", "model.pt", "GpjobsImageTranslator.py", "gpjobs_prf_core.py",
            "ModelCharacteristics/show_results.png",
            "ModelCharacteristics/loss_graph.png"} <= dlpk_members(result["package"])
    emd = _emd(result["package"])
    assert emd["ModelType"] == "Pix2Pix" and emd["ModelName"] == "Pix2Pix" and emd["ModelConfiguration"] == "_pix2pix"
    assert emd["ModelParameters"] == {"backend": "pytorch", "n_gen_filters": 16, "n_dscr_filters": 16,
                                      "perceptual_loss": True, "lambda_l1": 100.0}
    assert emd["MetaDataMode"] == "Pix2Pix" and emd["backbone"] == ""
    assert float(emd["PSNR"]) == pytest.approx(result["metrics"]["PSNR"], rel=1e-3)
    assert "FID" not in emd  # no Inception weights offline: not reported rather than faked


def test_pix2pix_predict_from_package_alone(pix2pix_run, tmp_path):
    spec, folder, reporter = pix2pix_run
    records, baseline = _identity_psnr(folder, spec)
    out = tmp_path / "out"
    done = gpjobs("predict", result_of(reporter)["package"], *(str(r.image) for r in records), "--json",
                  "--out-dir", str(out))
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    import tifffile

    scores = []
    for line, rec in zip(lines, records):
        written = tifffile.imread(line["output"])
        assert line["translated"] == "Pix2Pix" and written.shape == (32, 32, 3) and written.dtype == np.uint8
        scores.append(float(psnr(torch.from_numpy(written / 255.0).permute(2, 0, 1)[None],
                                 torch.from_numpy(read_chip(rec.image2) / 255.0).permute(2, 0, 1)[None])))
    # the same quality as validation measured (rounding to 8 bits costs a little), well above copying
    assert np.mean(scores) == pytest.approx(result_of(reporter)["metrics"]["PSNR"], abs=0.5)
    assert np.mean(scores) > baseline + 1.0


# --- CYCLEGAN --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cyclegan_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cyclegan")
    folder = write_cyclegan(tmp, n=16, size=32)
    spec = make_spec(tmp, [folder], "CYCLEGAN", backbone_model="RESNET34", max_epochs=8, stop_training=False,
                     learning_rate=0.002, arguments={"gen_blocks": 2, "n_gen_filters": 8, "n_dscr_filters": 8})
    code, reporter = train(spec)
    assert code == ExitCode.OK, [e for e in reporter.events if e["type"] in ("failed", "message")]
    return spec, folder, reporter


def test_cyclegan_learns_cycle_consistency(cyclegan_run):
    _, _, reporter = cyclegan_run
    epochs = epochs_of(reporter)
    assert len(epochs) == 8
    assert epochs[-1]["valid_loss"] < epochs[0]["valid_loss"] / 2
    best = result_of(reporter)["metrics"]
    for side in ("A", "B"):
        assert 15 < best[f"PSNR_cycle_{side}"] < 100 and 0 < best[f"SSIM_cycle_{side}"] <= 1
    history = _training_log(result_of(reporter)["package"])["history"]
    assert {"train_d_a", "train_d_b", "train_cycle", "train_identity", "train_g_gan"} <= set(history[0])
    assert history[-1]["train_cycle"] < history[0]["train_cycle"]
    assert any("backbone_model RESNET34 is ignored" in t for t in _messages(reporter))


def test_cyclegan_package_and_predict(cyclegan_run, tmp_path):
    _, folder, reporter = cyclegan_run
    result = result_of(reporter)
    emd = _emd(result["package"])
    assert emd["ModelType"] == "CycleGAN" and emd["ModelConfiguration"] == "_cyclegan"
    assert emd["SupportsVariableTileSize"] is True and emd["n_channel_rev"] == 3
    assert emd["ModelParameters"]["gen_blocks"] == 2 and emd["ModelParameters"]["lsgan"] is True
    assert float(emd["PSNR_cycle_A"]) == pytest.approx(result["metrics"]["PSNR_cycle_A"], rel=1e-3)
    chips = sorted((folder / "A" / "images").iterdir())[:2]
    done = gpjobs("predict", result["package"], *map(str, chips))
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == 2 and all("CycleGAN 32x32x3, band means" in line for line in lines)


# --- PIX2PIXHD -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pix2pixhd_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("pix2pixhd")
    folder = write_pix2pix(tmp, n=16, size=32)
    spec = make_spec(tmp, [folder], "PIX2PIXHD", max_epochs=20, stop_training=False, learning_rate=0.002,
                     arguments={"n_gen_filters": 8, "n_dscr_filters": 8, "n_blocks_global": 2, "n_blocks_local": 1,
                                "n_layers_dscr": 2})
    code, reporter = train(spec)
    assert code == ExitCode.OK, [e for e in reporter.events if e["type"] in ("failed", "message")]
    return spec, folder, reporter


def test_pix2pixhd_learns_with_feature_matching(pix2pixhd_run):
    spec, folder, reporter = pix2pixhd_run
    epochs = epochs_of(reporter)
    assert epochs[-1]["valid_loss"] < epochs[0]["valid_loss"] / 2
    best = result_of(reporter)["metrics"]
    _, baseline = _identity_psnr(folder, spec)
    assert best["PSNR"] > baseline + 1.0 and 0 < best["SSIM"] <= 1
    history = _training_log(result_of(reporter)["package"])["history"]
    assert {"train_d", "train_g_gan", "train_feat"} <= set(history[0]) and "train_l1" not in history[0]
    texts = _messages(reporter)
    assert any("vgg_loss=true needs VGG19" in t for t in texts)
    assert any("n_downsample_global 4 is too deep for 32 px chips; using 2" in t for t in texts)


def test_pix2pixhd_package_reloads_and_predicts(pix2pixhd_run):
    from gpjobs.training.package import load_model, open_package

    spec, folder, reporter = pix2pixhd_run
    result = result_of(reporter)
    emd = _emd(result["package"])
    assert emd["ModelType"] == "Pix2PixHD" and emd["ModelConfiguration"] == "_pix2pix_hd"
    assert emd["ModelParameters"]["gen_network"] == "local" and emd["TorchScriptFile"] == "model.pt"
    records, _ = _identity_psnr(folder, spec)
    data = open_training_data([folder], task="translation", validation_percent=spec.validation_percent, seed=42,
                              augment=False)
    images = torch.stack([data.valid[i][0] for i in range(len(records))])
    with open_package(result["package"]) as package:
        family, model = load_model(package)
        predictions = family.predict(model, images)
    scores = [float(psnr(torch.from_numpy(p["_image"] / 255.0).permute(2, 0, 1)[None].float(),
                         torch.from_numpy(read_chip(r.image2) / 255.0).permute(2, 0, 1)[None].float()))
              for p, r in zip(predictions, records)]
    assert np.mean(scores) == pytest.approx(result["metrics"]["PSNR"], abs=0.05)  # the package is the best epoch


def test_pix2pix_on_multispectral_uint16_keeps_band_units(tmp_path):
    from gpjobs.training.package import load_model, open_package

    folder = write_pix2pix(tmp_path, n=8, size=32, bands=4, dtype="uint16")
    spec = make_spec(tmp_path, [folder], "PIX2PIX", max_epochs=2, learning_rate=0.002,
                     arguments={"n_gen_filters": 8, "n_dscr_filters": 8})
    code, reporter = train(spec)
    assert code == ExitCode.OK, [e for e in reporter.events if e["type"] in ("failed", "message")]
    result = result_of(reporter)
    emd = _emd(result["package"])
    assert emd["IsImageNetNormalization"] is False and len(emd["ExtractBands"]) == 4
    lo, hi = emd["NormalizationStats"]["band_min_values"], emd["NormalizationStats"]["band_max_values"]
    data = open_training_data([folder], task="translation", validation_percent=25.0, seed=42, augment=False)
    with open_package(result["package"]) as package:
        family, model = load_model(package)
        image = family.predict(model, data.valid[0][0][None])[0]["_image"]
    assert image.shape == (32, 32, 4)
    assert np.all(image.reshape(-1, 4).min(0) >= np.array(lo) - 1e-3)
    assert np.all(image.reshape(-1, 4).max(0) <= np.array(hi) + 1e-3)
