"""The Esri metadata files of one export folder: stats JSON, export .emd, map.txt. No torch.

export-format.md §1.3-1.6 and §2.1: MetaDataMode comes from esri_accumulated_stats.json, the
export .emd may hold placeholder strings ("e.g. 256"), map.txt has Windows paths and CRLF.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gpjobs.paths import PathError, read_bytes_in_store

STATS_FILE = "esri_accumulated_stats.json"
EMD_FILE = "esri_model_definition.emd"
MAP_FILE = "map.txt"
REQUIRED_FILES = (EMD_FILE, MAP_FILE, STATS_FILE)

KNOWN_MODES = frozenset(
    {
        "Classified_Tiles",
        "PASCAL_VOC_rectangles",
        "KITTI_rectangles",
        "RCNN_Masks",
        "Labeled_Tiles",
        "MultiLabeled_Tiles",
        "Imagenet",
        "Export_Tiles",
        "CycleGAN",
        "Panoptic_Segmentation",
        "ChangeDetection",
        "Pix2Pix",
        "ImageCaptioning",
    }
)


class MetadataError(ValueError):
    """The folder is not a readable export (missing or unparsable metadata)."""


def real_number(value: Any) -> float | None:
    """A number from an .emd/stats field, or None for placeholders such as "e.g. 256"."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, (int, float)):
        return float(value) if math.isfinite(float(value)) else None
    return None  # strings are placeholders in export .emd files (§1.6); never parse them


def read_json(path: Path, root: str | Path = "/") -> dict[str, Any]:
    """A metadata JSON file of an export, read through the store check (`root`: the store's root)."""
    try:
        data = json.loads(read_bytes_in_store(path, root).decode("utf-8-sig"))
    except FileNotFoundError:
        raise
    except PathError as exc:
        raise MetadataError(str(exc)) from None
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise MetadataError(
            f"{path.name} in {path.parent} is not valid JSON ({exc}); re-export the training data"
        ) from None
    if not isinstance(data, dict):
        raise MetadataError(f"{path.name} in {path.parent} does not hold a JSON object")
    return data


def parse_map_txt(text: str) -> list[list[str]]:
    """Rows of relative POSIX paths from map.txt: tolerant of `\\`, CRLF, runs of spaces, 1-3 columns."""
    rows = []
    for line in text.splitlines():
        cols = [c.replace("\\", "/") for c in line.split()]
        if cols:
            rows.append(cols)
    return rows


@dataclass(frozen=True)
class RawClass:
    value: int
    name: str
    color: list[int] | None


@dataclass
class ExportMeta:
    """What the metadata of one export folder says (chips are enumerated elsewhere, never from map.txt)."""

    folder: Path
    root: Path  # the root of the folder's store: every file of the export is read inside it
    mode: str  # MetaDataMode as written
    format: str  # after arcgis.learn's post-rules (images2/ => Pix2Pix / ChangeDetection)
    classes: list[RawClass]
    bands: int | None
    tile_size: tuple[int, int] | None  # (height, width)
    stats: dict[str, Any]
    emd: dict[str, Any]
    map_rows: list[list[str]] = field(default_factory=list)
    per_class_pixels: list[int] | None = None  # ClassPixelStats.NumPixelsPerClass, in `classes` order
    per_class_features: list[int] | None = None
    instance_classes: list[RawClass] = field(default_factory=list)  # Panoptic_Segmentation

    def band_stats(self) -> list[dict[str, float]] | None:
        """Per-band {min, max, mean, std, num} from the .emd AllTilesStats or the stats BandStatsState."""
        state = self.stats.get("BandStatsState")
        out: list[dict[str, float]]
        if isinstance(state, list) and state and all(isinstance(s, dict) for s in state):
            out = []
            for s in state:
                num, m1, m2 = real_number(s.get("Num")), real_number(s.get("M1")), real_number(s.get("M2"))
                lo, hi = real_number(s.get("Min")), real_number(s.get("Max"))
                if num is None or m1 is None or m2 is None or lo is None or hi is None or not num:
                    break
                out.append({"min": lo, "max": hi, "mean": m1, "std": math.sqrt(max(m2, 0.0) / num), "num": num})
            else:
                return out
        tiles = self.emd.get("AllTilesStats")
        if isinstance(tiles, list) and tiles and all(isinstance(s, dict) for s in tiles):
            out = []
            for s in tiles:
                low, high, mean, std = (real_number(s.get(k)) for k in ("Min", "Max", "Mean", "StdDev"))
                if low is None or high is None or mean is None or std is None:
                    return None
                out.append({"min": low, "max": high, "mean": mean, "std": std, "num": 0.0})
            return out
        return None


