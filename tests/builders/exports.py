"""Write tiny, *learnable* exports of every Export Training Data For Deep Learning format.

Every builder writes one export folder under `root` and returns its path. The label is a simple
function of the pixels, so a few epochs of training visibly lower the loss:

* every class has its own brightness level (`class_level`); background is dark;
* segmentation / change detection: rectangles of a class's level, the mask holds the class value;
* detection / instance: squares of a class's level, boxes (or instance masks) around them;
* Labeled_Tiles / Imagenet: the whole chip at its class's level (+ noise);
* MultiLabeled_Tiles: vertical stripe k is bright when class k is present.

The metadata mimics real exports (export-format.md §1, ../shared/samples): Esri's `"key" : value`
JSON, `map.txt` with Windows paths, two spaces, a trailing space and CRLF, 9-digit names by default,
placeholder strings in an old-Pro `.emd` (`newer_metadata=False`) or real ImageHeight/AllTilesStats
and BandStatsState (`newer_metadata=True`). Broken variants live in `tests.builders.broken` and are
re-exported here.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

Classes = Sequence[tuple[int, str]]
DEFAULT_CLASSES: tuple[tuple[int, str], ...] = ((1, "a"), (2, "b"))

# Pixel range each dtype's chips use (uint16 like the real 6-band KITTI sample, int16 with negatives).
DTYPE_RANGES: dict[str, tuple[float, float]] = {
    "uint8": (0, 255),
    "uint16": (0, 12000),
    "int16": (-2000, 6000),
    "float32": (0.0, 1.0),
}
COLORS = ((230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180))
IMAGE_EXTS = {"tif": ".tif", "tiff": ".tif", "png": ".png", "jpg": ".jpg", "jpeg": ".jpg"}


# --- pixels --------------------------------------------------------------------------------------


def class_level(index: int, n_classes: int, dtype: str = "uint8") -> float:
    """Brightness of class `index` (0-based position in the class list); background is `background_level`."""
    lo, hi = DTYPE_RANGES[dtype]
    return lo + (hi - lo) * (0.4 + 0.55 * index / max(n_classes - 1, 1))


def background_level(dtype: str = "uint8") -> float:
    lo, hi = DTYPE_RANGES[dtype]
    return lo + (hi - lo) * 0.1


def _finish(pixels: np.ndarray, dtype: str, rng: np.random.Generator) -> np.ndarray:
    lo, hi = DTYPE_RANGES[dtype]
    noisy = pixels + rng.normal(0.0, 0.03 * (hi - lo), pixels.shape)
    return np.clip(noisy, lo, hi).astype(dtype)


def _canvas(size: int, bands: int, dtype: str) -> np.ndarray:
    return np.full((size, size, bands), background_level(dtype), dtype=np.float64)


def write_image(path: Path, array: np.ndarray, compression: str | None = "lzw") -> None:
    """Write a (H, W, C) chip as TIFF (tifffile), PNG or JPEG (Pillow), like the export tool does."""
    path.parent.mkdir(parents=True, exist_ok=True)
    ext = path.suffix.lower()
    if ext in (".tif", ".tiff"):
        import tifffile

        if array.ndim == 3 and array.shape[2] == 1:
            array = array[..., 0]
        photometric = "rgb" if array.ndim == 3 and array.shape[2] == 3 and array.dtype == np.uint8 else "minisblack"
        planar = "contig" if array.ndim == 3 else None
        tifffile.imwrite(path, array, compression=compression, photometric=photometric, planarconfig=planar)
        return
    from PIL import Image

    data = array[..., 0] if array.ndim == 3 and array.shape[2] == 1 else array
    if data.dtype != np.uint8 or (data.ndim == 3 and data.shape[2] != 3):
        raise ValueError(f"{ext} chips must be uint8 with 1 or 3 bands (got {array.dtype}, {array.shape})")
    Image.fromarray(data).save(path, quality=95) if ext == ".jpg" else Image.fromarray(data).save(path)


def write_label_raster(path: Path, mask: np.ndarray) -> None:
    """Single-band class (or instance id) raster: uint8 when it fits, else uint16."""
    dtype = np.uint8 if int(mask.max(initial=0)) <= 255 else np.uint16
    write_image(path, mask.astype(dtype))


def _rect(rng: np.random.Generator, size: int, lo_frac: float = 0.25, hi_frac: float = 0.5) -> tuple[int, ...]:
    side = int(rng.integers(max(2, int(size * lo_frac)), max(3, int(size * hi_frac)) + 1))
    x0 = int(rng.integers(0, size - side + 1))
    y0 = int(rng.integers(0, size - side + 1))
    return x0, y0, x0 + side, y0 + side


# --- metadata ------------------------------------------------------------------------------------


def esri_json(data: object) -> str:
    """JSON the way Esri writes it: two-space indent and a space before each colon."""
    return json.dumps(data, indent=2).replace('": ', '" : ')


def _stem(index: int, digits: int) -> str:
    return f"{index:0{digits}d}"


def _win(rel: str) -> str:
    return rel.replace("/", "\\")


def _band_stats(images: list[np.ndarray]) -> list[dict]:
    stack = np.concatenate([a.reshape(-1, a.shape[-1]).astype(np.float64) for a in images])
    out = []
    for b in range(stack.shape[1]):
        col = stack[:, b]
        mean = float(col.mean())
        out.append(
            {
                "Min": float(col.min()),
                "Max": float(col.max()),
                "Mean": mean,
                "StdDev": float(col.std()),
                "M1": mean,
                "M2": float(((col - mean) ** 2).sum()),
                "Num": int(col.size),
            }
        )
    return out


def write_metadata(
    folder: Path,
    mode: str,
    *,
    classes: Classes,
    size: int,
    bands: int,
    rows: list[list[str]],
    images: list[np.ndarray],
    newer_metadata: bool = False,
    per_class: list[int] | None = None,
    pixel_stats: bool = False,
    no_color: bool = False,
    extra_emd: dict | None = None,
    extra_stats: dict | None = None,
    map_extra: int = 0,
) -> None:
    """The four metadata files: esri_accumulated_stats.json, esri_model_definition.emd, map.txt, stats.txt."""
    n = len(rows)
    per_class = per_class or [0] * len(classes)
    emd_classes = [
        {"Value": v, "Name": name, "Color": [-1, -1, -1] if no_color else list(COLORS[i % len(COLORS)])}
        for i, (v, name) in enumerate(classes)
    ]
    stats: dict = {
        "Version": 1,
        "NumBands": bands,
        "TileSizeX": size,
        "TileSizeY": size,
        "NumClasses": len(classes),
        "NumTiles": n + map_extra,
        "OutputFeatures": not pixel_stats,
        "MetaDataMode": mode,
        "Classes": [{"ClassValue": v, "ClassName": name} for v, name in classes],
    }
    if classes:
        key, per_key = (
            ("ClassPixelStats", "NumPixelsPerClass") if pixel_stats else ("FeatureStats", "NumFeaturesPerClass")
        )
        stats[key] = {"NumClasses": len(classes), "NumImagesTotal": n + map_extra, per_key: per_class}
    emd: dict = {
        "Framework": "e.g. CNTK",
        "ModelConfiguration": "some description",
        "ModelType": "e.g. ObjectDetection or ImageClassification",
        "ModelFile": "e.g. .\\trained.model",
        "ImageHeight": "e.g. 256",
        "ImageWidth": "e.g. 256",
        "ExtractBands": "e.g. [0, 1, 2]",
        "Classes": emd_classes,
    }
    if newer_metadata and images:
        band_stats = _band_stats(images)
        emd.update(
            {
                "ImageHeight": size,
                "ImageWidth": size,
                "MetaDataMode": mode,
                "ImageSpaceUsed": "MAP_SPACE",
                "AllTilesStats": [
                    {"BandName": "", **{k: s[k] for k in ("Min", "Max", "Mean", "StdDev")}} for s in band_stats
                ],
            }
        )
        stats["BandStatsState"] = [{**s, "Mean": 0, "StdDev": 0} for s in band_stats]
        cell = {"x": 0.5, "y": 0.5, "spatialReference": {"wkid": 32617, "latestWkid": 32617}}
        stats["MinCellSize"] = stats["MaxCellSize"] = emd["MinCellSize"] = emd["MaxCellSize"] = cell
    emd.update(extra_emd or {})
    stats.update(extra_stats or {})
    (folder / "esri_accumulated_stats.json").write_text(esri_json(stats))
    (folder / "esri_model_definition.emd").write_text(esri_json(emd))
    lines = ["  ".join(_win(c) for c in row) + " " for row in rows]
    last = rows[-1] if rows else ["images/000000000.tif"]
    for extra in range(map_extra):  # chips the metadata describes but the folder lacks (as in the samples)
        lines.append("  ".join(_win(c.replace(Path(c).stem, f"9{extra:08d}")) for c in last) + " ")
    (folder / "map.txt").write_bytes(("\r\n".join(lines) + "\r\n").encode())
    header = f"images = {n + map_extra} *{bands}*{size}*{size}\nclasses = {len(classes)}\n"
    (folder / "stats.txt").write_text(header + "".join(f"{name:<20}{v:>10}\n" for v, name in classes))


class _Export:
    """Shared bookkeeping for one export folder being written."""

    def __init__(
        self,
        root: Path | str,
        name: str,
        *,
        n: int,
        size: int,
        bands: int,
        dtype: str,
        ext: str,
        digits: int,
        start_index: int,
        seed: int,
        compression: str | None,
        side_files: bool,
    ) -> None:
        self.folder = Path(root) / name
        (self.folder / "images").mkdir(parents=True, exist_ok=True)
        self.n, self.size, self.bands, self.dtype = n, size, bands, dtype
        self.ext = IMAGE_EXTS[ext.lower().lstrip(".")]
        self.label_ext = ".png" if self.ext == ".jpg" else self.ext  # label rasters must be lossless
        self.digits, self.start_index, self.compression = digits, start_index, compression
        self.side_files = side_files
        self.rng = np.random.default_rng(seed)
        self.rows: list[list[str]] = []
        self.images: list[np.ndarray] = []

    def stems(self) -> Iterable[str]:
        # Non-contiguous indices (step 3) as in real exports appended with start_index.
        return (_stem(self.start_index + 3 * i, self.digits) for i in range(self.n))

    def image(self, rel: str, pixels: np.ndarray) -> str:
        chip = _finish(pixels, self.dtype, self.rng)
        write_image(self.folder / rel, chip, self.compression)
        self.images.append(chip)
        if self.side_files and rel.startswith("images/"):
            base = self.folder / rel
            base.with_name(base.name + ".aux.xml").write_text("<PAMDataset><SRS>EPSG:32617</SRS></PAMDataset>\n")
            base.with_suffix(".tfw" if self.ext == ".tif" else ".jgw").write_text("0.5\n0\n0\n-0.5\n100\n200\n")
            (base.parent / "Thumbs.db").write_bytes(b"\x00" * 16)
        return rel

    def meta(self, mode: str, classes: Classes, **kw) -> Path:
        write_metadata(
            self.folder,
            mode,
            classes=classes,
            size=self.size,
            bands=self.bands,
            rows=self.rows,
            images=self.images,
            **kw,
        )
        return self.folder


def _common(kw: dict) -> dict:
    keys = ("digits", "start_index", "seed", "compression", "side_files")
    defaults = {"digits": 9, "start_index": 0, "seed": 0, "compression": "lzw", "side_files": False}
    return {k: kw.pop(k, defaults[k]) for k in keys}


# --- builders ------------------------------------------------------------------------------------


def write_classified_tiles(
    root: Path | str,
    n: int = 16,
    size: int = 32,
    bands: int = 3,
    dtype: str = "uint8",
    classes: Classes = DEFAULT_CLASSES,
    *,
    name: str = "classified_tiles",
    ext: str = "tif",
    images2: bool = False,
    newer_metadata: bool = False,
    no_color: bool = False,
    map_extra: int = 0,
    **kw,
) -> Path:
    """Classified_Tiles: 1-2 rectangles per chip at their class level; label raster holds class values.

    With `images2=True` this is a ChangeDetection export: images2/ is the "after" chip with the
    rectangles added, images/ the plain "before" chip, and labels mark the changed pixels.
    """
    ex = _Export(root, name, n=n, size=size, bands=bands, dtype=dtype, ext=ext, **_common(kw))
    pixels_per_class = [0] * len(classes)
    for i, stem in enumerate(ex.stems()):
        canvas, mask = _canvas(size, bands, dtype), np.zeros((size, size), np.int64)
        for j in range(1 + i % 2):
            k = (i + j) % len(classes)
            x0, y0, x1, y1 = _rect(ex.rng, size, 0.3, 0.6)
            canvas[y0:y1, x0:x1] = class_level(k, len(classes), dtype)
            mask[y0:y1, x0:x1] = classes[k][0]
        row = []
        if images2:
            row.append(ex.image(f"images/{stem}{ex.ext}", _canvas(size, bands, dtype)))
            row.append(ex.image(f"images2/{stem}{ex.ext}", canvas))
        else:
            row.append(ex.image(f"images/{stem}{ex.ext}", canvas))
        write_label_raster(ex.folder / f"labels/{stem}{ex.label_ext}", mask)
        row.append(f"labels/{stem}{ex.label_ext}")
        ex.rows.append(row)
        for k, (value, _) in enumerate(classes):
            pixels_per_class[k] += int((mask == value).sum())
    if images2:
        ex.images = ex.images[0::2]  # band stats describe images/ only
    return ex.meta(
        "Classified_Tiles",
        classes,
        newer_metadata=newer_metadata,
        per_class=pixels_per_class,
        pixel_stats=True,
        no_color=no_color,
        map_extra=map_extra,
    )


def write_change_detection(root: Path | str, n: int = 16, size: int = 32, **kw) -> Path:
    """ChangeDetection = Classified_Tiles + images2/ (before in images/, after in images2/)."""
    kw.setdefault("name", "change_detection")
    kw.setdefault("classes", ((1, "change"),))
    return write_classified_tiles(root, n, size, images2=True, **kw)


def _objects(ex: _Export, classes: Classes, i: int, empty: bool) -> tuple[np.ndarray, list[tuple]]:
    canvas, objects = _canvas(ex.size, ex.bands, ex.dtype), []
    if not empty:
        for j in range(1 + i % 3):
            k = (i + j) % len(classes)
            box = _rect(ex.rng, ex.size, 0.25, 0.45)
            x0, y0, x1, y1 = box
            canvas[y0:y1, x0:x1] = class_level(k, len(classes), ex.dtype)
            objects.append((classes[k][0], box))
    return canvas, objects


def _voc_xml(stem: str, ext: str, size: int, bands: int, objects: list[tuple]) -> str:
    body = "".join(
        f"    <object>\n        <name>{value}</name>\n        <bndbox>\n"
        f"            <xmin>{x0:.2f}</xmin>\n            <ymin>{y0:.2f}</ymin>\n"
        f"            <xmax>{x1:.2f}</xmax>\n            <ymax>{y1:.2f}</ymax>\n        </bndbox>\n    </object>\n"
        for value, (x0, y0, x1, y1) in objects
    )
    return (
        f'<?xml version="1.0"?>\n<annotation>\n    <filename>{stem}{ext}</filename>\n'
        f"    <source>\n        <annotation>ArcGIS Pro 2.1</annotation>\n    </source>\n"
        f"    <size>\n        <width>{size}</width>\n        <height>{size}</height>\n"
        f"        <depth>{bands}</depth>\n    </size>\n{body}</annotation>\n"
    )


def _detection(root, n, size, bands, dtype, classes, name, ext, mode, newer_metadata, empty_every, kw) -> Path:
    ex = _Export(root, name, n=n, size=size, bands=bands, dtype=dtype, ext=ext, **_common(kw))
    per_class = [0] * len(classes)
    values = [v for v, _ in classes]
    for i, stem in enumerate(ex.stems()):
        canvas, objects = _objects(ex, classes, i, bool(empty_every) and i % empty_every == empty_every - 1)
        img = ex.image(f"images/{stem}{ex.ext}", canvas)
        if mode == "KITTI_rectangles":
            label = f"labels/{stem}.txt"
            text = "".join(
                f"  {v} 0.00 0 0 {x0:7.2f} {y0:7.2f} {x1:7.2f} {y1:7.2f} 0 0 0 0 0 0 0\n"
                for v, (x0, y0, x1, y1) in objects
            )
        else:
            label = f"labels/{stem}.xml"
            text = _voc_xml(stem, ex.ext, size, bands, objects)
        (ex.folder / "labels").mkdir(exist_ok=True)
        (ex.folder / label).write_text(text)
        ex.rows.append([img, label])
        for v, _ in objects:
            per_class[values.index(v)] += 1
    return ex.meta(mode, classes, newer_metadata=newer_metadata, per_class=per_class)


def write_pascal_voc(
    root: Path | str,
    n: int = 16,
    size: int = 32,
    bands: int = 3,
    dtype: str = "uint8",
    classes: Classes = DEFAULT_CLASSES,
    *,
    name: str = "pascal_voc",
    ext: str = "tif",
    newer_metadata: bool = False,
    empty_every: int = 0,
    **kw,
) -> Path:
    """PASCAL_VOC_rectangles: 1-3 bright squares per chip, `<name>` = class value, fractional pixel boxes.

    `empty_every=k` leaves every k-th chip without objects (a valid but empty label file).
    """
    return _detection(
        root, n, size, bands, dtype, classes, name, ext, "PASCAL_VOC_rectangles", newer_metadata, empty_every, kw
    )


def write_kitti(
    root: Path | str,
    n: int = 16,
    size: int = 32,
    bands: int = 3,
    dtype: str = "uint8",
    classes: Classes = DEFAULT_CLASSES,
    *,
    name: str = "kitti",
    ext: str = "tif",
    newer_metadata: bool = False,
    empty_every: int = 0,
    **kw,
) -> Path:
    """KITTI_rectangles: as write_pascal_voc, labels as 15-column text lines with Esri's padding."""
    return _detection(
        root, n, size, bands, dtype, classes, name, ext, "KITTI_rectangles", newer_metadata, empty_every, kw
    )


