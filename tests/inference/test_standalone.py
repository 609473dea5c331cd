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


def _standalone(python: Path, jobs: list[tuple[Path, dict, dict]], tmp: Path, name: str) -> list[dict]:
    """Run each (folder, blocks, arguments) job in one fresh `python -I` (gpjobs refused at import)."""
    listed = []
    for i, (folder, blocks, arguments) in enumerate(jobs):
        np.savez(tmp / f"{name}{i}_in.npz", **blocks)
        listed.append([str(folder), str(tmp / f"{name}{i}_in.npz"), arguments, str(tmp / f"{name}{i}_out.npz")])
    (tmp / f"{name}.json").write_text(json.dumps(listed))
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    done = subprocess.run([str(python), "-I", str(SCRIPT), str(tmp / f"{name}.json")], cwd=tmp,
                          capture_output=True, text=True, timeout=600, env={**env, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    results = []
    for job in listed:
        with np.load(job[3]) as result:
            results.append({k: result[k] for k in result.files})
    return results


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
def standalone(trained, tmp_path_factory) -> dict:
    """Every kind's package unzipped, its blocks, the host's output, and the PRFs run standalone on our torch
    (one interpreter for all)."""
    tmp = tmp_path_factory.mktemp("standalone")
    runs: dict[str, dict] = {}
    for model_type in KINDS:
        run = trained(model_type)
        here = tmp / model_type.lower()
        here.mkdir()
        blocks, rasters = _blocks(run, model_type, here)
        host = None
        if rasters:
            suffix = ".tif" if model_type not in DETECTORS else ".geojson"
            host = run_inference(run["package"], rasters, here / f"host{suffix}",
                                 arguments=_arguments(model_type)).output
        runs[model_type] = {"folder": _unzip(run["package"], here / "package"), "blocks": blocks, "host": host}
    jobs = [(r["folder"], r["blocks"], _arguments(t)) for t, r in runs.items()]
    for r, result in zip(runs.values(), _standalone(Path(sys.executable), jobs, tmp, "ours")):
        r["ours"] = result
    return {"runs": runs, "tmp": tmp, "jobs": jobs}


@pytest.fixture(scope="module")
def on_torch20(standalone) -> dict:
    if not TORCH20.is_file():
        pytest.skip(f"no torch 2.0.1 interpreter at {TORCH20} (make client-tools installs .venv-torch20)")
    results = _standalone(TORCH20, standalone["jobs"], standalone["tmp"], "torch20")
    return dict(zip(standalone["runs"], results))


@pytest.mark.parametrize("model_type", KINDS)
def test_prf_runs_without_gpjobs_and_gives_the_hosts_answer(standalone, model_type):
    run = standalone["runs"][model_type]
    folder, ours, host = run["folder"], run["ours"], run["host"]
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
def test_prf_runs_on_torch_2_0(standalone, on_torch20, model_type):
    old, ours = on_torch20[model_type], standalone["runs"][model_type]["ours"]
    assert str(old["torch"]).startswith("2.0.")
    _same(old, ours, pixel_tolerance=1.0 if model_type in ("PIX2PIX", "SUPERRESOLUTION") else 0.0)
