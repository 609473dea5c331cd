"""One reader per export metadata format: pair chips with their labels by stem, parse labels. No torch.

Chips are enumerated from images/ (never from map.txt, which may list chips that are absent) and
paired by file stem; side files are ignored (export-format.md §1.2, §4). Targets come out in
*class-value* space; the torch datasets map values to model indices.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from gpjobs.export.chips import IMAGE_EXTENSIONS
from gpjobs.export.metadata import FRAMES_DIR, MASKS_DIR, ExportMeta, RawClass
from gpjobs.paths import inside_store, read_bytes_in_store

Box = tuple[float, float, float, float]  # xmin, ymin, xmax, ymax in chip pixels


class LabelError(ValueError):
    """A label file that cannot be parsed."""


@dataclass
class ChipRecord:
    """One training sample on disk. `objects` is filled when text labels were parsed during validation."""

    stem: str
    image: Path
    folder: int = 0
    image2: Path | None = None
    label: Path | None = None
    masks: list[tuple[int, Path]] = field(default_factory=list)  # (class value, instance-id raster)
    value: int | None = None  # Imagenet: class value from the parent folder
    objects: list[tuple[int, Box]] | None = None  # detection / labeled tiles, parsed (value, box)
    root: Path = Path("/")  # the root of the export's store: its files are opened inside it (paths.open_in_store)


# Called as report(kind, path, detail) by the readers; the report module groups them.
Report = Callable[[str, Path, str], None]


def _listable(directory: Path, store_root: Path, report: Report) -> bool:
    """A folder of the export that may be listed: it exists and does not lead out of the store."""
    if not directory.is_dir():
        return False
    if not inside_store(directory, store_root):
        report("outside_store", directory, "")
        return False
    return True


def _images(folder: Path, store_root: Path, report: Report, recursive: bool = False) -> dict[str, Path]:
    root = folder / "images"
    found: dict[str, Path] = {}
    if not _listable(root, store_root, report):
        return found
    paths = root.rglob("*") if recursive else root.iterdir()
    for path in sorted(paths):
        if path.suffix.lower() in IMAGE_EXTENSIONS and path.is_file():
            found.setdefault(path.stem if not recursive else f"{path.parent.name}/{path.stem}", path)
    return found


def _by_stem(directory: Path, suffixes: frozenset[str] | set[str], store_root: Path, report: Report) -> dict[str, Path]:
    if not _listable(directory, store_root, report):
        return {}
    return {p.stem: p for p in sorted(directory.iterdir()) if p.suffix.lower() in suffixes and p.is_file()}


def _class_for_folder(name: str, classes: list[RawClass]) -> RawClass | None:
    for c in classes:
        if c.name == name:
            return c
    for c in classes:
        if str(c.value) == name:
            return c
    return None


def list_records(meta: ExportMeta, folder_index: int, report: Report) -> list[ChipRecord]:
    """Pair every chip of one export with its label files; unpaired files are reported, not used."""
    folder, fmt, root = meta.folder, meta.format, meta.root
    if fmt == "CycleGAN":
        a, b = _images(folder / "A", root, report), _images(folder / "B", root, report)
        b_paths = list(b.values())
        if not b_paths:
            return []
        return [
            ChipRecord(stem, path, folder_index, root=root, image2=b_paths[i % len(b_paths)])
            for i, (stem, path) in enumerate(a.items())
        ]
    if fmt == "Imagenet":
        records = []
        for path in _images(folder, root, report, recursive=True).values():
            sub = path.parent.name
            if path.parent == folder / "images":
                report("image_without_class", path, "")
                continue
            cls = _class_for_folder(sub, meta.classes)
            if cls is None:
                report("unknown_class_folder", path.parent, sub)
                continue
            records.append(ChipRecord(path.stem, path, folder_index, root=root, value=cls.value))
        return records
    if fmt == "ObjectTracking":
        return list_tracking_frames(meta, folder_index, report)
    images = _images(folder, root, report)
    records = [ChipRecord(stem, path, folder_index, root=root) for stem, path in images.items()]
    if fmt in ("Pix2Pix", "ChangeDetection"):
        second = _by_stem(folder / "images2", IMAGE_EXTENSIONS, root, report)
        for rec in records:
            rec.image2 = second.get(rec.stem)
            if rec.image2 is None:
                report("missing_image2", rec.image, "")
        for stem, path in second.items():
            if stem not in images:
                report("orphan_image2", path, "")
        records = [r for r in records if r.image2 is not None]
    if fmt in ("Export_Tiles", "Pix2Pix", "CycleGAN"):
        return records
    if fmt == "RCNN_Masks":
        return _pair_masks(folder / "labels", records, meta.classes, report, root)
    suffixes = {
        "PASCAL_VOC_rectangles": {".xml"},
        "Labeled_Tiles": {".xml"},
        "MultiLabeled_Tiles": {".xml"},
        "ImageCaptioning": {".xml"},
        "KITTI_rectangles": {".txt"},
    }.get(fmt, IMAGE_EXTENSIONS)
    labels = _by_stem(folder / "labels", suffixes, root, report)
    for rec in records:
        rec.label = labels.get(rec.stem)
        if rec.label is None:
            report("image_without_label", rec.image, "")
    for stem, path in labels.items():
        if stem not in images:
            report("label_without_image", path, "")
    records = [r for r in records if r.label is not None]
    if fmt == "Panoptic_Segmentation":
        _pair_masks(folder / "labels2", records, meta.instance_classes or meta.classes, report, root, required=False)
    return records


def _pair_masks(
    labels: Path,
    records: list[ChipRecord],
    classes: list[RawClass],
    report: Report,
    store_root: Path,
    required: bool = True,
) -> list[ChipRecord]:
    by_stem = {r.stem: r for r in records}
    if _listable(labels, store_root, report):
        for sub in sorted(p for p in labels.iterdir() if p.is_dir()):
            cls = _class_for_folder(sub.name, classes)
            if cls is None:
                report("unknown_class_folder", sub, sub.name)
                continue
            for stem, path in _by_stem(sub, IMAGE_EXTENSIONS, store_root, report).items():
                rec = by_stem.get(stem)
                if rec is None:
                    report("label_without_image", path, "")
                else:
                    rec.masks.append((cls.value, path))
    if not required:
        return records
    for rec in records:
        if not rec.masks:
            report("image_without_label", rec.image, "")
    return [r for r in records if r.masks]


# --- label parsing -----------------------------------------------------------------------------


def parse_voc(path: Path, root: str | Path = "/") -> list[tuple[str, Box]]:
    """(name text, box) per `<object>` of a PASCAL VOC / Labeled Tiles XML file (read inside store `root`)."""
    data = read_bytes_in_store(path, root)
    if not data.strip():
        raise LabelError("the label file is empty")
    try:
        document = ET.fromstring(data)
    except ET.ParseError as exc:
        raise LabelError(f"not valid XML ({exc})") from exc
    objects: list[tuple[str, Box]] = []
    for obj in document.iter("object"):
        name = (obj.findtext("name") or "").strip()
        box = obj.find("bndbox")
        coords: Box = (0.0, 0.0, 0.0, 0.0)
        if box is not None:
            try:
                x0, y0, x1, y1 = (float(box.findtext(k) or "nan") for k in ("xmin", "ymin", "xmax", "ymax"))
                coords = (x0, y0, x1, y1)
            except ValueError as exc:
                raise LabelError(f"a <bndbox> coordinate is not a number ({exc})") from exc
        objects.append((name, coords))
    return objects


_SPACES = re.compile(r"\s+")


def parse_kitti(path: Path, root: str | Path = "/") -> list[tuple[str, Box]]:
    """(type text, box) per line of a KITTI label: column 0 the class value, columns 4-7 the box."""
    text = read_bytes_in_store(path, root).decode("utf-8", "replace")
    if not text.strip():
        raise LabelError("the label file is empty")
    objects: list[tuple[str, Box]] = []
    for number, line in enumerate(text.splitlines(), 1):
        cols = _SPACES.split(line.strip())
        if cols == [""]:
            continue
        if len(cols) < 8:
            raise LabelError(f"line {number} has {len(cols)} columns, KITTI needs at least 8")
        try:
            x0, y0, x1, y1 = (float(c) for c in cols[4:8])
            objects.append((cols[0], (x0, y0, x1, y1)))
        except ValueError as exc:
            raise LabelError(f"line {number}: box is not numeric ({exc})") from exc
    return objects


def value_of(text: str, classes: list[RawClass]) -> int | None:
    """Class value for a label's class text: the value itself (what Esri writes) or a class name."""
    text = text.strip()
    if re.fullmatch(r"-?\d+(\.0+)?", text):
        return int(float(text))
    for c in classes:
        if c.name == text:
            return c.value
    return None