def _classes(entries: Any, value_key: str, name_key: str) -> list[RawClass]:
    out = []
    for entry in entries if isinstance(entries, list) else []:
        if not isinstance(entry, dict):
            continue
        value = entry.get(value_key, entry.get("ClassValue" if value_key == "Value" else "Value"))
        if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value:
            continue  # placeholder text: not a class
        name = entry.get(name_key, entry.get("ClassName" if name_key == "Name" else "Name"))
        color = entry.get("Color")
        if not (
            isinstance(color, list) and len(color) >= 3 and all(isinstance(c, int) and 0 <= c <= 255 for c in color[:3])
        ):
            color = None  # [-1, -1, -1] means "no colour" (§1.9)
        out.append(
            RawClass(
                int(value), str(name) if name not in (None, "") else str(int(value)), list(color[:3]) if color else None
            )
        )
    return out


def _per_class(block: Any, key: str, n: int) -> list[int] | None:
    if not isinstance(block, dict):
        return None
    values = block.get(key)
    if isinstance(values, list) and len(values) == n and all(isinstance(v, (int, float)) for v in values):
        if any(v < 0 for v in values):
            return None  # Esri's counters overflow on huge exports; negative sums mean "unknown"
        return [int(v) for v in values]
    return None


def detect_format(folder: Path, mode: str) -> str:
    """MetaDataMode after the images2/ post-rules of arcgis.learn's prepare_data (§2.1)."""
    if mode == "Export_Tiles" and (folder / "images2").is_dir():
        return "Pix2Pix"
    if mode == "Classified_Tiles" and (folder / "images2").is_dir():
        return "ChangeDetection"
    return mode


def is_cyclegan_parent(folder: Path) -> bool:
    """CycleGAN data is a parent folder holding two exports A/ and B/ (§1.1)."""
    return all((folder / side / name).is_file() for side in ("A", "B") for name in REQUIRED_FILES)


# ObjectTracking (SIAMMASK): YouTube-VOS layout, no Esri metadata files (gpjobs/export/tracking.py).
FRAMES_DIR, MASKS_DIR, META_FILE = "JPEGImages", "Annotations", "meta.json"
DEFAULT_CATEGORY = "object"


def tracking_root(folder: Path) -> Path | None:
    """The folder holding JPEGImages/ and Annotations/ (the folder itself or its train/), else None."""
    for root in (folder, folder / "train"):
        if (root / FRAMES_DIR).is_dir() and (root / MASKS_DIR).is_dir():
            return root
    return None


def read_tracking_meta(folder: Path, root: str | Path = "/") -> ExportMeta:
    """The ExportMeta of a tracking folder: classes from meta.json categories; `emd` holds meta.json."""
    frames_root = tracking_root(folder)
    if frames_root is None:
        raise MetadataError(f"{folder} has no {FRAMES_DIR}/ and {MASKS_DIR}/ folders (ObjectTracking layout)")
    videos: dict = {}
    meta_path = frames_root / META_FILE
    if meta_path.is_file():
        try:
            data = json.loads(read_bytes_in_store(meta_path, root).decode("utf-8-sig"))
        except PathError as exc:
            raise MetadataError(str(exc)) from None
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise MetadataError(
                f"{meta_path} is not valid JSON ({exc}); fix it or remove it (then every "
                f"object is of class '{DEFAULT_CATEGORY}')"
            ) from None
        found = data.get("videos") if isinstance(data, dict) else None
        if not isinstance(found, dict):
            raise MetadataError(
                f'{meta_path} has no "videos" object (YouTube-VOS meta.json: '
                '{"videos": {"<sequence>": {"objects": {"1": {"category": "car"}}}}})'
            )
        videos = found
    names = sorted(
        {
            str(obj.get("category") or DEFAULT_CATEGORY)
            for video in videos.values()
            if isinstance(video, dict)
            for obj in (video.get("objects") or {}).values()
            if isinstance(obj, dict)
        }
    )
    classes = [RawClass(i + 1, name, None) for i, name in enumerate(names or [DEFAULT_CATEGORY])]
    return ExportMeta(
        folder=folder,
        root=Path(root),
        mode="ObjectTracking",
        format="ObjectTracking",
        classes=classes,
        bands=None,
        tile_size=None,
        stats={},
        emd={"videos": videos, "root": str(frames_root)},
    )


