"""Tiling without seams, and bad input that gets a clear error instead of a crash."""

from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch

from gpjobs.cli import main as gpjobs_main
from gpjobs.inference.host import InferenceError, run_inference
from tests.inference.conftest import chip_paths, read_chips, write_mosaic

pytestmark = pytest.mark.slow  # every test runs a trained UNET package (trained once a session)


@pytest.fixture(scope="module")
def unet(trained, tmp_path_factory):
    """The trained UNET package unzipped, and a 3 x 3 chip raster cropped to an uneven size."""
    run = trained("UNET")
    tmp = tmp_path_factory.mktemp("tiles")
    folder = tmp / "package"
    with zipfile.ZipFile(run["package"]) as zf:
        zf.extractall(folder)
    chips = read_chips((chip_paths(run["folder"], 8) * 2)[:9])
    full = write_mosaic(tmp / "full.tif", chips, 3)
    with rasterio.open(full) as src:
        profile = {**src.profile, "width": src.width - 21, "height": src.height - 13}
        data = src.read()[:, : src.height - 13, : src.width - 21]
    raster = tmp / "raster.tif"
    with rasterio.open(raster, "w", **profile) as dst:
        dst.write(data)
    return {"folder": folder, "raster": raster, "emd": run["emd"], "package": run["package"], "tmp": tmp}


def _run(package, raster: Path, out: Path, **arguments) -> np.ndarray:
    run_inference(package, [raster], out, arguments=arguments)
    with rasterio.open(out) as ds:
        return ds.read(1)


def test_a_1x1_model_has_no_seams_at_any_padding(unet, tmp_path):
    """A network that looks at one pixel gives the same class everywhere whatever the tiling: any offset,
    crop or stitching mistake in the host or the PRF would show."""
    folder = tmp_path / "pointwise"
    shutil.copytree(unet["folder"], folder)
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, len(unet["emd"]["GpjobsInference"]["index_values"]), 1)
    torch.jit.trace(conv, torch.zeros(1, 3, 8, 8)).save(str(folder / "model.pt"))
    results = [
        _run(folder, unet["raster"], tmp_path / f"p{p}_b{b}.tif", padding=p, batch_size=b)
        for p, b in ((0, 1), (0, 4), (16, 4), (7, 2), (24, 1))
    ]
    for other in results[1:]:
        np.testing.assert_array_equal(results[0], other)
    # and it is the pointwise model applied to the whole raster at once
    with rasterio.open(unet["raster"]) as src:
        pixels = torch.from_numpy(src.read().astype(np.float32))
    mean = torch.tensor([0.485, 0.456, 0.406])[:, None, None]
    std = torch.tensor([0.229, 0.224, 0.225])[:, None, None]
    with torch.no_grad():
        index = conv(((pixels / 255 - mean) / std)[None])[0].argmax(0)
    values = np.asarray(unet["emd"]["GpjobsInference"]["index_values"])[index.numpy()]
    assert (values == results[0]).mean() > 0.999  # float32 normalisation order may flip a rare tie
    assert len(np.unique(results[0])) > 1


def test_padding_changes_only_pixels_near_tile_edges(unet, tmp_path):
    """A network that sees 3 pixels around each pixel (three 3x3 convolutions): with padding >= 3 every tile
    has the context it needs, so the stitched result is the network run over the whole raster at once; without
    padding, only the pixels within 3 of a tile edge can differ."""
    folder = tmp_path / "local"
    shutil.copytree(unet["folder"], folder)
    torch.manual_seed(1)
    k = len(unet["emd"]["GpjobsInference"]["index_values"])
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.Conv2d(8, 8, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.Conv2d(8, k, 3, padding=1),
    ).eval()
    torch.jit.trace(net, torch.zeros(1, 3, 8, 8)).save(str(folder / "model.pt"))
    plain = _run(folder, unet["raster"], tmp_path / "p0.tif", padding=0, batch_size=4)
    padded = _run(folder, unet["raster"], tmp_path / "p16.tif", padding=16, batch_size=4)
    with rasterio.open(unet["raster"]) as src:
        raw = np.pad(src.read(), ((0, 0), (16, 16), (16, 16)))  # outside the raster the host reads zeros
    mean = torch.tensor([0.485, 0.456, 0.406])[:, None, None]
    std = torch.tensor([0.229, 0.224, 0.225])[:, None, None]
    with torch.no_grad():
        scores = net(((torch.from_numpy(raw.astype(np.float32)) / 255 - mean) / std)[None])[0]
    whole = np.asarray(unet["emd"]["GpjobsInference"]["index_values"])[scores.argmax(0).numpy()][16:-16, 16:-16]
    assert len(np.unique(whole)) > 1
    assert (padded == whole).mean() > 0.999  # float rounding may flip a rare near-tie
    tile = unet["emd"]["ImageHeight"]
    rows, cols = np.indices(plain.shape)
    edge = np.minimum(np.minimum(rows % tile, tile - 1 - rows % tile), np.minimum(cols % tile, tile - 1 - cols % tile))
    differ = (plain != whole) & (edge >= 3)
    assert differ.mean() < 0.001, f"{int(differ.sum())} pixels differ away from tile edges"
    assert (plain != whole)[edge < 3].any()  # where the context is missing, padding 0 does differ


