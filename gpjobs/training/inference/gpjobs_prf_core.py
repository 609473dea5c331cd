"""What the gpjobs Python raster functions (PRFs) share: the .emd, the TorchScript network, normalisation,
cutting a pixel block into model tiles, and non-maximum suppression.

Ships inside every gpjobs package next to the PRF named by the .emd's `InferenceFunction`; the PRF loads this
file by its path (under a name unique to the package folder), so two packages loaded into one ArcGIS Python
never share it. Only the standard library, numpy and torch are imported: that is all ArcGIS's deep-learning
environment is sure to have, and its torch is older than the one that trained the model (the network is
TorchScript traced from the dense layers only; every data-dependent step lives here, in plain torch).
"""

from __future__ import annotations

import json
import math
import os
import warnings

import numpy as np
import torch

OLDEST_TORCH = (2, 0)  # the oldest torch these PRFs are tested on (ArcGIS Pro's deep-learning framework)
TRUE_WORDS = ("true", "1", "t", "y", "yes")
# numpy dtype -> the GDAL-style name users see in a message
DTYPE_NAMES = {
    "uint8": "8-bit unsigned",
    "uint16": "16-bit unsigned",
    "int16": "16-bit signed",
    "uint32": "32-bit unsigned",
    "int32": "32-bit signed",
    "float32": "32-bit float",
    "float64": "64-bit float",
    "int8": "8-bit signed",
}


class InferenceError(ValueError):
    """Input the model cannot run on; the message names the problem and how to fix it."""


def truthy(value) -> bool:
    return str(value).strip().lower() in TRUE_WORDS


def read_emd(model) -> tuple[dict, str]:
    """(emd, package folder) from ArcGIS's `model` argument: the .emd path or its JSON text."""
    text = str(model)
    if text.lstrip().startswith("{"):
        emd = json.loads(text)
        return emd, str(emd.get("_folder") or os.getcwd())
    if not os.path.isfile(text):
        raise InferenceError(f"model definition {text!r} not found: pass the package's .emd file")
    with open(text, encoding="utf-8-sig") as f:
        emd = json.load(f)
    return emd, os.path.dirname(os.path.abspath(text))


def torch_version() -> tuple[int, int]:
    parts = torch.__version__.split("+")[0].split(".")
    return int(parts[0]), int(parts[1])


def pick_device(device) -> torch.device:
    """ArcGIS passes -1 for the CPU and a GPU id otherwise."""
    try:
        index = int(device)
    except (TypeError, ValueError):
        index = -1
    if index >= 0 and torch.cuda.is_available():
        return torch.device("cuda", min(index, torch.cuda.device_count() - 1))
    return torch.device("cpu")