def instances_from_mask(mask: np.ndarray) -> list[np.ndarray]:
    """Boolean masks, one per positive instance id of an instance-id raster."""
    return [mask == i for i in np.unique(mask) if i > 0]


def box_of(mask: np.ndarray) -> Box:
    ys, xs = np.nonzero(mask)
    return float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)


def _frame_files(directory: Path, store_root: Path, report: Report) -> dict[str, Path]:
    if not _listable(directory, store_root, report):
        return {}
    return {p.stem: p for p in sorted(directory.iterdir()) if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()}


def list_tracking_frames(meta: ExportMeta, folder_index: int, report: Report) -> list[ChipRecord]:
    """One record per annotated frame (stem "<sequence>/<frame>"), sequences and frames in name order."""
    root = Path(meta.emd.get("root") or meta.folder)
    store_root = meta.root
    frames_dir, masks_dir = root / FRAMES_DIR, root / MASKS_DIR
    records: list[ChipRecord] = []
    if not _listable(frames_dir, store_root, report):
        return records
    for seq in sorted(p for p in frames_dir.iterdir() if p.is_dir()):
        frames, masks = _frame_files(seq, store_root, report), _frame_files(masks_dir / seq.name, store_root, report)
        for stem, image in frames.items():
            if stem in masks:
                records.append(
                    ChipRecord(f"{seq.name}/{stem}", image, folder_index, root=store_root, label=masks[stem])
                )
            else:
                report("frame_without_annotation", image, "")
        for stem, mask in masks.items():
            if stem not in frames:
                report("label_without_image", mask, "")
    listable_masks = masks_dir.is_dir() and _listable(masks_dir, store_root, report)
    for seq in sorted(p for p in masks_dir.iterdir() if p.is_dir()) if listable_masks else []:
        if not (frames_dir / seq.name).is_dir():
            report("label_without_image", seq, "no frames folder of that name")
    return records
