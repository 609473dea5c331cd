"""The validation report a GIS analyst can act on, checked before any training. No torch.

`inspect_folders(folders)` is the fast check (the server may call it at submit time): it pairs every
chip by stem, stats every file (empty files are caught everywhere) and decodes a bounded, evenly
spread sample of chips and labels. `scan_folders(folders, full=True)` decodes everything; the
training child runs it before training and `gpjobs inspect` uses it by default.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from gpjobs.export.captions import caption_problem
from gpjobs.export.chips import ChipReadError, read_chip, read_label_raster
from gpjobs.export.info import BACKGROUND_FORMATS, ClassInfo
from gpjobs.export.metadata import ExportMeta, MetadataError, RawClass, read_export_meta
from gpjobs.export.readers import ChipRecord, LabelError, list_records, parse_kitti, parse_voc, value_of
from gpjobs.export.tracking import check_frame
from gpjobs.paths import PathError

FAST_SAMPLE = 64
SHOW_FILES = 5
BOX_TOLERANCE = 1.0  # pixels a box may stick out of the chip before it is an error (Esri clips to the chip)

# kind -> (is_error, what is wrong, how to fix it)
PROBLEMS: dict[str, tuple[bool, str, str]] = {
    "unreadable_chip": (
        True,
        "image chips cannot be decoded (truncated or corrupt)",
        "re-export them, or delete each of these chips together with its label file",
    ),
    "unreadable_label": (
        True,
        "label rasters cannot be decoded (truncated or corrupt)",
        "re-export them, or delete each of these labels together with its chip",
    ),
    "empty_label": (
        True,
        "label files are empty",
        "re-export the training data, or delete these label files together with their chips",
    ),
    "bad_label": (True, "label files cannot be parsed", "re-export the training data or repair these files"),
    "unknown_value": (
        True,
        "label files use class values that are not in the class list of esri_model_definition.emd",
        "re-export with a class list that includes every value, or correct these label files",
    ),
    "box_outside": (
        True,
        "boxes lie outside their chip",
        "fix the coordinates in these label files (boxes must lie within the chip)",
    ),
    "no_class_in_label": (True, "label files name no class", "each Labeled_Tiles label needs one <object>"),
    "outside_store": (
        True,
        "files or folders lead outside the data store through a symbolic link (or are not regular files)",
        "replace each link with the file or folder itself, or with a link that stays inside the store",
    ),
    "unknown_class_folder": (
        True,
        "folders are named after no class in esri_model_definition.emd",
        "rename them to a class name or value of the .emd, or add the class",
    ),
    "band_mismatch": (
        True,
        "chips have a different band count than the export",
        "all chips of a training set need the same bands; re-export them",
    ),
    "dtype_mismatch": (
        True,
        "chips have a different pixel type than the others",
        "all chips need the same pixel type; re-export them",
    ),
    "label_size_mismatch": (True, "label rasters differ in size from their chips", "re-export these chips"),
    "degenerate_box": (False, "boxes have no area and are ignored", "remove them from the label files"),
    "no_objects": (False, "label files hold no objects; those chips train as background only", ""),
    "image_without_label": (
        False,
        "chips have no label file with the same name and are left out",
        "re-export, or add the missing labels",
    ),
    "label_without_image": (False, "label files have no chip with the same name and are ignored", ""),
    "missing_image2": (False, "chips have no images2/ counterpart and are left out", ""),
    "orphan_image2": (False, "images2/ chips have no images/ counterpart and are ignored", ""),
    "image_without_class": (False, "chips lie directly in images/ instead of a class folder and are left out", ""),
    "size_mismatch": (False, "chips differ from the export's tile size; they are resized to the chip size", ""),
    "no_caption": (
        True,
        "caption label files hold no caption text",
        "each label needs an <object> whose <name> is the caption; re-export or fill them in",
    ),
    "object_not_in_meta": (
        True,
        "annotations hold object ids that meta.json does not list for their sequence",
        "add the objects (with their category) to meta.json, or remove meta.json",
    ),
    "frame_without_annotation": (
        False,
        "frames have no annotation of the same name in Annotations/ and are left out",
        "",
    ),
    "frame_without_objects": (False, "annotations hold no object; those frames are left out", ""),
}


@dataclass
class DataReport:
    """What `gpjobs inspect` prints and what a failed job's messages carry."""

    format: str | None = None
    folders: list[str] = field(default_factory=list)
    chips: int = 0
    chip_size: tuple[int, int] | None = None  # (height, width)
    bands: int | None = None
    dtype: str | None = None
    classes: list[dict[str, Any]] = field(default_factory=list)  # {value, name, count}
    count_unit: str = ""  # what `count` counts: pixels | objects | chips | instances
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    checked_chips: int = 0  # chips decoded; < chips in the fast (sampled) check
    listed_in_map: int = 0  # rows of map.txt (may describe chips that are absent)

    @property
    def ok(self) -> bool:
        return not self.errors

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": self.format,
            "folders": self.folders,
            "chips": self.chips,
            "chip_size": list(self.chip_size) if self.chip_size else None,
            "bands": self.bands,
            "dtype": self.dtype,
            "classes": self.classes,
            "count_unit": self.count_unit,
            "errors": self.errors,
            "warnings": self.warnings,
            "checked_chips": self.checked_chips,
            "listed_in_map": self.listed_in_map,
            "ok": self.ok,
        }

    def to_text(self) -> str:
        size = f"{self.chip_size[0]}x{self.chip_size[1]}" if self.chip_size else "?"
        lines = [
            f"format:  {self.format or '?'}",
            f"folders: {', '.join(self.folders)}",
            f"chips:   {self.chips} present (map.txt lists {self.listed_in_map}; {self.checked_chips} decoded)",
            f"chip:    {size} px, {self.bands if self.bands is not None else '?'} bands, {self.dtype or '?'}",
        ]
        if self.classes:
            lines.append(f"classes ({self.count_unit}):")
            lines += [f"  {c['value']:>6}  {c['name']:<24} {c['count']}" for c in self.classes]
        lines += [f"ERROR:   {e}" for e in self.errors] + [f"warning: {w}" for w in self.warnings]
        return "\n".join(lines)