def load_network(emd: dict, folder: str, device: torch.device):
    """The package's TorchScript network, in eval mode on `device`."""
    name = emd.get("TorchScriptFile")
    if not name:
        raise InferenceError(
            f"{emd.get('ModelFile', 'this package')}: the .emd names no TorchScriptFile; "
            "retrain or repackage the model with a current gpjobs"
        )
    path = os.path.join(folder, str(name))
    if not os.path.isfile(path):
        raise InferenceError(f"{name} (the package's network, TorchScriptFile in the .emd) is missing from {folder}")
    if torch_version() < OLDEST_TORCH:
        raise InferenceError(
            f"torch {torch.__version__} is older than {OLDEST_TORCH[0]}.{OLDEST_TORCH[1]}, the "
            f"oldest these packages run on (the model was trained with torch "
            f"{emd.get('TorchVersion', '?')})"
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # newer torch calls torch.jit deprecated; it loads
            module = torch.jit.load(path, map_location=device)
    except RuntimeError as exc:
        raise InferenceError(
            f"{name}: torch {torch.__version__} cannot load this network (trained with torch "
            f"{emd.get('TorchVersion', '?')}): {str(exc).splitlines()[0]}"
        ) from exc
    return module.eval()


def spec_of(emd: dict) -> dict:
    """The .emd's `GpjobsInference` section: what the network outputs and how to read it."""
    spec = emd.get("GpjobsInference")
    if not isinstance(spec, dict):
        raise InferenceError(
            "the .emd has no GpjobsInference section: this package was not written by gpjobs "
            "or predates its raster functions; repackage it"
        )
    return spec


class Normalizer:
    """Raw band values (the raster's own dtype) -> the normalised float32 the network was trained on.

    x * scale + offset per band, scale and offset computed in float64 and rounded to float32 once, as
    training does, so a chip gives the same network input here as in `gpjobs predict`.
    """

    def __init__(self, emd: dict) -> None:
        self.bands = len(emd.get("ExtractBands") or [0, 1, 2])
        ours = emd.get("Gpjobs") or {}
        self.dtype = str(ours.get("dtype") or "")
        stats = emd.get("NormalizationStats")
        if isinstance(stats, dict) and stats.get("band_min_values"):
            lo = np.asarray(stats["band_min_values"], np.float64)
            hi = np.asarray(stats["band_max_values"], np.float64)
            mean = np.asarray(stats["scaled_mean_values"], np.float64)
            std = np.asarray(stats["scaled_std_values"], np.float64)
        else:  # ImageNet statistics on 0..255 bands
            lo, hi = np.zeros(3), np.full(3, 255.0)
            mean, std = np.asarray([0.485, 0.456, 0.406]), np.asarray([0.229, 0.224, 0.225])
        span = hi - lo
        self.scale = torch.from_numpy((1.0 / (span * std)).astype(np.float32))[:, None, None]
        self.offset = torch.from_numpy((-(lo / span + mean) / std).astype(np.float32))[:, None, None]
        self.lo, self.span = lo, span
        self.mean, self.std = mean, std

    def check(self, pixels: np.ndarray, what: str = "raster") -> None:
        """Band count and pixel type as the model was trained on, else an InferenceError saying so."""
        bands = pixels.shape[-3]
        if bands != self.bands:
            raise InferenceError(
                f"the {what} gives {bands} band(s) but the model takes {self.bands} "
                f"(ExtractBands in the .emd); use a raster with the training data's bands"
            )
        if self.dtype and pixels.dtype != np.dtype(self.dtype):
            have, want = str(pixels.dtype), self.dtype
            raise InferenceError(
                f"the {what} is {DTYPE_NAMES.get(have, have)} ({have}) but the model was trained on "
                f"{DTYPE_NAMES.get(want, want)} ({want}) chips; its normalisation would be wrong. Convert the "
                f"raster to {want} (e.g. gdal_translate -ot {_gdal_type(want)}) or train on {have} chips"
            )

    def __call__(self, tiles: np.ndarray, device: torch.device) -> torch.Tensor:
        """(N, C, H, W) raw tiles -> normalised float32 tensor on `device` (multiply, then add)."""
        x = torch.from_numpy(np.ascontiguousarray(tiles)).to(torch.float32)
        x.mul_(self.scale).add_(self.offset)
        return x.to(device)

    def to_native(self, x01: torch.Tensor) -> torch.Tensor:
        """0..1 scaled band values -> band units (the inverse of the min/max scaling)."""
        lo = torch.from_numpy(self.lo.astype(np.float32))[:, None, None].to(x01.device)
        span = torch.from_numpy(self.span.astype(np.float32))[:, None, None].to(x01.device)
        return lo + x01 * span


def _gdal_type(dtype: str) -> str:
    return {
        "uint8": "Byte",
        "uint16": "UInt16",
        "int16": "Int16",
        "uint32": "UInt32",
        "int32": "Int32",
        "float32": "Float32",
        "float64": "Float64",
    }.get(dtype, dtype)


def mask_invalid(pixels: np.ndarray, mask) -> tuple[np.ndarray, np.ndarray | None]:
    """Zero the pixels the raster mask marks invalid (as Esri's PRFs do); returns (pixels, invalid 2-D or None)."""
    if mask is None:
        return pixels, None
    mask = np.asarray(mask)
    invalid = ~(mask.astype(bool).all(axis=0) if mask.ndim == 3 else mask.astype(bool))
    if not invalid.any():
        return pixels, None
    pixels = pixels.copy()
    pixels[..., invalid] = 0
    return pixels, invalid


def batch_grid(batch_size: int) -> tuple[int, int]:
    """(rows, cols) of model tiles in one pixel block: the most square rectangle of exactly batch_size tiles."""
    batch_size = max(1, int(batch_size))
    rows = max(d for d in range(1, int(math.isqrt(batch_size)) + 1) if batch_size % d == 0)
    return rows, batch_size // rows


def split_tiles(block: np.ndarray, tile: int, padding: int, rows: int, cols: int) -> np.ndarray:
    """(C, H, W) block -> (rows * cols, C, tile, tile) overlapping tiles; short edges are zero-filled."""
    inner = tile - 2 * padding
    out = np.zeros((rows * cols, block.shape[0], tile, tile), dtype=block.dtype)
    for r in range(rows):
        for c in range(cols):
            part = block[:, r * inner : r * inner + tile, c * inner : c * inner + tile]
            out[r * cols + c, :, : part.shape[1], : part.shape[2]] = part
    return out


def join_tiles(tiles: np.ndarray, padding: int, rows: int, cols: int) -> np.ndarray:
    """(rows * cols, C, tile, tile) tile outputs -> (C, rows * inner, cols * inner), padding cropped."""
    _, bands, height, width = tiles.shape
    inner_h, inner_w = height - 2 * padding, width - 2 * padding
    out = np.zeros((bands, rows * inner_h, cols * inner_w), dtype=tiles.dtype)
    for r in range(rows):
        for c in range(cols):
            out[:, r * inner_h : (r + 1) * inner_h, c * inner_w : (c + 1) * inner_w] = tiles[
                r * cols + c, :, padding : padding + inner_h, padding : padding + inner_w
            ]
    return out


def run_network(module, x: torch.Tensor, batch_size: int):
    """module(x) in chunks of batch_size, outputs concatenated (a tensor or a tuple of tensors)."""
    outs = []
    with torch.no_grad():
        for start in range(0, x.shape[0], max(1, batch_size)):
            outs.append(module(x[start : start + batch_size]))
    if isinstance(outs[0], torch.Tensor):
        return torch.cat(outs)
    return tuple(torch.cat([o[i] for o in outs]) for i in range(len(outs[0])))


# --- non-maximum suppression (torchvision's CPU algorithm, in plain torch) ---------------------------------


def nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Indices of the boxes kept, best score first: greedy suppression of IoU > iou_threshold."""
    if boxes.numel() == 0:
        return torch.zeros(0, dtype=torch.long, device=boxes.device)
    order = torch.sort(scores, stable=True, descending=True)[1]
    b = boxes[order].cpu()
    x1, y1, x2, y2 = b[:, 0], b[:, 1], b[:, 2], b[:, 3]
    areas = (x2 - x1) * (y2 - y1)
    n = b.shape[0]
    suppressed = torch.zeros(n, dtype=torch.bool)
    keep = []
    for i in range(n):
        if suppressed[i]:
            continue
        keep.append(i)
        if i + 1 == n:
            break
        rest = slice(i + 1, n)
        w = (torch.minimum(x2[i], x2[rest]) - torch.maximum(x1[i], x1[rest])).clamp(min=0)
        h = (torch.minimum(y2[i], y2[rest]) - torch.maximum(y1[i], y1[rest])).clamp(min=0)
        inter = w * h
        iou = inter / (areas[i] + areas[rest] - inter)
        suppressed[rest] |= iou > iou_threshold
    return order[torch.tensor(keep, dtype=torch.long, device=order.device)]


def batched_nms(boxes: torch.Tensor, scores: torch.Tensor, classes: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """NMS within each class, kept indices by decreasing score (torchvision's two strategies, as it picks them)."""
    if boxes.numel() == 0:
        return torch.zeros(0, dtype=torch.long, device=boxes.device)
    if boxes.numel() > 4000:  # one NMS per class
        keep_mask = torch.zeros_like(scores, dtype=torch.bool)
        for c in torch.unique(classes):
            index = torch.where(classes == c)[0]
            keep_mask[index[nms(boxes[index], scores[index], iou_threshold)]] = True
        kept = torch.where(keep_mask)[0]
        return kept[scores[kept].sort(descending=True)[1]]
    offsets = classes.to(boxes) * (boxes.max() + 1)  # classes moved apart so that they never overlap
    return nms(boxes + offsets[:, None], scores, iou_threshold)


def vote_boxes(
    boxes: torch.Tensor, scores: torch.Tensor, classes: torch.Tensor, kept: torch.Tensor, iou_threshold: float
) -> torch.Tensor:
    """The kept boxes, each moved to the score-weighted mean of the candidates of its class that overlap it by
    more than iou_threshold (itself included): box voting, as the training side's yolo_net.vote_boxes."""
    if kept.numel() == 0:
        return boxes[kept]
    chosen = boxes[kept]
    w = (
        torch.minimum(chosen[:, None, 2], boxes[None, :, 2]) - torch.maximum(chosen[:, None, 0], boxes[None, :, 0])
    ).clamp(min=0)
    h = (
        torch.minimum(chosen[:, None, 3], boxes[None, :, 3]) - torch.maximum(chosen[:, None, 1], boxes[None, :, 1])
    ).clamp(min=0)
    inter = w * h
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    iou = inter / (area[kept][:, None] + area[None] - inter)
    weights = ((iou > iou_threshold) & (classes[kept][:, None] == classes[None])).to(scores) * scores[None]
    return weights @ boxes / weights.sum(1, keepdim=True)


def box_rings(boxes: np.ndarray) -> list:
    """xyxy pixel boxes -> one closed ring each, in Esri's order (clockwise once rows turn into map y)."""
    return [[[[x0, y0], [x0, y1], [x1, y1], [x1, y0], [x0, y0]]] for x0, y0, x1, y1 in boxes.tolist()]


# --- class rasters and instance outlines (pixel classification, panoptic, Mask R-CNN) ----------------------


def class_table(classes: list) -> dict:
    """The raster attribute table ArcGIS builds the output's legend from: Value, ClassName, Red, Green, Blue."""
    names = ("OID", "Value", "ClassName", "Red", "Green", "Blue")
    types = (
        "esriFieldTypeOID",
        "esriFieldTypeInteger",
        "esriFieldTypeString",
        "esriFieldTypeInteger",
        "esriFieldTypeInteger",
        "esriFieldTypeInteger",
    )
    features = []
    for i, c in enumerate(classes):
        color = list(c.get("Color") or [0, 0, 0])[:3]
        features.append({"attributes": dict(zip(names, [i + 1, int(c["Value"]), str(c["Name"]), *color]))})
    return {
        "displayFieldName": "",
        "fieldAliases": {n: n for n in names},
        "fields": [{"name": n, "type": t, "alias": n} for n, t in zip(names, types)],
        "features": features,
    }


def pixel_type(values) -> str:
    """The smallest unsigned type holding every class value (GeoTIFF colour maps need 8 or 16 bits)."""
    top = max([0, *values])
    low = min([0, *values])
    if low >= 0 and top <= 255:
        return "u1"
    if low >= 0 and top <= 65535:
        return "u2"
    return "i4"


def mask_outline(mask: np.ndarray) -> list:
    """Rings (pixel-edge outlines, largest first) of a binary mask: an Esri polygon of exactly its pixels.

    Outer rings run like the box rings of Esri's own detectors (negative shoelace area in pixel coordinates),
    holes the other way; pixels touching only at a corner belong to separate rings (4-connectivity).
    """
    padded = np.zeros((mask.shape[0] + 2, mask.shape[1] + 2), dtype=bool)
    padded[1:-1, 1:-1] = mask
    inside = padded[1:-1, 1:-1]
    edges: dict = {}
    # every foreground pixel side facing background is an edge, the pixel on its right (rows down)
    for free, start, end in (
        (padded[:-2, 1:-1], (0, 0), (1, 0)),
        (padded[1:-1, 2:], (1, 0), (1, 1)),
        (padded[2:, 1:-1], (1, 1), (0, 1)),
        (padded[1:-1, :-2], (0, 1), (0, 0)),
    ):
        ys, xs = np.nonzero(inside & ~free)
        for y, x in zip(ys.tolist(), xs.tolist()):
            edges.setdefault((x + start[0], y + start[1]), []).append((x + end[0], y + end[1]))
    rings = []
    while edges:
        start = next(iter(edges))
        ring, here, heading = [start], start, None
        while True:
            ends = edges[here]
            nxt = ends[0]
            if len(ends) > 1 and heading is not None:  # a corner shared by two pixels: turn toward ours
                right = (-heading[1], heading[0])
                nxt = next((e for e in ends if (e[0] - here[0], e[1] - here[1]) == right), ends[0])
            ends.remove(nxt)
            if not ends:
                del edges[here]
            heading = (nxt[0] - here[0], nxt[1] - here[1])
            here = nxt
            if here == start:
                break
            ring.append(here)
        ring.append(start)
        # keep the corners only
        kept = (
            [ring[0]]
            + [
                p
                for a, p, b in zip(ring, ring[1:], ring[2:])
                if (p[0] - a[0]) * (b[1] - p[1]) != (p[1] - a[1]) * (b[0] - p[0])
            ]
            + [ring[0]]
        )
        rings.append([list(p) for p in reversed(kept)])
    rings.sort(key=lambda r: -abs(ring_area(r)))
    return rings


def ring_area(ring: list) -> float:
    """Shoelace area of a closed ring in pixel coordinates (negative for Esri's outer rings)."""
    return 0.5 * sum(x0 * y1 - x1 * y0 for (x0, y0), (x1, y1) in zip(ring, ring[1:]))


def parameter(name: str, value, display: str, description: str, data_type: str = "numeric", domain=None) -> dict:
    """One getParameterInfo entry (a model argument the tool shows, with its default)."""
    entry = {
        "name": name,
        "dataType": data_type,
        "value": value,
        "required": False,
        "displayName": display,
        "description": description,
    }
    if domain:
        entry["domain"] = domain
    return entry


def raster_parameters(names=("raster",)) -> list:
    """The mandatory first entries of getParameterInfo: the input raster(s), the model and the device."""
    out = [
        {
            "name": name,
            "dataType": "raster",
            "required": True,
            "displayName": name.capitalize(),
            "description": "Input raster",
        }
        for name in names
    ]
    out += [
        {
            "name": "model",
            "dataType": "string",
            "required": True,
            "displayName": "Input Model Definition (EMD) File",
            "description": "Input model definition (EMD) JSON file",
        },
        {
            "name": "device",
            "dataType": "numeric",
            "required": False,
            "displayName": "Device ID",
            "description": "Device ID (-1: CPU)",
        },
    ]
    return out


class TiledPRF:
    """initialize / getParameterInfo / getConfiguration for PRFs that cut blocks into model tiles.

    Subclasses add their own parameters (`extra_parameters`) and read them (`configure`).
    """

    raster_names = ("raster",)
    default_batch_size = 4

    def __init__(self) -> None:
        self.name = type(self).__name__
        self.description = "gpjobs deep learning raster function"
        self.emd: dict = {}

    def initialize(self, **kwargs) -> None:
        if "model" not in kwargs:
            return
        self.emd, self.folder = read_emd(kwargs["model"])
        self.spec = spec_of(self.emd)
        self.device = pick_device(kwargs.get("device", -1))
        self.network = load_network(self.emd, self.folder, self.device)
        self.normalizer = Normalizer(self.emd)
        self.tile = int(self.emd.get("ImageHeight") or 224)
        self.classes = list(self.emd.get("Classes") or [])

    def getParameterInfo(self) -> list:
        tile = int(self.emd.get("ImageHeight") or 224)
        params = raster_parameters(self.raster_names) + [
            parameter(
                "padding",
                tile // 4,
                "Padding",
                "Pixels of each tile's border whose result is dropped "
                "(its neighbour covers them); at most a quarter of the tile",
            ),
            parameter("batch_size", self.default_batch_size, "Batch Size", "Tiles the model runs at once"),
        ]
        if self.emd.get("SupportsVariableTileSize"):
            params.append(parameter("tile_size", tile, "Tile Size", "Tile size used for inferencing"))
        return params + self.extra_parameters()

    def extra_parameters(self) -> list:
        return []

    def getConfiguration(self, **scalars) -> dict:
        self.tile = int(float(scalars.get("tile_size") or self.emd.get("ImageHeight") or 224))
        self.padding = int(float(scalars.get("padding", self.tile // 4)))
        if not 0 <= 2 * self.padding < self.tile:
            raise InferenceError(
                f"padding {self.padding} leaves nothing of a {self.tile}-pixel tile; "
                f"use 0 to {max(0, (self.tile - 1) // 2)}"
            )
        self.batch_size = max(1, int(float(scalars.get("batch_size", self.default_batch_size))))
        self.rows, self.cols = batch_grid(self.batch_size)
        self.configure(scalars)
        inner = self.tile - 2 * self.padding
        return {
            "extractBands": tuple(self.emd.get("ExtractBands") or (0, 1, 2)),
            "padding": self.padding,
            "tx": inner * self.cols,
            "ty": inner * self.rows,
            "batch_size": self.batch_size,
            "fixedTileSize": 1,
            "inheritProperties": 2 | 4 | 8,
            "inputMask": True,
        }

    def configure(self, scalars: dict) -> None:
        """Read the PRF's own model arguments."""

    def tiles_of(self, pixels: np.ndarray) -> np.ndarray:
        return split_tiles(pixels, self.tile, self.padding, self.rows, self.cols)
