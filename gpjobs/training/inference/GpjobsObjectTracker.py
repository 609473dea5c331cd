"""Object tracking with a gpjobs SIAMMASK package, the way arcgis.learn's SiamMask tracks: give the objects' boxes
in one frame (`init`), then every later frame (`update`), and read each track's box, mask and score.

Tracking is not a raster function in ArcGIS (it runs on motion imagery, not over a raster), so this class has
no getParameterInfo/updatePixels: it is used from Python, with only the standard library, numpy and torch:

    tracker = GpjobsObjectTracker()
    tracker.initialize(model="model.emd", device=-1)            # device: -1 CPU, else a GPU id
    tracker.init(first_frame, [[x, y, w, h]], labels=["car"])   # frames: (H, W, bands) numpy arrays
    for frame in later_frames:
        for track in tracker.update(frame):
            print(track.id, track.label, track.bbox, track.score)  # bbox [x, y, w, h]; track.mask (H, W) bool

Frames are resized to the model's chip size (ImageHeight x ImageWidth of the .emd) and normalised as in
training; boxes and masks come back in the frame's pixels. The package's TorchScript network is one tracking
step (template frame, template box, frame, previous box) -> (box, score, mask probability); a mask pixel belongs
to the object where that probability exceeds the model's `seg_thr`.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import zlib

import numpy as np
import torch
import torch.nn.functional as F


def _core():
    """gpjobs_prf_core.py beside this file, imported under a name unique to this package folder."""
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "gpjobs_prf_core.py")
    name = f"gpjobs_prf_core_{zlib.crc32(path.encode()):08x}"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


core = _core()


class Track:
    """One tracked object: `bbox` [x, y, w, h] and `mask` (H, W bool; None until the first update) in the last
    frame's pixels, `score` of that frame's match, `age` = frames tracked since init."""

    def __init__(self, track_id: int, label: str, bbox: list) -> None:
        self.id, self.label, self.bbox = track_id, label, [float(v) for v in bbox]
        self.mask = None
        self.score = 1.0
        self.age = 0

    def __repr__(self) -> str:
        box = ", ".join(f"{v:.1f}" for v in self.bbox)
        return f"Track(id={self.id}, label={self.label!r}, bbox=[{box}], score={self.score:.3f}, age={self.age})"


class GpjobsObjectTracker:
    """SiamMask tracking with the package's traced tracking step."""

    def __init__(self) -> None:
        self.name = "GpjobsObjectTracker"
        self.description = "gpjobs object tracker (SiamMask): init(frame, boxes), then update(frame)"
        self.tracks: list = []
        self.states: dict = {}

    def initialize(self, **kwargs) -> None:
        """`model`: the package's .emd (path or JSON text); `device`: -1 for the CPU, else a GPU id."""
        if "model" not in kwargs:
            raise core.InferenceError("initialize(model=...): give the package's .emd file")
        self.emd, self.folder = core.read_emd(kwargs["model"])
        spec = core.spec_of(self.emd)
        if spec.get("output") != "tracks":
            raise core.InferenceError(
                f"{os.path.basename(__file__)} runs object tracking packages; this one's "
                f"network gives {spec.get('output')!r}: use the .emd's InferenceFunction "
                f"({self.emd.get('InferenceFunction')})"
            )
        self.device = core.pick_device(kwargs.get("device", -1))
        self.network = core.load_network(self.emd, self.folder, self.device)
        self.normalizer = core.Normalizer(self.emd)
        self.bands = [int(b) for b in self.emd.get("ExtractBands") or [0, 1, 2]]
        height = int(self.emd.get("ImageHeight") or 256)
        self.size = (height, int(self.emd.get("ImageWidth") or height))
        self.seg_thr = float(spec.get("seg_thr", 0.35))

    def prepare(self, frame) -> tuple[torch.Tensor, float, float]:
        """(model input (1, C, H', W') at chip size, x scale, y scale) of an (H, W, bands) frame."""
        array = np.asarray(frame)
        if array.ndim == 2:
            array = array[:, :, None]
        if array.ndim != 3:
            raise core.InferenceError(f"a frame is an (height, width, bands) array; got shape {array.shape}")
        if max(self.bands) < array.shape[2]:  # all source bands given: keep the model's
            array = array[:, :, self.bands]
        chip = np.ascontiguousarray(array.transpose(2, 0, 1))
        self.normalizer.check(chip, "frame")
        x = self.normalizer(chip[None], self.device)
        if tuple(x.shape[-2:]) != self.size:
            x = F.interpolate(x, size=self.size, mode="bilinear", align_corners=False)
        return x, self.size[1] / array.shape[1], self.size[0] / array.shape[0]

    def init(self, frame, detections: list, labels: list | None = None, reset: bool = True) -> list:
        """Start tracking the objects whose boxes [x, y, w, h] (frame pixels) `detections` gives; returns the
        tracks (new ones get the next ids; `reset=False` keeps the current ones)."""
        if reset:
            self.tracks, self.states = [], {}
        if labels is not None and len(labels) != len(detections):
            raise core.InferenceError(f"{len(labels)} labels for {len(detections)} boxes: give one label per box")
        template, sx, sy = self.prepare(frame)
        for i, box in enumerate(detections):
            if len(box) != 4 or not (float(box[2]) > 0 and float(box[3]) > 0):
                raise core.InferenceError(
                    f"box {list(box)}: give [x, y, width, height] in the frame's pixels, width and height above 0"
                )
            x, y, w, h = (float(v) for v in box)
            scaled = torch.tensor([x * sx, y * sy, (x + w) * sx, (y + h) * sy], device=self.device)
            track = Track(len(self.states), str(labels[i]) if labels is not None else "Object", [x, y, w, h])
            self.states[track.id] = {"template": template, "box": scaled, "previous": scaled}
            self.tracks.append(track)
        return self.tracks

    def update(self, frame, detections: list | None = None, labels: list | None = None) -> list:
        """Track every object into `frame`; `detections` (and `labels`) start new tracks in it, as init does."""
        x, sx, sy = self.prepare(frame)
        height, width = np.asarray(frame).shape[:2]
        for track in self.tracks:
            state = self.states[track.id]
            with torch.no_grad():
                box, score, mask = self.network(state["template"], state["box"], x, state["previous"])
            state["previous"] = box
            x0, y0, x1, y1 = box.tolist()
            track.bbox = [x0 / sx, y0 / sy, (x1 - x0) / sx, (y1 - y0) / sy]
            if tuple(mask.shape) != (height, width):
                mask = F.interpolate(mask[None, None], size=(height, width), mode="bilinear", align_corners=False)[0, 0]
            track.mask = (mask > self.seg_thr).cpu().numpy()
            track.score = float(score)
            track.age += 1
        if detections:
            self.init(frame, detections, labels, reset=False)
        return self.tracks