def write_rcnn_masks(
    root: Path | str,
    n: int = 16,
    size: int = 32,
    bands: int = 3,
    dtype: str = "uint8",
    classes: Classes = DEFAULT_CLASSES,
    *,
    name: str = "rcnn_masks",
    ext: str = "tif",
    newer_metadata: bool = False,
    **kw,
) -> Path:
    """RCNN_Masks: labels/<class name>/<stem> per class present; each instance a distinct positive id."""
    ex = _Export(root, name, n=n, size=size, bands=bands, dtype=dtype, ext=ext, **_common(kw))
    per_class = [0] * len(classes)
    for i, stem in enumerate(ex.stems()):
        canvas = _canvas(size, bands, dtype)
        masks = {k: np.zeros((size, size), np.int64) for k in range(len(classes))}
        for j in range(1 + i % 3):
            k = (i + j) % len(classes)
            x0, y0, x1, y1 = _rect(ex.rng, size, 0.2, 0.35)
            canvas[y0:y1, x0:x1] = class_level(k, len(classes), dtype)
            for other in masks.values():  # a later square hides what it covers
                other[y0:y1, x0:x1] = 0
            masks[k][y0:y1, x0:x1] = masks[k].max() + 1
        row = [ex.image(f"images/{stem}{ex.ext}", canvas)]
        for k, mask in masks.items():
            ids = np.unique(mask[mask > 0])
            if ids.size:
                mask = np.searchsorted(ids, mask) * (mask > 0) + (mask > 0)  # renumber 1..m after occlusion
                rel = f"labels/{classes[k][1]}/{stem}{ex.label_ext}"
                write_label_raster(ex.folder / rel, mask)
                per_class[k] += int(ids.size)
                row.append(rel)
        ex.rows.append(row)
    return ex.meta("RCNN_Masks", classes, newer_metadata=newer_metadata, per_class=per_class)


