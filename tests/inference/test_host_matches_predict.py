"""Same answers everywhere: every model type that trains, run by its package's raster function through the host
over a raster of several chips, gives what `gpjobs predict` gives on the same chips.

Pixel outputs: identical class values (translations: within one band unit). Detections: the same boxes (within a
pixel), classes and confidences after the PRF's threshold and NMS. MASKRCNN: the same instances, each outline
enclosing exactly the pixels of predict's mask. Object classification: the same label and confidence. MAXDEEPLAB:
the same class raster, and predict's instances as polygons. IMAGECAPTIONER: the same captions.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch

from gpjobs.inference.host import run_inference
from tests.inference.conftest import chip_paths, read_chips, write_mosaic

pytestmark = pytest.mark.slow  # every test runs packages trained for it (each trained once a session)

PIXEL_TYPES = [
    "UNET",
    "PSPNET",
    "DEEPLAB",
    "MMSEGMENTATION",
    "HED_EDGEDETECTOR",
    "BDCN_EDGEDETECTOR",
    "MULTITASK_ROADEXTRACTOR",
    "CONNECTNET",
    "MMSEGMENTATION/upernet",
    "MMSEGMENTATION/ocrnet",
]
BOX_TYPES = [
    "SSD",
    "RETINANET",
    "FASTERRCNN",
    "YOLOV3",
    "MMDETECTION",
    "DETREG",
    "MMDETECTION/fcos",
    "MMDETECTION/cascade_rcnn",
]
LABEL_TYPES = ["FEATURE_CLASSIFIER", "DEEPSORT"]
TRANSLATION_TYPES = ["PIX2PIX", "PIX2PIXHD", "CYCLEGAN"]


def predict(package: Path, chips: list[str], **kw) -> list[dict]:
    """`gpjobs predict --json` in-process (saves a torch import per call)."""
    from gpjobs.training.predict import run_predict

    args = argparse.Namespace(
        package=str(package),
        chips=chips,
        json=True,
        masks_dir=kw.get("masks_dir"),
        out_dir=kw.get("out_dir"),
        batch_size=4,
    )
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert run_predict(args) == 0
    return [json.loads(line) for line in out.getvalue().splitlines() if line.startswith("{")]


def _mosaic(tmp: Path, chips: list[Path], cols: int = 2, name: str = "mosaic.tif") -> tuple[Path, int]:
    arrays = read_chips(chips)
    return write_mosaic(tmp / name, arrays, cols), arrays[0].shape[0]


def _windows(raster: Path, size: int, count: int, cols: int = 2) -> list[np.ndarray]:
    with rasterio.open(raster) as ds:
        data = ds.read()
    return [
        data[:, (i // cols) * size : (i // cols + 1) * size, (i % cols) * size : (i % cols + 1) * size]
        for i in range(count)
    ]


@pytest.mark.parametrize("model_type", PIXEL_TYPES)
def test_pixel_classes_match_predict(trained, tmp_path, model_type):
    run = trained(model_type)
    chips = chip_paths(run["folder"], 4)
    raster, size = _mosaic(tmp_path, chips)
    out = tmp_path / "classes.tif"
    run_inference(run["package"], [raster], out, arguments={"padding": 0, "batch_size": 2})
    predict(run["package"], [str(c) for c in chips], masks_dir=str(tmp_path / "masks"))
    for chip, window in zip(chips, _windows(out, size, len(chips))):
        expected = np.asarray(rasterio.open(tmp_path / "masks" / f"{chip.stem}.tif").read(1))
        np.testing.assert_array_equal(window[0], expected, err_msg=chip.name)
    with rasterio.open(out) as result, rasterio.open(raster) as source:
        assert result.transform == source.transform and result.crs == source.crs
        assert result.count == 1 and result.dtypes[0] == "uint8" and result.nodata == 0
        names = json.loads(result.tags(1)["CLASSES"])
        assert set(names.values()) <= {c["Name"] for c in run["emd"]["Classes"]}
        colors = result.colormap(1)
        for c in run["emd"]["Classes"]:
            if str(c["Value"]) in names:
                assert colors[c["Value"]][:3] == tuple(c["Color"])
    assert "<GDALRasterAttributeTable" in (tmp_path / "classes.tif.aux.xml").read_text()


def _pixel_boxes(feature: dict, transform) -> tuple[float, float, float, float]:
    coords = feature["geometry"]["coordinates"][0]
    pts = [~transform @ (x, y) for x, y in coords]
    xs, ys = [p[0] for p in pts], [p[1] for p in pts]
    return min(xs), min(ys), max(xs), max(ys)


def _expected_detections(predictions: list[dict], threshold: float, overlap: float, size: int) -> list[tuple]:
    """predict's detections after the PRF's threshold and class-wise NMS, as (label, score, mosaic box)."""
    from torchvision.ops import batched_nms

    out = []
    for i, p in enumerate(predictions):
        keep = [j for j, s in enumerate(p["scores"]) if s >= threshold]
        if not keep:
            continue
        boxes = torch.tensor([p["boxes"][j] for j in keep], dtype=torch.float32)
        scores = torch.tensor([p["scores"][j] for j in keep], dtype=torch.float32)
        labels = torch.tensor([p["class_values"][j] for j in keep])
        dy, dx = (i // 2) * size, (i % 2) * size
        for j in batched_nms(boxes, scores, labels, overlap).tolist():
            x0, y0, x1, y1 = p["boxes"][keep[j]]
            out.append((p["labels"][keep[j]], p["scores"][keep[j]], (x0 + dx, y0 + dy, x1 + dx, y1 + dy)))
    return out


def _threshold(predictions: list[dict]) -> float:
    """A threshold that keeps about half the detections of a barely trained model, halfway between two scores
    (predict rounds its scores to 5 decimals; a threshold on a score would split hairs)."""
    scores = sorted({s for p in predictions for s in p["scores"]})
    assert scores, "the tiny model detects nothing at all: the comparison would be empty"
    if len(scores) == 1:
        return scores[0] / 2
    k = max(1, len(scores) // 2)
    return min(0.5, (scores[k - 1] + scores[k]) / 2)


@pytest.mark.parametrize("model_type", BOX_TYPES)
def test_boxes_match_predict(trained, tmp_path, model_type):
    run = trained(model_type)
    chips = chip_paths(run["folder"], 4)
    raster, size = _mosaic(tmp_path, chips)
    predictions = predict(run["package"], [str(c) for c in chips])
    threshold = _threshold(predictions)
    expected = _expected_detections(predictions, threshold, 0.1, size)
    out = tmp_path / "boxes.geojson"
    result = run_inference(
        run["package"],
        [raster],
        out,
        arguments={"padding": 0, "batch_size": 4, "threshold": threshold, "nms_overlap": 0.1},
    )
    found = json.loads(out.read_text())
    assert found["crs"]["properties"]["name"].endswith("32617")
    transform = rasterio.open(raster).transform
    got = [
        (f["properties"]["Class"], f["properties"]["Confidence"], _pixel_boxes(f, transform)) for f in found["features"]
    ]
    assert result.features == len(expected) > 0
    for label, score, box in sorted(expected, key=lambda e: -e[1]):  # each to its nearest unmatched feature
        match = min((g for g in got if g[0] == label), key=lambda g: np.abs(np.subtract(g[2], box)).max())
        got.remove(match)
        assert np.allclose(box, match[2], atol=1.0), (box, match[2])
        assert match[1] == pytest.approx(100 * score, abs=0.01)


@pytest.mark.parametrize("model_type", ["MASKRCNN"])
def test_instance_outlines_match_predict_masks(trained, tmp_path, model_type):
    from gpjobs.inference.outputs import signed_area

    run = trained(model_type)
    chips = chip_paths(run["folder"], 4)
    raster, _ = _mosaic(tmp_path, chips)
    predictions = predict(run["package"], [str(c) for c in chips])
    threshold = _threshold(predictions)
    out = tmp_path / "instances.geojson"
    run_inference(
        run["package"],
        [raster],
        out,
        arguments={"padding": 0, "batch_size": 4, "threshold": threshold, "nms_overlap": 1.0},
    )
    expected = sorted(
        (lab, px, 100 * s)
        for p in predictions
        for lab, s, px in zip(p["labels"], p["scores"], p["mask_pixels"])
        if s >= threshold and px
    )
    cell = 0.5 * 0.5
    got = []
    for f in json.loads(out.read_text())["features"]:
        geometry = f["geometry"]
        polygons = geometry["coordinates"] if geometry["type"] == "MultiPolygon" else [geometry["coordinates"]]
        area = sum(signed_area(r) for poly in polygons for r in poly) / cell
        got.append((f["properties"]["Class"], round(area), f["properties"]["Confidence"]))
    assert len(got) == len(expected) > 0
    for (label, pixels, score), (g_label, g_pixels, g_score) in zip(expected, sorted(got)):
        assert (g_label, g_pixels) == (label, pixels)  # the outline encloses exactly the mask's pixels
        assert g_score == pytest.approx(score, abs=0.01)


@pytest.mark.parametrize("model_type", LABEL_TYPES)
def test_object_labels_match_predict(trained, tmp_path, model_type):
    run = trained(model_type)
    chips = sorted(p for p in (run["folder"] / "images").rglob("*.tif"))[:4]
    raster, size = _mosaic(tmp_path, chips)
    predictions = predict(run["package"], [str(c) for c in chips])
    out = tmp_path / "objects.geojson"
    run_inference(run["package"], [raster], out, arguments={"batch_size": 3})
    features = json.loads(out.read_text())["features"]
    transform = rasterio.open(raster).transform
    assert len(features) == len(chips)
    for feature in features:
        x0, y0, _, _ = _pixel_boxes(feature, transform)
        p = predictions[int(round(y0)) // size * 2 + int(round(x0)) // size]
        assert feature["properties"]["Label"] == p["class_name"]
        assert feature["properties"]["Confidence"] == pytest.approx(100 * p["score"], abs=1e-3)
    # the same with the chips given as polygons (Classify Objects' input features)
    polygons = {
        "type": "FeatureCollection",
        "features": [
            {"type": "Feature", "properties": {"id": i}, "geometry": f["geometry"]} for i, f in enumerate(features)
        ],
    }
    (tmp_path / "objects_in.geojson").write_text(json.dumps(polygons))
    again = tmp_path / "again.geojson"
    run_inference(run["package"], [raster], again, features=tmp_path / "objects_in.geojson")
    labelled = json.loads(again.read_text())["features"]
    assert [f["properties"]["Label"] for f in labelled] == [f["properties"]["Label"] for f in features]
    assert [f["properties"]["id"] for f in labelled] == list(range(len(features)))


@pytest.mark.parametrize("model_type", TRANSLATION_TYPES)
def test_translations_match_predict(trained, tmp_path, model_type):
    run = trained(model_type)
    chips = chip_paths(run["folder"], 4)
    raster, size = _mosaic(tmp_path, chips)
    out = tmp_path / "translated.tif"
    run_inference(run["package"], [raster], out, arguments={"padding": 0, "batch_size": 4})
    predict(run["package"], [str(c) for c in chips], out_dir=str(tmp_path / "pred"))
    for chip, window in zip(chips, _windows(out, size, len(chips))):
        expected = rasterio.open(tmp_path / "pred" / f"{chip.stem}.tif").read()
        assert window.dtype == expected.dtype
        assert np.abs(window.astype(np.float64) - expected).max() <= 1.0, chip.name


@pytest.mark.parametrize("model_type", ["SUPERRESOLUTION"])
def test_super_resolution_matches_predict_at_the_finer_cell_size(trained, tmp_path, model_type):
    run = trained(model_type)
    factor = run["emd"]["GpjobsInference"]["upscale"]
    coarse = []
    for i, array in enumerate(read_chips(chip_paths(run["folder"], 4))):
        small = array[::factor, ::factor]
        path = tmp_path / f"coarse{i}.tif"
        write_mosaic(path, [small], 1)
        coarse.append(path)
    raster = write_mosaic(tmp_path / "mosaic.tif", read_chips(coarse), 2)
    out = tmp_path / "sr.tif"
    run_inference(run["package"], [raster], out, arguments={"padding": 0})
    with rasterio.open(out) as result, rasterio.open(raster) as source:
        assert result.width == factor * source.width and result.res[0] == pytest.approx(source.res[0] / factor)
        assert (result.transform.c, result.transform.f) == (source.transform.c, source.transform.f)
    predict(run["package"], [str(c) for c in coarse], out_dir=str(tmp_path / "pred"))
    size = run["emd"]["ImageHeight"]
    for chip, window in zip(coarse, _windows(out, size, len(coarse))):
        expected = rasterio.open(tmp_path / "pred" / f"{chip.stem}.tif").read()
        assert np.abs(window.astype(np.float64) - expected).max() <= 1.0, chip.name


@pytest.mark.parametrize("model_type", ["CHANGEDETECTOR"])
def test_change_matches_predict(trained, tmp_path, model_type):
    run = trained(model_type)
    before = chip_paths(run["folder"], 4, "images")
    after = chip_paths(run["folder"], 4, "images2")
    raster1, size = _mosaic(tmp_path, before, name="before.tif")
    raster2, _ = _mosaic(tmp_path, after, name="after.tif")
    out = tmp_path / "change.tif"
    run_inference(run["package"], [raster1, raster2], out, arguments={"padding": 0, "batch_size": 2})
    predict(run["package"], [str(b) for b in before], masks_dir=str(tmp_path / "masks"))  # partners in images2/
    for chip, window in zip(before, _windows(out, size, len(before))):
        expected = rasterio.open(tmp_path / "masks" / f"{chip.stem}.tif").read(1)
        np.testing.assert_array_equal(window[0], expected, err_msg=chip.name)


@pytest.mark.parametrize("model_type", ["MAXDEEPLAB"])
def test_panoptic_classes_and_instances_match_predict(trained, tmp_path, model_type):
    """Classify Pixels gets predict's class raster; Detect Objects gets each of predict's thing instances as a
    polygon of exactly its pixels, with its mask slot's class probability (the .pth model's) as Confidence."""
    from gpjobs.inference.outputs import signed_area
    from gpjobs.training.package import load_model, open_package
    from gpjobs.training.predict import _model_input

    run = trained(model_type)
    chips = chip_paths(run["folder"], 4)
    raster, size = _mosaic(tmp_path, chips)
    arguments = {"padding": 0, "batch_size": 4}
    run_inference(run["package"], [raster], tmp_path / "classes.tif", arguments=arguments)
    predict(run["package"], [str(c) for c in chips], masks_dir=str(tmp_path / "masks"))
    for chip, window in zip(chips, _windows(tmp_path / "classes.tif", size, len(chips))):
        expected = rasterio.open(tmp_path / "masks" / f"{chip.stem}.tif").read(1)
        np.testing.assert_array_equal(window[0], expected, err_msg=chip.name)

    with open_package(run["package"]) as package:
        family, model = load_model(package)
        with torch.no_grad():
            x = torch.stack([_model_input(family, c, family.info) for c in chips])
            slot_scores = torch.softmax(model.outputs(x)["classes"], -1).max(-1)[0]
    names = {c["Value"]: c["Name"] for c in run["emd"]["Classes"]}
    expected = []
    for i, chip in enumerate(chips):
        classes = rasterio.open(tmp_path / "masks" / f"{chip.stem}.tif").read(1)
        instances = rasterio.open(tmp_path / "masks" / f"{chip.stem}_instances.tif").read(1)
        for slot in np.unique(instances[instances > 0]).tolist():
            pixels = instances == slot
            expected.append(
                (i, names[int(classes[pixels][0])], int(pixels.sum()), 100 * float(slot_scores[i, slot - 1]))
            )
    out = tmp_path / "instances.geojson"
    result = run_inference(run["package"], [raster], out, arguments=arguments)
    transform = rasterio.open(raster).transform
    got = []
    for f in json.loads(out.read_text())["features"]:
        geometry = f["geometry"]
        polygons = geometry["coordinates"] if geometry["type"] == "MultiPolygon" else [geometry["coordinates"]]
        x0, y0, _, _ = _pixel_boxes({"geometry": {"coordinates": [[q for p in polygons for q in p[0]]]}}, transform)
        area = sum(signed_area(r) for poly in polygons for r in poly) / (0.5 * 0.5)
        got.append(
            (
                int(y0) // size * 2 + int(x0) // size,
                f["properties"]["Class"],
                round(area),
                f["properties"]["Confidence"],
            )
        )
    assert result.features == len(expected) > 0
    for want, have in zip(sorted(expected), sorted(got)):
        assert have[:3] == want[:3]  # same chip, class and pixels
        assert have[3] == pytest.approx(want[3], abs=1e-3)
    # the threshold is the user's: at 1.0 no slot of a one-epoch model is kept, so there is no instance
    assert (
        run_inference(
            run["package"], [raster], tmp_path / "none.geojson", arguments={**arguments, "threshold": 1.0}
        ).features
        == 0
    )


@pytest.mark.parametrize("model_type", ["IMAGECAPTIONER"])
def test_captions_match_predict(trained, tmp_path, model_type):
    """Classify Objects gets predict's caption (same beam search) per object chip; the search is the user's."""
    run = trained(model_type)
    chips = chip_paths(run["folder"], 4)
    raster, size = _mosaic(tmp_path, chips)
    predictions = predict(run["package"], [str(c) for c in chips])
    out = tmp_path / "captions.geojson"
    run_inference(run["package"], [raster], out, arguments={"batch_size": 4})
    features = json.loads(out.read_text())["features"]
    transform = rasterio.open(raster).transform
    assert len(features) == len(chips) and any(p["caption"] for p in predictions)
    for feature in features:
        x0, y0, _, _ = _pixel_boxes(feature, transform)
        p = predictions[round(y0) // size * 2 + round(x0) // size]
        assert feature["properties"]["Caption"] == p["caption"]
        assert feature["properties"]["Score"] == pytest.approx(p["score"], abs=1e-5)
    greedy = tmp_path / "greedy.geojson"
    run_inference(run["package"], [raster], greedy, arguments={"batch_size": 3, "beam_width": 1, "max_len": 2})
    captions = [f["properties"]["Caption"] for f in json.loads(greedy.read_text())["features"]]
    assert len(captions) == len(chips) and all(len(c.split()) <= 2 for c in captions)