class DataError(Exception):
    """The training data cannot be used; `.report` holds every problem, str() names files and fixes."""

    def __init__(self, report: DataReport) -> None:
        self.report = report
        head = f"The training data in {', '.join(report.folders) or '?'} cannot be used"
        super().__init__(head + ":\n" + "\n".join(f"- {e}" for e in report.errors))


class _Problems:
    def __init__(self, folders: Sequence[Path]) -> None:
        self.folders = list(folders)
        self.found: dict[str, list[tuple[Path, str]]] = defaultdict(list)
        self.direct_errors: list[str] = []
        self.direct_warnings: list[str] = []

    def __call__(self, kind: str, path: Path, detail: str = "") -> None:
        self.found[kind].append((path, detail))

    def _name(self, path: Path) -> str:
        for folder in self.folders:
            try:
                rel = path.relative_to(folder).as_posix()
            except ValueError:
                continue
            return f"{folder.name}/{rel}" if len(self.folders) > 1 else rel
        return str(path)

    def render(self, report: DataReport) -> None:
        report.errors.extend(self.direct_errors)
        report.warnings.extend(self.direct_warnings)
        for kind, hits in self.found.items():
            is_error, what, fix = PROBLEMS[kind]
            shown = ", ".join(self._name(p) + (f" ({d})" if d else "") for p, d in hits[:SHOW_FILES])
            more = f" and {len(hits) - SHOW_FILES} more" if len(hits) > SHOW_FILES else ""
            text = f"{len(hits)} {what}: {shown}{more}." + (f" Fix: {fix}." if fix else "")
            (report.errors if is_error else report.warnings).append(text)


@dataclass
class Scan:
    """A validated data set: the report plus what the torch side needs to build datasets."""

    report: DataReport
    metas: list[ExportMeta]
    records: list[ChipRecord]
    classes: list[ClassInfo]


