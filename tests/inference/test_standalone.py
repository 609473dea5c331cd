"""The package stands alone: unzipped into an empty folder, each kind of raster function loads and runs with only
the standard library, numpy and torch importable, on our torch and on torch 2.0.1 (ArcGIS Pro's generation),
and both give the answers the host gives. So does the object tracker (SIAMMASK; not a raster function), which
tracks as `gpjobs predict` does."""

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
from tests.inference.conftest import chip_paths, predict_json, read_chips, write_mosaic

pytestmark = pytest.mark.slow  # trains and packages every kind of PRF, then runs them in fresh interpreters

REPO = Path(__file__).resolve().parents[2]
SCRIPT = Path(__file__).with_name("standalone_prf.py")
TORCH20 = Path(os.environ.get("GPJOBS_TORCH20_PYTHON", REPO / ".venv-torch20" / "bin" / "python"))
KINDS = [
    "UNET",
    "SSD",
    "FASTERRCNN",
    "MASKRCNN",
    "FEATURE_CLASSIFIER",
    "PIX2PIX",
    "SUPERRESOLUTION",
    "CHANGEDETECTOR",
    "MAXDEEPLAB",
    "IMAGECAPTIONER",
    "SIAMMASK",
    "DETREG",
    "MMDETECTION/cascade_rcnn",
]  # every PRF and detector decoder but the cheap retinanet one, and the tracker
DETECTORS = {"SSD", "FASTERRCNN", "MASKRCNN", "DETREG", "MMDETECTION/cascade_rcnn"}
OBJECTS = {"FEATURE_CLASSIFIER", "IMAGECAPTIONER"}  # Classify Objects: one chip per object