def read_export_meta(folder: str | Path, root: str | Path = "/") -> ExportMeta:
    """Parse the metadata of one export folder; MetadataError says which file is missing or broken.

    `root` is the root of the folder's store (paths.open_in_store): a metadata file that leads outside it
    is a MetadataError naming the file. "/" for a user's own local folder.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise MetadataError(
            f"{folder} is not a folder; give the output folder of Export Training Data For Deep Learning"
        )
    if tracking_root(folder) is not None:
        return read_tracking_meta(folder, root)  # ObjectTracking (YouTube-VOS layout): no Esri metadata files
    if is_cyclegan_parent(folder):
        meta = read_export_meta(folder / "A", root)
        meta.folder, meta.format = folder, "CycleGAN"
        return meta
    missing = [name for name in REQUIRED_FILES if not (folder / name).is_file()]
    if missing:
        raise MetadataError(
            f"{folder} is not an Export Training Data For Deep Learning folder: {', '.join(missing)} "
            f"missing (an export has {', '.join(REQUIRED_FILES)} at its root); point in_folder at the export "
            "folder itself or re-export the training data"
        )
    stats = read_json(folder / STATS_FILE, root)
    emd = read_json(folder / EMD_FILE, root)
    mode = stats.get("MetaDataMode") or emd.get("MetaDataMode")
    if not isinstance(mode, str) or mode not in KNOWN_MODES:
        raise MetadataError(
            f"{folder / STATS_FILE}: MetaDataMode {mode!r} is not a metadata format this server reads "
            f"({', '.join(sorted(KNOWN_MODES))})"
        )
    classes = _classes(emd.get("Classes"), "Value", "Name") or _classes(stats.get("Classes"), "ClassValue", "ClassName")
    stat_classes = _classes(stats.get("Classes"), "ClassValue", "ClassName")
    # Per-class arrays follow the stats JSON's class order; re-order them to ours by value.
    order = [c.value for c in stat_classes]

    def reorder(counts: list[int] | None) -> list[int] | None:
        if counts is None or not all(c.value in order for c in classes):
            return None
        return [counts[order.index(c.value)] for c in classes]

    n_stat = len(stat_classes)
    height, width = real_number(stats.get("TileSizeY")), real_number(stats.get("TileSizeX"))
    if height is None:
        height, width = real_number(emd.get("ImageHeight")), real_number(emd.get("ImageWidth"))
    bands = real_number(stats.get("NumBands"))
    try:
        map_rows = parse_map_txt(read_bytes_in_store(folder / MAP_FILE, root).decode("utf-8-sig", errors="replace"))
    except PathError as exc:
        raise MetadataError(str(exc)) from None
    except OSError:
        map_rows = []
    fmt = detect_format(folder, mode)
    if fmt == "MultiLabeled_Tiles" and emd.get("SingleLabelFieldFound") == "Caption":
        fmt = "ImageCaptioning"  # arcgis.learn's post-rule (§2.1): captions in the labels' <name>
        classes = []  # a caption export's class list is not what it trains on
    return ExportMeta(
        folder=folder,
        root=Path(root),
        mode=mode,
        format=fmt,
        classes=classes,
        bands=int(bands) if bands else None,
        tile_size=(int(height), int(width)) if height and width else None,
        stats=stats,
        emd=emd,
        map_rows=map_rows,
        per_class_pixels=reorder(_per_class(stats.get("ClassPixelStats"), "NumPixelsPerClass", n_stat)),
        per_class_features=reorder(_per_class(stats.get("FeatureStats"), "NumFeaturesPerClass", n_stat)),
        instance_classes=_classes(emd.get("Panoptic_Segmentation_Instance_Classes"), "Value", "Name"),
    )