def _merge_classes(metas: list[ExportMeta], problems: _Problems) -> list[ClassInfo]:
    first = metas[0]
    for other in metas[1:]:
        a = {c.value: c for c in first.classes}
        b = {c.value: c for c in other.classes}
        for value in sorted(set(a) | set(b)):
            if value not in b or value not in a:
                has, lacks = (first, other) if value in a else (other, first)
                cls = a.get(value) or b[value]
                problems.direct_errors.append(
                    f"class {value} '{cls.name}' is in {has.folder} but not in {lacks.folder}; folders can only be "
                    "trained together when their class lists agree. Fix: re-export them with the same classes"
                )
            elif a[value].name != b[value].name:
                problems.direct_errors.append(
                    f"class {value} is named '{a[value].name}' in {first.folder} but '{b[value].name}' in "
                    f"{other.folder}; folders can only be trained together when their class lists agree. "
                    "Fix: re-export them with the same class names"
                )
    merged: dict[int, RawClass] = {}
    for meta in metas:
        for c in meta.classes:
            merged.setdefault(c.value, c)
    skip_zero = first.format in BACKGROUND_FORMATS
    return [ClassInfo(c.value, c.name, c.color) for v, c in sorted(merged.items()) if not (skip_zero and v == 0)]


def _spread(n: int, k: int | None) -> set[int]:
    if k is None or n <= k:
        return set(range(n))
    return {int(i) for i in np.linspace(0, n - 1, k).round()}


class _Checker:
    """Decodes chips and labels, counting per class and recording problems."""

    def __init__(
        self,
        fmt: str,
        classes: list[ClassInfo],
        raw_classes: list[RawClass],
        problems: _Problems,
        expected_bands: int | None,
    ) -> None:
        self.fmt, self.problems = fmt, problems
        self.values = {c.value for c in classes}
        self.raw_classes = raw_classes
        self.counts: dict[int, int] = defaultdict(int)
        self.bands = expected_bands
        self.dtype: str | None = None
        self.sizes: dict[tuple[int, int], int] = defaultdict(int)
        self.metas: list[ExportMeta] = []  # per-folder metadata (ObjectTracking checks against meta.json)

    def chip(self, path: Path, root: Path) -> tuple[int, int] | None:
        try:
            array = read_chip(path, root=root)
        except ChipReadError as exc:
            self.problems("unreadable_chip", path, str(exc).split(": ", 1)[-1][:80])
            return None
        except PathError:
            self.problems("outside_store", path, "")
            return None
        h, w, bands = array.shape
        if self.bands is None:
            self.bands = bands
        elif bands != self.bands:
            self.problems("band_mismatch", path, f"{bands} bands, expected {self.bands}")
        if self.dtype is None:
            self.dtype = str(array.dtype)
        elif str(array.dtype) != self.dtype:
            self.problems("dtype_mismatch", path, f"{array.dtype}, expected {self.dtype}")
        self.sizes[(h, w)] += 1
        return h, w

    def raster(self, path: Path, shape: tuple[int, int] | None, root: Path) -> np.ndarray | None:
        try:
            mask = read_label_raster(path, root=root)
        except ChipReadError as exc:
            self.problems("unreadable_label", path, str(exc).split(": ", 1)[-1][:80])
            return None
        except PathError:
            self.problems("outside_store", path, "")
            return None
        if shape is not None and mask.shape != shape:
            self.problems("label_size_mismatch", path, f"{mask.shape[0]}x{mask.shape[1]} vs chip {shape[0]}x{shape[1]}")
            return None
        return mask

    def class_raster(self, rec: ChipRecord, shape: tuple[int, int] | None) -> None:
        label = rec.label
        assert label is not None  # list_records keeps only the chips that have a label
        mask = self.raster(label, shape, rec.root)
        if mask is None:
            return
        values, counts = np.unique(mask, return_counts=True)
        unknown = [int(v) for v in values if v != 0 and int(v) not in self.values]
        if unknown:
            self.problems("unknown_value", label, "values " + ", ".join(map(str, unknown[:5])))
        for v, n in zip(values, counts):
            if int(v) in self.values:
                self.counts[int(v)] += int(n)

    def text_objects(self, rec: ChipRecord, shape: tuple[int, int] | None) -> None:
        label = rec.label
        assert label is not None  # list_records keeps only the chips that have a label
        try:
            parse = parse_kitti if self.fmt == "KITTI_rectangles" else parse_voc
            parsed = parse(label, rec.root)
        except LabelError as exc:
            self.problems(
                "empty_label" if "empty" in str(exc) else "bad_label",
                label,
                "" if "empty" in str(exc) else str(exc)[:80],
            )
            return
        except PathError:
            self.problems("outside_store", label, "")
            return
        except OSError as exc:
            self.problems("bad_label", label, f"cannot be read ({exc.strerror or type(exc).__name__})")
            return
        objects: list[tuple[int, tuple[float, float, float, float]]] = []
        if self.fmt == "MultiLabeled_Tiles":
            texts = [t for name, _ in parsed for t in name.split(",") if t.strip()]
            parsed = [(t, (0.0, 0.0, 0.0, 0.0)) for t in texts]
        for text, box in parsed:
            value = value_of(text, self.raw_classes)
            if value is None or value not in self.values:
                self.problems("unknown_value", label, f"value {text!r}")
                continue
            if self.fmt in ("Labeled_Tiles", "MultiLabeled_Tiles"):
                objects.append((value, box))
                continue
            fixed = self._box(label, box, shape)
            if fixed is not None:
                objects.append((value, fixed))
        if self.fmt == "Labeled_Tiles":
            objects = objects[:1]  # arcgis.learn takes the first object's class
            if not objects and not parsed:
                self.problems("no_class_in_label", label, "")
        elif not parsed:
            self.problems("no_objects", label, "")
        for value, _ in objects:
            self.counts[value] += 1
        rec.objects = objects

    def _box(self, label: Path, box, shape) -> tuple[float, float, float, float] | None:
        x0, y0, x1, y1 = box
        if not all(np.isfinite(box)) or x1 - x0 < 1e-3 or y1 - y0 < 1e-3:
            self.problems("degenerate_box", label, f"{x0:g},{y0:g},{x1:g},{y1:g}")
            return None
        if shape is not None:
            h, w = shape
            if x0 < -BOX_TOLERANCE or y0 < -BOX_TOLERANCE or x1 > w + BOX_TOLERANCE or y1 > h + BOX_TOLERANCE:
                self.problems("box_outside", label, f"box {x0:g},{y0:g},{x1:g},{y1:g} in a {w}x{h} chip")
                return None
            x0, y0, x1, y1 = max(x0, 0.0), max(y0, 0.0), min(x1, float(w)), min(y1, float(h))
        return float(x0), float(y0), float(x1), float(y1)

    def instance_masks(self, rec: ChipRecord, shape: tuple[int, int] | None, count: bool = True) -> None:
        for value, path in rec.masks:
            mask = self.raster(path, shape, rec.root)
            if mask is not None and count:
                self.counts[value] += int(np.count_nonzero(np.unique(mask)))


