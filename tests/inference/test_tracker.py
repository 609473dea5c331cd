"""The SIAMMASK package's GpjobsObjectTracker.py, used as arcgis.learn's SiamMask is (init on a frame with the
objects' boxes, update per later frame): it tracks as `gpjobs predict` does on frames of any size, several objects
at once, and bad input or a raster tool's call gets a clear error."""

from __future__ import annotations

import importlib.util
import zipfile
from pathlib import Path

import numpy as np
import pytest
import tifffile

from gpjobs.inference.host import InferenceError, run_inference
from tests.inference.conftest import predict_json, read_chips, write_mosaic

pytestmark = pytest.mark.slow  # every test runs a trained SIAMMASK package (trained once a session)


@pytest.fixture(scope="module")
def siammask(trained, tmp_path_factory) -> dict:
    """The trained SIAMMASK package unzipped, its tracker class, and the frames of one sequence twice as large
    as the model's chips (nearest-neighbour 2x, written as GeoTIFF frames)."""
    run = trained("SIAMMASK")
    tmp = tmp_path_factory.mktemp("tracker")
    folder = tmp / "package"
    with zipfile.ZipFile(run["package"]) as zf:
        zf.extractall(folder)
    path = folder / "GpjobsObjectTracker.py"
    spec = importlib.util.spec_from_file_location("tracker_under_test", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    frames = read_chips(sorted(min((run["folder"] / "JPEGImages").iterdir()).glob("*.jpg")))
    large = [np.repeat(np.repeat(f, 2, 0), 2, 1) for f in frames]
    paths = []
    for i, frame in enumerate(large):
        paths.append(tmp / f"frame{i}.tif")
        tifffile.imwrite(paths[-1], frame)
    return {"run": run, "folder": folder, "cls": module.GpjobsObjectTracker, "frames": large, "paths": paths}


def _tracker(siammask: dict):
    tracker = siammask["cls"]()
    tracker.initialize(model=str(siammask["folder"] / "model.emd"), device=-1)
    return tracker


def test_tracks_frames_of_another_size_as_predict_does(siammask):
    """Frames are resized to the chip size and boxes come back in the frames' pixels, as predict does; the mask
    is the frame's size."""
    box = [12.0, 16.0, 36.0, 34.0]  # x0, y0, x1, y1 in the 2x frame
    predicted = predict_json(siammask["run"]["package"], siammask["paths"], box=",".join(map(str, box)))
    tracker = _tracker(siammask)
    tracks = tracker.init(siammask["frames"][0], [[box[0], box[1], box[2] - box[0], box[3] - box[1]]], labels=["car"])
    assert [(t.id, t.label, t.bbox, t.mask) for t in tracks] == [(0, "car", [12.0, 16.0, 24.0, 18.0], None)]
    for frame, expected in zip(siammask["frames"][1:], predicted[1:]):
        (track,) = tracker.update(frame)
        x, y, w, h = track.bbox
        assert np.abs(np.subtract([x, y, x + w, y + h], expected["box"])).max() <= 0.01
        assert track.score == pytest.approx(expected["score"], abs=1e-5)
        assert track.mask.shape == frame.shape[:2] and track.mask.dtype == bool
        # predict counts mask pixels at the chip size: a quarter of the 2x frame's, up to the resampled edge
        assert abs(int(track.mask.sum()) - 4 * expected["mask_pixels"]) <= 0.15 * 4 * expected["mask_pixels"] + 8
    assert track.age == len(siammask["frames"]) - 1


def test_several_objects_and_new_ones_on_update(siammask):
    frames = siammask["frames"]
    tracker = _tracker(siammask)
    alone = [t.bbox for t in (tracker.init(frames[0], [[12, 16, 24, 18]]), tracker.update(frames[1]))[1]]
    tracker = _tracker(siammask)
    tracks = tracker.init(frames[0], [[12, 16, 24, 18], [30, 30, 16, 16]], labels=["car", "boat"])
    assert [t.label for t in tracks] == ["car", "boat"]
    tracks = tracker.update(frames[1], detections=[[2, 2, 10, 10]])
    assert [t.id for t in tracks] == [0, 1, 2] and tracks[0].bbox == alone[0]  # each object tracked on its own
    assert tracks[2].age == 0 and tracks[1].age == 1 and "label='boat'" in repr(tracks[1])
    assert [t.id for t in tracker.init(frames[0], [[5, 5, 8, 8]])] == [0]  # init starts over


def test_bad_input_gets_a_clear_error(siammask, tmp_path):
    tracker = _tracker(siammask)
    frame = siammask["frames"][0]
    with pytest.raises(ValueError, match=r"box \[1, 2, 0, 5\]: give \[x, y, width, height\]"):
        tracker.init(frame, [[1, 2, 0, 5]])
    with pytest.raises(ValueError, match="2 labels for 1 boxes"):
        tracker.init(frame, [[1, 2, 5, 5]], labels=["a", "b"])
    with pytest.raises(ValueError, match=r"the frame gives 1 band\(s\) but the model takes 3"):
        tracker.init(frame[:, :, :1], [[1, 2, 5, 5]])
    with pytest.raises(ValueError, match=r"frame is 16-bit unsigned \(uint16\) but the model was trained on"):
        tracker.init(frame.astype(np.uint16), [[1, 2, 5, 5]])
    raster = write_mosaic(tmp_path / "scene.tif", [frame], 1)
    with pytest.raises(InferenceError, match="GpjobsObjectTracker.py is not a raster function"):
        run_inference(siammask["run"]["package"], [raster], tmp_path / "out.tif")
    assert not Path(tmp_path / "out.tif").exists()
