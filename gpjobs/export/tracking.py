"""ObjectTracking data (SIAMMASK): sequences of frames with per-object masks, YouTube-VOS layout. No torch.

arcgis.learn's SiamMask trains on `prepare_data(path, dataset_type="ObjectTracking")`, a YouTube-VOS
style folder (models.md §1A); there is no MetaDataMode for it, so the layout itself is recognised:

    <folder>/JPEGImages/<sequence>/<frame>.jpg     frames of each sequence, in name order
    <folder>/Annotations/<sequence>/<frame>.png    object ids (0 = background; palette PNGs read as ids)
    <folder>/meta.json                             optional: {"videos": {<sequence>: {"objects":
                                                   {"<id>": {"category": <name>, ...}}}}}

A YouTube-VOS download (with `train/` inside) is accepted at its root too. Frames without an
annotation (YouTube-VOS annotates every fifth frame) are left out. Classes are the categories of
meta.json (values 1..n by name), or one class "object" without it. A record is one annotated frame;
its `objects` are filled with (object id, box) when the frame is checked.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from gpjobs.export.chips import IMAGE_EXTENSIONS, read_label_raster
from gpjobs.export.metadata import ExportMeta, MetadataError, RawClass
from gpjobs.export.readers import ChipRecord, Report, box_of

FRAMES_DIR, MASKS_DIR, META_FILE = "JPEGImages", "Annotations", "meta.json"
DEFAULT_CATEGORY = "object"


def tracking_root(folder: Path) -> Path | None:
    """The folder holding JPEGImages/ and Annotations/ (the folder itself or its train/), else None."""
    for root in (folder, folder / "train"):
        if (root / FRAMES_DIR).is_dir() and (root / MASKS_DIR).is_dir():
            return root
    return None


def read_tracking_meta(folder: Path) -> ExportMeta:
    """The ExportMeta of a tracking folder: classes from meta.json categories; `emd` holds meta.json."""
    root = tracking_root(folder)
    if root is None:
        raise MetadataError(f"{folder} has no {FRAMES_DIR}/ and {MASKS_DIR}/ folders (ObjectTracking layout)")
    videos: dict = {}
    meta_path = root / META_FILE
    if meta_path.is_file():
        try:
            data = json.loads(meta_path.read_text(encoding="utf-8-sig"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise MetadataError(f"{meta_path} is not valid JSON ({exc}); fix it or remove it (then every "
                                f"object is of class '{DEFAULT_CATEGORY}')") from None
        videos = data.get("videos") if isinstance(data, dict) else None
        if not isinstance(videos, dict):
            raise MetadataError(f"{meta_path} has no \"videos\" object (YouTube-VOS meta.json: "
                                '{"videos": {"<sequence>": {"objects": {"1": {"category": "car"}}}}})')
    names = sorted({str(obj.get("category") or DEFAULT_CATEGORY)
                    for video in videos.values() if isinstance(video, dict)
                    for obj in (video.get("objects") or {}).values() if isinstance(obj, dict)})
    classes = [RawClass(i + 1, name, None) for i, name in enumerate(names or [DEFAULT_CATEGORY])]
    return ExportMeta(folder=folder, mode="ObjectTracking", format="ObjectTracking", classes=classes, bands=None,
                      tile_size=None, stats={}, emd={"videos": videos, "root": str(root)})


def _files(directory: Path) -> dict[str, Path]:
    if not directory.is_dir():
        return {}
    return {p.stem: p for p in sorted(directory.iterdir()) if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()}


def list_tracking_frames(meta: ExportMeta, folder_index: int, report: Report) -> list[ChipRecord]:
    """One record per annotated frame (stem "<sequence>/<frame>"), sequences and frames in name order."""
    root = Path(meta.emd.get("root") or meta.folder)
    frames_dir, masks_dir = root / FRAMES_DIR, root / MASKS_DIR
    records = []
    for seq in sorted(p for p in frames_dir.iterdir() if p.is_dir()):
        frames, masks = _files(seq), _files(masks_dir / seq.name)
        for stem, image in frames.items():
            if stem in masks:
                records.append(ChipRecord(f"{seq.name}/{stem}", image, folder_index, label=masks[stem]))
            else:
                report("frame_without_annotation", image, "")
        for stem, mask in masks.items():
            if stem not in frames:
                report("label_without_image", mask, "")
    for seq in sorted(p for p in masks_dir.iterdir() if p.is_dir()) if masks_dir.is_dir() else []:
        if not (frames_dir / seq.name).is_dir():
            report("label_without_image", seq, "no frames folder of that name")
    return records


def sequence_of(record: ChipRecord) -> str:
    return record.stem.split("/", 1)[0]


def object_category(meta: ExportMeta, sequence: str, object_id: int) -> str | None:
    """The category name of an object of a sequence; the default class without meta.json, None if unlisted."""
    videos = meta.emd.get("videos") or {}
    if not videos:
        return DEFAULT_CATEGORY
    obj = ((videos.get(sequence) or {}).get("objects") or {}).get(str(object_id))
    if not isinstance(obj, dict):
        return None
    return str(obj.get("category") or DEFAULT_CATEGORY)


def annotation_for(frame: Path) -> Path | None:
    """The annotation of a frame <root>/JPEGImages/<sequence>/<frame>, if there is one."""
    if len(frame.parents) < 3 or frame.parent.parent.name != FRAMES_DIR:
        return None
    folder = frame.parents[2] / MASKS_DIR / frame.parent.name
    return next((p for p in sorted(folder.glob(f"{frame.stem}.*")) if p.suffix.lower() in IMAGE_EXTENSIONS), None)


def frame_objects(path: Path) -> list[tuple[int, tuple[float, float, float, float]]]:
    """(object id, box) of every object in an annotation raster (ChipReadError when unreadable)."""
    ids = read_label_raster(path)
    return [(int(i), box_of(ids == i)) for i in np.unique(ids) if i > 0]


def check_frame(checker, rec: ChipRecord, shape: tuple[int, int] | None, meta: ExportMeta) -> None:
    """Decode one annotation: its objects go into `rec.objects`, counts per category, problems reported."""
    ids = checker.raster(rec.label, shape)
    if ids is None:
        return
    by_name = {c.name: c.value for c in checker.raw_classes}
    objects = []
    for object_id in (int(i) for i in np.unique(ids) if i > 0):
        name = object_category(meta, sequence_of(rec), object_id)
        if name is None:
            checker.problems("object_not_in_meta", rec.label, f"object {object_id}")
            continue
        checker.counts[by_name[name]] += 1
        objects.append((object_id, box_of(ids == object_id)))
    if not objects:
        checker.problems("frame_without_objects", rec.label, "")
    rec.objects = objects