def _check_record(checker: _Checker, rec: ChipRecord) -> None:
    fmt = checker.fmt
    shape = checker.chip(rec.image, rec.root)
    if rec.image2 is not None:
        try:
            read_chip(rec.image2, root=rec.root)
        except ChipReadError as exc:
            checker.problems("unreadable_chip", rec.image2, str(exc).split(": ", 1)[-1][:80])
        except PathError:
            checker.problems("outside_store", rec.image2, "")
    if fmt in ("Classified_Tiles", "ChangeDetection", "Panoptic_Segmentation"):
        checker.class_raster(rec, shape)
        if fmt == "Panoptic_Segmentation":
            checker.instance_masks(rec, shape, count=False)
    elif fmt in ("PASCAL_VOC_rectangles", "KITTI_rectangles", "Labeled_Tiles", "MultiLabeled_Tiles"):
        checker.text_objects(rec, shape)
    elif fmt == "RCNN_Masks":
        checker.instance_masks(rec, shape)
    elif fmt == "Imagenet" and rec.value is not None:
        checker.counts[rec.value] += 1
    elif fmt == "ImageCaptioning":
        assert rec.label is not None  # list_records keeps only the chips that have a label
        problem = caption_problem(rec.label, rec.root)
        if problem is not None:
            checker.problems(problem[0], rec.label, problem[1])
    elif fmt == "ObjectTracking":
        check_frame(checker, rec, shape, checker.metas[rec.folder])


COUNT_UNITS = {
    "Classified_Tiles": "pixels",
    "ChangeDetection": "pixels",
    "Panoptic_Segmentation": "pixels",
    "PASCAL_VOC_rectangles": "objects",
    "KITTI_rectangles": "objects",
    "RCNN_Masks": "instances",
    "Labeled_Tiles": "chips",
    "MultiLabeled_Tiles": "chips",
    "Imagenet": "chips",
    "ObjectTracking": "object frames",
}