def write_labeled_tiles(
    root: Path | str,
    n: int = 16,
    size: int = 32,
    bands: int = 3,
    dtype: str = "uint8",
    classes: Classes = DEFAULT_CLASSES,
    *,
    name: str = "labeled_tiles",
    ext: str = "tif",
    newer_metadata: bool = False,
    **kw,
) -> Path:
    """Labeled_Tiles: chip i has class i mod K, drawn as the whole chip at that class's level."""
    ex = _Export(root, name, n=n, size=size, bands=bands, dtype=dtype, ext=ext, **_common(kw))
    per_class = [0] * len(classes)
    for i, stem in enumerate(ex.stems()):
        k = i % len(classes)
        canvas = np.full((size, size, bands), class_level(k, len(classes), dtype))
        img = ex.image(f"images/{stem}{ex.ext}", canvas)
        (ex.folder / "labels").mkdir(exist_ok=True)
        objects = [(classes[k][0], (0, 0, size, size))]
        (ex.folder / f"labels/{stem}.xml").write_text(_voc_xml(stem, ex.ext, size, bands, objects))
        ex.rows.append([img, f"labels/{stem}.xml"])
        per_class[k] += 1
    return ex.meta("Labeled_Tiles", classes, newer_metadata=newer_metadata, per_class=per_class)


