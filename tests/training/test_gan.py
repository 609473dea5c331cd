"""PIX2PIX, CYCLEGAN and PIX2PIXHD train for real on tiny exports (multi-network hook); packages stand alone."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gpjobs.catalog import lookup_model_type, resolve_backbone
from gpjobs.export import read_chip
from gpjobs.training.models.image_quality import psnr
from tests.builders.exports import write_cyclegan, write_pix2pix
from tests.training.helpers import gpjobs, predict_json, train_and_package

torch.set_num_threads(1)


def test_gan_model_types_have_no_backbone():
    for name in ("PIX2PIX", "CYCLEGAN", "PIX2PIXHD"):
        info = lookup_model_type(name)
        assert info.family == "gan" and info.backbones == ()
        assert resolve_backbone(info, None) == "" and resolve_backbone(info, "RESNET34") == ""
    assert lookup_model_type("PIX2PIX").formats == {"Pix2Pix"}
    assert lookup_model_type("CYCLEGAN").formats == {"CycleGAN"}


# --- PIX2PIX ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pix2pix_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("pix2pix")
    return train_and_package(
        tmp,
        write_pix2pix(tmp, n=16, size=32),
        "PIX2PIX",
        max_epochs=20,
        stop_training=False,
        learning_rate=0.002,
        arguments={"n_gen_filters": 16, "n_dscr_filters": 16, "perceptual_loss": True},
    )


def _identity_psnr(run) -> tuple[list, float]:
    """Validation records and the PSNR of leaving the input as it is (the baseline a model must beat)."""
    data = run.validation_data("translation")
    records = data.valid.records
    values = [
        float(
            psnr(
                torch.from_numpy(read_chip(r.image) / 255.0).permute(2, 0, 1)[None],
                torch.from_numpy(read_chip(r.image2) / 255.0).permute(2, 0, 1)[None],
            )
        )
        for r in records
    ]
    return records, float(np.mean(values))


@pytest.mark.slow
def test_pix2pix_learns_the_translation(pix2pix_run):
    epochs = pix2pix_run.epochs
    assert len(epochs) == 20
    assert epochs[-1]["train_loss"] < epochs[0]["train_loss"] / 2
    assert epochs[-1]["valid_loss"] < epochs[0]["valid_loss"] / 2
    best = pix2pix_run.metrics
    _, baseline = _identity_psnr(pix2pix_run)
    assert 0 < best["SSIM"] <= 1
    assert best["PSNR"] > baseline + 1.0, (best, baseline)  # brighter squares were learned, not copied
    history = pix2pix_run.packaged_json("training_log.json")["history"]
    assert {"train_d", "train_g_gan", "train_l1"} <= set(history[0])  # both networks' losses are recorded
    texts = pix2pix_run.messages
    assert any("perceptual_loss=true needs VGG16_BN" in t for t in texts)
    assert not any("freeze_model" in t for t in texts)  # nothing to freeze, nothing to warn about


@pytest.mark.slow
def test_pix2pix_package(pix2pix_run):
    assert {
        "model.emd",
        "model.pth",
        "model.pt",
        "GpjobsImageTranslator.py",
        "gpjobs_prf_core.py",
        "ModelCharacteristics/show_results.png",
        "ModelCharacteristics/loss_graph.png",
    } <= pix2pix_run.members
    emd = pix2pix_run.packaged_json("model.emd")
    assert emd["ModelType"] == "Pix2Pix" and emd["ModelName"] == "Pix2Pix" and emd["ModelConfiguration"] == "_pix2pix"
    assert emd["ModelParameters"] == {
        "backend": "pytorch",
        "n_gen_filters": 16,
        "n_dscr_filters": 16,
        "perceptual_loss": True,
        "lambda_l1": 100.0,
    }
    assert emd["MetaDataMode"] == "Pix2Pix" and emd["backbone"] == ""
    assert float(emd["PSNR"]) == pytest.approx(pix2pix_run.metrics["PSNR"], rel=1e-3)
    assert "FID" not in emd  # no Inception weights offline: not reported rather than faked


@pytest.mark.slow
def test_pix2pix_predict_from_package_alone(pix2pix_run, tmp_path):
    records, baseline = _identity_psnr(pix2pix_run)
    lines = predict_json(pix2pix_run.package, *(r.image for r in records), "--out-dir", tmp_path / "out")
    import tifffile

    scores = []
    for line, rec in zip(lines, records):
        written = tifffile.imread(line["output"])
        assert line["translated"] == "Pix2Pix" and written.shape == (32, 32, 3) and written.dtype == np.uint8
        scores.append(
            float(
                psnr(
                    torch.from_numpy(written / 255.0).permute(2, 0, 1)[None],
                    torch.from_numpy(read_chip(rec.image2) / 255.0).permute(2, 0, 1)[None],
                )
            )
        )
    # the same quality as validation measured (rounding to 8 bits costs a little), well above copying
    assert np.mean(scores) == pytest.approx(pix2pix_run.metrics["PSNR"], abs=0.5)
    assert np.mean(scores) > baseline + 1.0


# --- CYCLEGAN --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cyclegan_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cyclegan")
    return train_and_package(
        tmp,
        write_cyclegan(tmp, n=16, size=32),
        "CYCLEGAN",
        backbone_model="RESNET34",
        max_epochs=8,
        stop_training=False,
        learning_rate=0.002,
        arguments={"gen_blocks": 2, "n_gen_filters": 8, "n_dscr_filters": 8},
    )


@pytest.mark.slow
def test_cyclegan_learns_cycle_consistency(cyclegan_run):
    epochs = cyclegan_run.epochs
    assert len(epochs) == 8
    assert epochs[-1]["valid_loss"] < epochs[0]["valid_loss"] / 2
    best = cyclegan_run.metrics
    for side in ("A", "B"):
        assert 15 < best[f"PSNR_cycle_{side}"] < 100 and 0 < best[f"SSIM_cycle_{side}"] <= 1
    history = cyclegan_run.packaged_json("training_log.json")["history"]
    assert {"train_d_a", "train_d_b", "train_cycle", "train_identity", "train_g_gan"} <= set(history[0])
    assert history[-1]["train_cycle"] < history[0]["train_cycle"]
    assert any("backbone_model RESNET34 is ignored" in t for t in cyclegan_run.messages)


@pytest.mark.slow
def test_cyclegan_package_and_predict(cyclegan_run, tmp_path):
    emd = cyclegan_run.packaged_json("model.emd")
    assert emd["ModelType"] == "CycleGAN" and emd["ModelConfiguration"] == "_cyclegan"
    assert emd["SupportsVariableTileSize"] is True and emd["n_channel_rev"] == 3
    assert emd["ModelParameters"]["gen_blocks"] == 2 and emd["ModelParameters"]["lsgan"] is True
    assert float(emd["PSNR_cycle_A"]) == pytest.approx(cyclegan_run.metrics["PSNR_cycle_A"], rel=1e-3)
    chips = sorted((cyclegan_run.folder / "A" / "images").iterdir())[:2]
    done = gpjobs("predict", cyclegan_run.package, *map(str, chips))
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == 2 and all("CycleGAN 32x32x3, band means" in line for line in lines)


# --- PIX2PIXHD -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pix2pixhd_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("pix2pixhd")
    return train_and_package(
        tmp,
        write_pix2pix(tmp, n=16, size=32),
        "PIX2PIXHD",
        max_epochs=20,
        stop_training=False,
        learning_rate=0.002,
        arguments={
            "n_gen_filters": 8,
            "n_dscr_filters": 8,
            "n_blocks_global": 2,
            "n_blocks_local": 1,
            "n_layers_dscr": 2,
        },
    )


@pytest.mark.slow
def test_pix2pixhd_learns_with_feature_matching(pix2pixhd_run):
    epochs = pix2pixhd_run.epochs
    assert epochs[-1]["valid_loss"] < epochs[0]["valid_loss"] / 2
    best = pix2pixhd_run.metrics
    _, baseline = _identity_psnr(pix2pixhd_run)
    assert best["PSNR"] > baseline + 1.0 and 0 < best["SSIM"] <= 1
    history = pix2pixhd_run.packaged_json("training_log.json")["history"]
    assert {"train_d", "train_g_gan", "train_feat"} <= set(history[0]) and "train_l1" not in history[0]
    texts = pix2pixhd_run.messages
    assert any("vgg_loss=true needs VGG19" in t for t in texts)
    assert any("n_downsample_global 4 is too deep for 32 px chips; using 2" in t for t in texts)


@pytest.mark.slow
def test_pix2pixhd_package_reloads_and_predicts(pix2pixhd_run):
    from gpjobs.training.package import load_model, open_package

    emd = pix2pixhd_run.packaged_json("model.emd")
    assert emd["ModelType"] == "Pix2PixHD" and emd["ModelConfiguration"] == "_pix2pix_hd"
    assert emd["ModelParameters"]["gen_network"] == "local" and emd["TorchScriptFile"] == "model.pt"
    records, _ = _identity_psnr(pix2pixhd_run)
    data = pix2pixhd_run.validation_data("translation")
    images = torch.stack([data.valid[i][0] for i in range(len(records))])
    with open_package(pix2pixhd_run.package) as package:
        family, model = load_model(package)
        predictions = family.predict(model, images)
    scores = [
        float(
            psnr(
                torch.from_numpy(p["_image"] / 255.0).permute(2, 0, 1)[None].float(),
                torch.from_numpy(read_chip(r.image2) / 255.0).permute(2, 0, 1)[None].float(),
            )
        )
        for p, r in zip(predictions, records)
    ]
    assert np.mean(scores) == pytest.approx(pix2pixhd_run.metrics["PSNR"], abs=0.05)  # the package is the best epoch


@pytest.mark.slow
def test_pix2pix_on_multispectral_uint16_keeps_band_units(tmp_path):
    from gpjobs.training.package import load_model, open_package

    folder = write_pix2pix(tmp_path, n=8, size=32, bands=4, dtype="uint16")
    run = train_and_package(
        tmp_path,
        folder,
        "PIX2PIX",
        max_epochs=2,
        learning_rate=0.002,
        arguments={"n_gen_filters": 8, "n_dscr_filters": 8},
    )
    emd = run.packaged_json("model.emd")
    assert emd["IsImageNetNormalization"] is False and len(emd["ExtractBands"]) == 4
    lo, hi = emd["NormalizationStats"]["band_min_values"], emd["NormalizationStats"]["band_max_values"]
    data = run.validation_data("translation")
    with open_package(run.package) as package:
        family, model = load_model(package)
        image = family.predict(model, data.valid[0][0][None])[0]["_image"]
    assert image.shape == (32, 32, 4)
    assert np.all(image.reshape(-1, 4).min(0) >= np.array(lo) - 1e-3)
    assert np.all(image.reshape(-1, 4).max(0) <= np.array(hi) + 1e-3)