def test_wrong_band_count_is_named(unet, tmp_path):
    one_band = write_mosaic(tmp_path / "gray.tif", [np.zeros((64, 64, 1), np.uint8)], 1)
    with pytest.raises(InferenceError, match=r"gray.tif has 1 band\(s\) but the model reads bands \[1, 2, 3\]"):
        run_inference(unet["package"], [one_band], tmp_path / "out.tif")


def test_wrong_pixel_type_is_named(unet, tmp_path):
    wide = write_mosaic(tmp_path / "wide.tif", [np.full((64, 64, 3), 300, np.uint16)], 1)
    with pytest.raises(
        InferenceError,
        match=r"16-bit unsigned \(uint16\) but the model was trained on "
        r"8-bit unsigned \(uint8\)",
    ):
        run_inference(unet["package"], [wide], tmp_path / "out.tif")
    assert not (tmp_path / "out.tif").exists()  # no half-written result left behind


def test_package_without_its_raster_function_is_named(unet, tmp_path):
    folder = tmp_path / "incomplete"
    shutil.copytree(unet["folder"], folder)
    (folder / "GpjobsPixelClassifier.py").unlink()
    with pytest.raises(InferenceError, match="InferenceFunction GpjobsPixelClassifier.py is not in the package"):
        run_inference(folder, [unet["raster"]], tmp_path / "out.tif")
    (folder / "GpjobsPixelClassifier.py").write_text("import gpjobs_not_here\n")
    with pytest.raises(InferenceError, match="GpjobsPixelClassifier.py could not be loaded: ModuleNotFoundError"):
        run_inference(folder, [unet["raster"]], tmp_path / "out.tif")


def test_bad_arguments_are_named(unet, tmp_path):
    with pytest.raises(
        InferenceError,
        match=r"unknown model argument\(s\) treshold; this model takes: batch_size, "
        "padding, predict_background, tile_size",
    ):
        run_inference(unet["package"], [unet["raster"]], tmp_path / "out.tif", arguments={"treshold": 0.3})
    with pytest.raises(InferenceError, match="padding 40 leaves nothing of a 64-pixel tile; use 0 to 31"):
        run_inference(unet["package"], [unet["raster"]], tmp_path / "out.tif", arguments={"padding": 40})
    with pytest.raises(InferenceError, match="takes 1 raster"):
        run_inference(unet["package"], [unet["raster"], unet["raster"]], tmp_path / "out.tif")


def test_cli_reports_errors_without_a_traceback_and_runs(unet, tmp_path, capsys):
    gray = write_mosaic(tmp_path / "gray.tif", [np.zeros((64, 64, 1), np.uint8)], 1)
    assert gpjobs_main(["infer", str(unet["package"]), str(gray), "--out", str(tmp_path / "x.tif")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("gpjobs infer: gray.tif has 1 band(s)") and "Traceback" not in err
    out = tmp_path / "classes.tif"
    assert (
        gpjobs_main(
            [
                "infer",
                str(unet["package"]),
                str(unet["raster"]),
                "--out",
                str(out),
                "--arguments",
                json.dumps({"padding": 8, "batch_size": 2}),
            ]
        )
        == 0
    )
    captured = capsys.readouterr()
    assert "blocks" in captured.err and f"{out}: pixels from" in captured.out
    with rasterio.open(out) as ds, rasterio.open(unet["raster"]) as src:
        assert (ds.width, ds.height, ds.transform) == (src.width, src.height, src.transform)