def write_multilabeled_tiles(
    root: Path | str,
    n: int = 16,
    size: int = 32,
    bands: int = 3,
    dtype: str = "uint8",
    classes: Classes = ((1, "a"), (2, "b"), (3, "c")),
    *,
    name: str = "multilabeled_tiles",
    ext: str = "tif",
    label_names: bool = False,
    **kw,
) -> Path:
    """MultiLabeled_Tiles: vertical stripe k is bright when class k is present; `<name>` = "v1,v2".

    `label_names=True` writes class names instead of values in `<name>` (Esri's own files are unverified).
    """
    ex = _Export(root, name, n=n, size=size, bands=bands, dtype=dtype, ext=ext, **_common(kw))
    per_class, k_count = [0] * len(classes), len(classes)
    for i, stem in enumerate(ex.stems()):
        present = [k for k in range(k_count) if (i + 1) >> k & 1] or [i % k_count]
        canvas = _canvas(size, bands, dtype)
        for k in present:
            canvas[:, k * size // k_count : (k + 1) * size // k_count] = class_level(k_count - 1, k_count, dtype)
            per_class[k] += 1
        img = ex.image(f"images/{stem}{ex.ext}", canvas)
        text = ",".join(str(classes[k][1] if label_names else classes[k][0]) for k in present)
        (ex.folder / "labels").mkdir(exist_ok=True)
        (ex.folder / f"labels/{stem}.xml").write_text(_voc_xml(stem, ex.ext, size, bands, [(text, (0, 0, size, size))]))
        ex.rows.append([img, f"labels/{stem}.xml"])
    return ex.meta("MultiLabeled_Tiles", classes, per_class=per_class)


def write_imagenet(
    root: Path | str,
    n: int = 16,
    size: int = 32,
    bands: int = 3,
    dtype: str = "uint8",
    classes: Classes = DEFAULT_CLASSES,
    *,
    name: str = "imagenet",
    ext: str = "tif",
    folder_by: str = "value",
    **kw,
) -> Path:
    """Imagenet: images/<class>/<stem>; the class folder is the value (`folder_by="name"`: the name)."""
    ex = _Export(root, name, n=n, size=size, bands=bands, dtype=dtype, ext=ext, **_common(kw))
    per_class = [0] * len(classes)
    for i, stem in enumerate(ex.stems()):
        k = i % len(classes)
        sub = str(classes[k][0] if folder_by == "value" else classes[k][1])
        canvas = np.full((size, size, bands), class_level(k, len(classes), dtype))
        ex.rows.append([ex.image(f"images/{sub}/{stem}{ex.ext}", canvas)])
        per_class[k] += 1
    return ex.meta("Imagenet", classes, per_class=per_class)


def write_export_tiles(
    root: Path | str,
    n: int = 8,
    size: int = 32,
    bands: int = 3,
    dtype: str = "uint8",
    *,
    name: str = "export_tiles",
    ext: str = "tif",
    images2: bool = False,
    mode: str = "Export_Tiles",
    **kw,
) -> Path:
    """Export_Tiles (no labels). `images2=True`: Pix2Pix pairs, images2 = the chip with bright squares."""
    ex = _Export(root, name, n=n, size=size, bands=bands, dtype=dtype, ext=ext, **_common(kw))
    for stem in ex.stems():
        canvas = _canvas(size, bands, dtype)
        x0, y0, x1, y1 = _rect(ex.rng, size)
        canvas[y0:y1, x0:x1] = class_level(0, 2, dtype)
        row = [ex.image(f"images/{stem}{ex.ext}", canvas)]
        if images2:
            canvas[y0:y1, x0:x1] = class_level(1, 2, dtype)
            row.append(ex.image(f"images2/{stem}{ex.ext}", canvas))
        ex.rows.append(row)
    if images2:
        ex.images = ex.images[0::2]
    return ex.meta(mode, ())


def write_pix2pix(root: Path | str, n: int = 8, size: int = 32, **kw) -> Path:
    """Pix2Pix = Export_Tiles + images2/."""
    kw.setdefault("name", "pix2pix")
    return write_export_tiles(root, n, size, images2=True, **kw)


def write_cyclegan(root: Path | str, n: int = 8, size: int = 32, *, name: str = "cyclegan", **kw) -> Path:
    """CycleGAN: a parent folder holding two unpaired exports A/ and B/ (MetaDataMode CycleGAN)."""
    parent = Path(root) / name
    write_export_tiles(parent, n, size, name="A", mode="CycleGAN", seed=1, **kw)
    write_export_tiles(parent, n, size, name="B", mode="CycleGAN", seed=2, **kw)
    return parent


def write_panoptic(
    root: Path | str,
    n: int = 8,
    size: int = 32,
    bands: int = 3,
    dtype: str = "uint8",
    classes: Classes = ((1, "ground"), (2, "tree")),
    instance_classes: Classes = ((2, "tree"),),
    *,
    name: str = "panoptic",
    ext: str = "tif",
    **kw,
) -> Path:
    """Panoptic_Segmentation: labels/ semantic raster + labels2/<instance class name>/<stem> instance ids."""
    ex = _Export(root, name, n=n, size=size, bands=bands, dtype=dtype, ext=ext, **_common(kw))
    inst_values = {v for v, _ in instance_classes}
    per_class = [0] * len(classes)
    for i, stem in enumerate(ex.stems()):
        canvas, semantic = _canvas(size, bands, dtype), np.zeros((size, size), np.int64)
        instances = {v: np.zeros((size, size), np.int64) for v in inst_values}
        for j in range(2):
            k = (i + j) % len(classes)
            value = classes[k][0]
            x0, y0, x1, y1 = _rect(ex.rng, size, 0.2, 0.4)
            canvas[y0:y1, x0:x1] = class_level(k, len(classes), dtype)
            semantic[y0:y1, x0:x1] = value
            for inst in instances.values():
                inst[y0:y1, x0:x1] = 0
            if value in instances:
                instances[value][y0:y1, x0:x1] = instances[value].max() + 1
        row = [ex.image(f"images/{stem}{ex.ext}", canvas)]
        write_label_raster(ex.folder / f"labels/{stem}{ex.label_ext}", semantic)
        row.append(f"labels/{stem}{ex.label_ext}")
        for value, iname in instance_classes:
            if instances[value].any():
                write_label_raster(ex.folder / f"labels2/{iname}/{stem}{ex.label_ext}", instances[value])
        for k, (value, _) in enumerate(classes):
            per_class[k] += int((semantic == value).sum())
        ex.rows.append(row)
    extra = {"Panoptic_Segmentation_Instance_Classes": [{"Value": v, "Name": nm} for v, nm in instance_classes]}
    return ex.meta("Panoptic_Segmentation", classes, per_class=per_class, pixel_stats=True, extra_emd=extra)


WRITERS = {
    "Classified_Tiles": write_classified_tiles,
    "PASCAL_VOC_rectangles": write_pascal_voc,
    "KITTI_rectangles": write_kitti,
    "RCNN_Masks": write_rcnn_masks,
    "Labeled_Tiles": write_labeled_tiles,
    "MultiLabeled_Tiles": write_multilabeled_tiles,
    "Imagenet": write_imagenet,
    "Export_Tiles": write_export_tiles,
    "Pix2Pix": write_pix2pix,
    "CycleGAN": write_cyclegan,
    "ChangeDetection": write_change_detection,
    "Panoptic_Segmentation": write_panoptic,
}

from tests.builders.broken import (  # noqa: E402  (re-exported: one import line for test authors)
    box_outside_chip,
    corrupt_chip,
    empty_label_file,
    mismatch_stem,
    remove_file,
    set_label_value,
    truncate_chip,
)
from tests.builders.media import write_image_captioning, write_object_tracking  # noqa: E402  (builds on this)

WRITERS.update({"ImageCaptioning": write_image_captioning, "ObjectTracking": write_object_tracking})

__all__ = [name for name in dir() if name.startswith("write_")] + [
    "WRITERS",
    "class_level",
    "background_level",
    "box_outside_chip",
    "corrupt_chip",
    "empty_label_file",
    "mismatch_stem",
    "remove_file",
    "set_label_value",
    "truncate_chip",
]