def scan_folders(
    folders: Sequence[str | Path],
    *,
    roots: Sequence[str | Path] | None = None,
    full: bool = True,
    sample: int = FAST_SAMPLE,
) -> Scan:
    """Read, pair and check every export folder; `full=False` decodes only `sample` spread chips.

    `roots[i]` is the root of folder i's store: nothing outside it is read (paths.open_in_store). None:
    the user's own local folders (root `/`).
    """
    paths = [Path(f) for f in folders]
    problems = _Problems(paths)
    report = DataReport(folders=[str(p) for p in paths])
    metas: list[ExportMeta] = []
    for path, root in zip(paths, roots if roots is not None else ["/"] * len(paths), strict=True):
        try:
            metas.append(read_export_meta(path, root))
        except (MetadataError, OSError) as exc:
            problems.direct_errors.append(str(exc))
    if not metas:
        problems.render(report)
        return Scan(report, [], [], [])
    fmt = metas[0].format
    report.format = fmt
    for meta in metas[1:]:
        if meta.format != fmt:
            problems.direct_errors.append(
                f"{meta.folder} is {meta.format} but {metas[0].folder} is {fmt}; folders trained together need "
                "the same metadata format"
            )
        if meta.bands and metas[0].bands and meta.bands != metas[0].bands:
            problems.direct_errors.append(
                f"{meta.folder} has {meta.bands} bands but {metas[0].folder} has {metas[0].bands}; folders "
                "trained together need the same bands"
            )
    classes = _merge_classes(metas, problems)
    raw_classes = [RawClass(c.value, c.name, c.color) for c in classes]
    records: list[ChipRecord] = []
    for i, meta in enumerate(metas):
        records.extend(list_records(meta, i, problems))
    report.listed_in_map = sum(len(m.map_rows) for m in metas)
    checker = _Checker(fmt, classes, raw_classes, problems, metas[0].bands)
    checker.metas = metas
    chosen = _spread(len(records), None if full else sample)
    for index, rec in enumerate(records):
        if index in chosen:
            _check_record(checker, rec)
            continue
        # Unsampled chips still get the cheap check: an empty file is caught whatever the sample.
        if rec.image.stat().st_size == 0:
            problems("unreadable_chip", rec.image, "0 bytes")
        if rec.label is not None and rec.label.stat().st_size == 0:
            problems("empty_label", rec.label, "")
    report.checked_chips = len(chosen)
    report.chips = len(records)
    if not records:
        listed = report.listed_in_map
        problems.direct_errors.append(
            f"no usable chips in {', '.join(str(m.folder / 'images') for m in metas)} (map.txt lists {listed}); "
            "copy the chips and labels the export wrote into images/ and labels/, or re-export"
        )
    sizes = checker.sizes
    tile = metas[0].tile_size
    if sizes:
        common = max(sizes.items(), key=lambda kv: kv[1])[0]
        report.chip_size = common
        odd = sum(n for size, n in sizes.items() if size != common)
        if odd:
            problems.direct_warnings.append(
                f"{odd} chips differ in size from the most common {common[0]}x{common[1]}; they are resized"
            )
    else:
        report.chip_size = tile
    report.bands = checker.bands if checker.bands is not None else metas[0].bands
    report.dtype = checker.dtype
    report.count_unit = COUNT_UNITS.get(fmt, "")
    report.classes = [{"value": c.value, "name": c.name, "count": int(checker.counts.get(c.value, 0))} for c in classes]
    if full and records and fmt in COUNT_UNITS:
        empty = [f"{c['value']} '{c['name']}'" for c in report.classes if c["count"] == 0]
        if empty:
            problems.direct_warnings.append(
                f"classes without any {report.count_unit} in the chips present: {', '.join(empty)}"
            )
    problems.render(report)
    return Scan(report, metas, records, classes)


def inspect_folders(
    folders: Sequence[str | Path],
    *,
    roots: Sequence[str | Path] | None = None,
    full: bool = False,
    sample: int = FAST_SAMPLE,
) -> DataReport:
    """Validate export folders before training. Fast by default (bounded decode); `full=True` decodes all."""
    return scan_folders(folders, roots=roots, full=full, sample=sample).report
