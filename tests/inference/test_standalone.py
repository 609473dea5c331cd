"""The package stands alone: unzipped into an empty folder, each kind of raster function loads and runs with only
the standard library, numpy and torch importable, on our torch and on torch 2.0.1 (ArcGIS Pro's generation),
and both give the answers the host gives."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import rasterio

from gpjobs.inference.host import run_inference
from tests.inference.conftest import chip_paths, read_chips, write_mosaic

REPO = Path(__file__).resolve().parents[2]
SCRIPT = Path(__file__).with_name("standalone_prf.py")
TORCH20 = Path(os.environ.get("GPJOBS_TORCH20_PYTHON", REPO / ".venv-torch20" / "bin" / "python"))
KINDS = ["UNET", "SSD", "FASTERRCNN", "MASKRCNN", "FEATURE_CLASSIFIER", "PIX2PIX", "SUPERRESOLUTION",
         "CHANGEDETECTOR"]  # every PRF, and every detector decoder but the cheap retinanet one
DETECTORS = {"SSD", "FASTERRCNN", "MASKRCNN"}


def _arguments(model_type: str) -> dict:
    """One block per 2 x 2 chips; detectors keep every detection their decoder gives."""
    return {"padding": 0, "batch_size": 4, **({"threshold": 0.0} if model_type in DETECTORS else {})}


def _unzip(package: Path, folder: Path) -> Path:
    folder.mkdir()
    with zipfile.ZipFile(package) as zf:
        zf.extractall(folder)
    return folder


def _blocks(run: dict, model_type: str, tmp: Path) -> tuple[dict[str, np.ndarray], list[Path]]:
    """The pixel blocks of a 2 x 2 chip mosaic (one block at padding 0, batch 4), and the mosaic rasters."""
    arrays = read_chips(chip_paths(run["folder"], 4))
    if model_type == "SUPERRESOLUTION":
        factor = run["emd"]["GpjobsInference"]["upscale"]
        arrays = [a[::factor, ::factor] for a in arrays]
    if model_type == "FEATURE_CLASSIFIER":
        chips = sorted((run["folder"] / "images").rglob("*.tif"))[:4]
        return {"rasters_pixels": np.stack([a.transpose(2, 0, 1) for a in read_chips(chips)])}, []
    rasters = [write_mosaic(tmp / "before.tif", arrays, 2)]
    blocks = {"raster_pixels": rasterio.open(rasters[0]).read()}
    if model_type == "CHANGEDETECTOR":
        rasters.append(write_mosaic(tmp / "after.tif", read_chips(chip_paths(run["folder"], 4, "images2")), 2))
        blocks["raster2_pixels"] = rasterio.open(rasters[1]).read()
    return blocks, rasters


def _standalone(python: Path, folder: Path, blocks: dict, tmp: Path, name: str, arguments: dict) -> dict:
    np.savez(tmp / f"{name}_in.npz", **blocks)
    out = tmp / f"{name}_out.npz"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    done = subprocess.run([str(python), "-I", str(SCRIPT), str(folder), str(tmp / f"{name}_in.npz"),
                           json.dumps(arguments), str(out)], cwd=folder, capture_output=True, text=True,
                          timeout=300, env={**env, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    with np.load(out) as result:
        return {k: result[k] for k in result.files}


def _features(result: dict) -> list[tuple]:
    """(class, confidence, sorted ring points) per feature, in the block's pixel coordinates."""
    found = json.loads(str(result["features"]))["features"]
    return sorted((f["attributes"].get("Class") or f["attributes"].get("Label"), f["attributes"]["Confidence"],
                   np.asarray([p for ring in f["geometry"]["rings"] for p in ring], dtype=float))
                  for f in found) if found and "Class" in found[0]["attributes"] else \
        [(f["attributes"]["Label"], f["attributes"]["Confidence"], None) for f in found]


def _same(a: dict, b: dict, pixel_tolerance: float = 0.0) -> None:
    if "pixels" in a:
        assert a["pixels"].shape == b["pixels"].shape and a["pixels"].dtype == b["pixels"].dtype
        assert np.abs(a["pixels"].astype(np.float64) - b["pixels"]).max() <= pixel_tolerance
        return
    fa, fb = _features(a), _features(b)
    assert len(fa) == len(fb) > 0
    for (ca, sa, pa), (cb, sb, pb) in zip(fa, fb):
        assert ca == cb and sa == pytest.approx(sb, abs=0.05)
        if pa is not None:
            assert pa.shape == pb.shape and np.abs(pa - pb).max() <= 1.0


@pytest.fixture(scope="module")
def standalone_runs(trained, tmp_path_factory):
    """model_type -> (unzipped folder, blocks, standalone result on our torch, the host's output)."""
    cache: dict[str, tuple] = {}

    def get(model_type: str):
        if model_type not in cache:
            run = trained(model_type)
            tmp = tmp_path_factory.mktemp(f"alone_{model_type.lower()}")
            folder = _unzip(run["package"], tmp / "package")
            blocks, rasters = _blocks(run, model_type, tmp)
            ours = _standalone(Path(sys.executable), folder, blocks, tmp, "ours", _arguments(model_type))
            host = None
            if rasters:
                suffix = ".tif" if "pixels" in ours else ".geojson"
                host = run_inference(run["package"], rasters, tmp / f"host{suffix}",
                                     arguments=_arguments(model_type)).output
            cache[model_type] = (folder, blocks, ours, host, tmp)
        return cache[model_type]

    return get


@pytest.mark.parametrize("model_type", KINDS)
def test_prf_runs_without_gpjobs_and_gives_the_hosts_answer(standalone_runs, model_type):
    folder, blocks, ours, host, _ = standalone_runs(model_type)
    assert sorted(p.name for p in folder.glob("*.py")) == sorted(
        [json.loads(next(folder.glob("*.emd")).read_text())["InferenceFunction"], "gpjobs_prf_core.py"])
    if host is None:
        assert len(_features(ours)) == 4  # one label per object chip
        return
    if "pixels" in ours:
        expected = rasterio.open(host).read()
        np.testing.assert_array_equal(ours["pixels"], expected)
    else:
        features = json.loads(host.read_text())["features"]
        got = sorted((f["properties"]["Class"], round(f["properties"]["Confidence"], 3)) for f in features)
        assert got and got == sorted((c, round(s, 3)) for c, s, _ in _features(ours))


@pytest.mark.clients
@pytest.mark.parametrize("model_type", KINDS)
def test_prf_runs_on_torch_2_0(standalone_runs, model_type):
    if not TORCH20.is_file():
        pytest.skip(f"no torch 2.0.1 interpreter at {TORCH20} (make client-tools installs .venv-torch20)")
    folder, blocks, ours, _, tmp = standalone_runs(model_type)
    old = _standalone(TORCH20, folder, blocks, tmp, "torch20", _arguments(model_type))
    assert str(old["torch"]).startswith("2.0.")
    _same(old, ours, pixel_tolerance=1.0 if model_type in ("PIX2PIX", "SUPERRESOLUTION") else 0.0)
