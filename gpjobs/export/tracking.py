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

from pathlib import Path

import numpy as np

from gpjobs.export.chips import IMAGE_EXTENSIONS, read_label_raster
from gpjobs.export.metadata import DEFAULT_CATEGORY, FRAMES_DIR, MASKS_DIR, ExportMeta
from gpjobs.export.readers import ChipRecord, box_of


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


def frame_objects(path: Path, root: str | Path = "/") -> list[tuple[int, tuple[float, float, float, float]]]:
    """(object id, box) of every object in an annotation raster (ChipReadError when unreadable)."""
    ids = read_label_raster(path, root=root)
    return [(int(i), box_of(ids == i)) for i in np.unique(ids) if i > 0]


def check_frame(checker, rec: ChipRecord, shape: tuple[int, int] | None, meta: ExportMeta) -> None:
    """Decode one annotation: its objects go into `rec.objects`, counts per category, problems reported."""
    ids = checker.raster(rec.label, shape, rec.root)
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