def _arguments(model_type: str) -> dict:
    """One block per 2 x 2 chips; detectors keep every detection their decoder gives."""
    if model_type in OBJECTS:
        return {"batch_size": 4}
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
    if model_type == "SIAMMASK":  # the frames of the first sequence
        frames = sorted(min((run["folder"] / "JPEGImages").iterdir()).glob("*.jpg"))
        return {"frames": np.stack(read_chips(frames))}, frames
    rasters = [write_mosaic(tmp / "before.tif", arrays, 2)]
    if model_type == "IMAGECAPTIONER":  # the mosaic's four chips are the objects (the host's default regions)
        return {"rasters_pixels": np.stack([a.transpose(2, 0, 1) for a in arrays])}, rasters
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
    done = subprocess.run(
        [str(python), "-I", str(SCRIPT), str(tmp / f"{name}.json")],
        cwd=tmp,
        capture_output=True,
        text=True,
        timeout=600,
        env={**env, "OMP_NUM_THREADS": "1"},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    results = []
    for job in listed:
        with np.load(job[3]) as result:
            results.append({k: result[k] for k in result.files})
    return results


def _label(attributes: dict) -> tuple[str, float]:
    """(class, label or caption; confidence or caption score) of a feature's attributes."""
    text = attributes.get("Class") or attributes.get("Label") or attributes.get("Caption", "")
    return text, attributes["Confidence"] if "Confidence" in attributes else attributes["Score"]


def _features(result: dict) -> list[tuple]:
    """(class, confidence, sorted ring points) per detected feature, in the block's pixel coordinates; objects
    (one per chip) keep their order and no points."""
    found = json.loads(str(result["features"]))["features"]
    return (
        sorted(
            (*_label(f["attributes"]), np.asarray([p for ring in f["geometry"]["rings"] for p in ring], dtype=float))
            for f in found
        )
        if found and "Class" in found[0]["attributes"]
        else [(*_label(f["attributes"]), None) for f in found]
    )


def _same_track(
    a: dict,
    boxes: np.ndarray,
    scores: np.ndarray,
    pixels: np.ndarray,
    box_tolerance: float,
    pixel_tolerance: float = 0.0,
) -> None:
    """Tracker results `a` (per frame after the first: box [x, y, w, h], score, mask pixels) against expected."""
    assert a["boxes"].shape == boxes.shape and len(boxes) > 0
    assert np.abs(a["boxes"] - boxes).max() <= box_tolerance
    assert np.abs(a["scores"] - scores).max() <= 1e-4
    assert np.abs(a["mask_pixels"] - pixels).max() <= pixel_tolerance * pixels.max()


def _same(a: dict, b: dict, pixel_tolerance: float = 0.0) -> None:
    if "boxes" in a:
        _same_track(a, b["boxes"], b["scores"], b["mask_pixels"], box_tolerance=0.05, pixel_tolerance=0.01)
        return
    if "pixels" in a:
        assert a["pixels"].shape == b["pixels"].shape and a["pixels"].dtype == b["pixels"].dtype
        assert np.abs(a["pixels"].astype(np.float64) - b["pixels"]).max() <= pixel_tolerance
    if "features" not in a:
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
        here = tmp / model_type.lower().replace("/", "_")
        here.mkdir()
        blocks, rasters = _blocks(run, model_type, here)
        arguments = _arguments(model_type)
        host = {}
        if model_type == "SIAMMASK":  # gpjobs predict tracks the first annotated object through the frames
            host["tracked"] = predict_json(run["package"], rasters)
            x0, y0, x1, y1 = host["tracked"][0]["box"]
            arguments = {"first_box": [x0, y0, x1 - x0, y1 - y0]}
        elif rasters:
            suffixes = [".geojson"] if model_type in DETECTORS | OBJECTS else [".tif"]
            if model_type == "MAXDEEPLAB":  # panoptic: Classify Pixels and Detect Objects
                suffixes = [".tif", ".geojson"]
            for suffix in suffixes:
                host[suffix] = run_inference(
                    run["package"], rasters, here / f"host{suffix}", arguments=arguments
                ).output
        runs[model_type] = {
            "folder": _unzip(run["package"], here / "package"),
            "blocks": blocks,
            "host": host,
            "arguments": arguments,
        }
    jobs = [(r["folder"], r["blocks"], r["arguments"]) for r in runs.values()]
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
        [json.loads(next(folder.glob("*.emd")).read_text())["InferenceFunction"], "gpjobs_prf_core.py"]
    )
    if model_type == "SIAMMASK":  # predict's boxes (x0, y0, x1, y1, rounded to 0.01) for the frames after the first
        tracked = host["tracked"][1:]
        boxes = np.asarray([[x0, y0, x1 - x0, y1 - y0] for x0, y0, x1, y1 in (t["box"] for t in tracked)])
        _same_track(
            ours,
            boxes,
            np.asarray([t["score"] for t in tracked]),
            np.asarray([t["mask_pixels"] for t in tracked]),
            box_tolerance=0.02,
        )
        return
    if not host:
        assert len(_features(ours)) == 4  # one label per object chip
        return
    if ".tif" in host:
        np.testing.assert_array_equal(ours["pixels"], rasterio.open(host[".tif"]).read())
    if ".geojson" in host:
        features = json.loads(host[".geojson"].read_text())["features"]
        got = [(*_label(f["properties"]),) for f in features]
        ours_features = [(c, s) for c, s, _ in _features(ours)]
        if model_type not in OBJECTS:  # detections: in any order; objects: one per chip, in order
            got, ours_features = sorted(got), sorted(ours_features)
        assert got and [(c, round(s, 3)) for c, s in got] == [(c, round(s, 3)) for c, s in ours_features]


@pytest.mark.clients
@pytest.mark.parametrize("model_type", KINDS)
def test_prf_runs_on_torch_2_0(standalone, on_torch20, model_type):
    old, ours = on_torch20[model_type], standalone["runs"][model_type]["ours"]
    assert str(old["torch"]).startswith("2.0.")
    _same(old, ours, pixel_tolerance=1.0 if model_type in ("PIX2PIX", "SUPERRESOLUTION") else 0.0)
