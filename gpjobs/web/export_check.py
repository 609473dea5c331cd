"""Submit-time check that a folder is an Esri training-data export, and which metadata format it holds.

Cheap on purpose (a few small files and one directory entry): the full data validation runs in the
training child, which reports every bad chip with a fix.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from gpjobs import catalog

ESRI_FILES = ("esri_model_definition.emd", "map.txt", "esri_accumulated_stats.json")


class ExportFolderError(ValueError):
    """The folder is not a usable export; the message says what is missing and how to fix it."""


def _read_json(path: Path) -> dict:
    try:
        value = json.loads(path.read_text(encoding="utf-8-sig"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ExportFolderError(f"has an unreadable {path.name} ({exc}); export the training data again") from None
    if not isinstance(value, dict):
        raise ExportFolderError(f"has a {path.name} that is not a JSON object; export the training data again")
    return value


def _has_entries(folder: Path) -> bool:
    try:
        with os.scandir(folder) as entries:
            return any(True for _ in entries)
    except OSError:
        return False


def export_format(folder: Path) -> str:
    """The export's metadata format (MetaDataMode after arcgis.learn's post-rules, export-format.md §2.1)."""
    if not folder.is_dir():
        raise ExportFolderError("does not exist or is not a folder")
    missing = [name for name in ESRI_FILES if not (folder / name).is_file()]
    if missing:
        raise ExportFolderError(
            f"is not an Export Training Data For Deep Learning folder: missing {', '.join(missing)} "
            f"(an export holds {', '.join(ESRI_FILES)} and images/)")
    if not _has_entries(folder / "images"):
        raise ExportFolderError("has no image chips: images/ is missing or empty")
    stats = _read_json(folder / "esri_accumulated_stats.json")
    mode = stats.get("MetaDataMode")
    if not isinstance(mode, str) or not mode:
        raise ExportFolderError("esri_accumulated_stats.json has no MetaDataMode; export the training data again")
    if mode == "Export_Tiles" and ((folder / "images2").is_dir() or (folder / "labels").is_dir()):
        mode = "Pix2Pix"
    elif mode == "Classified_Tiles" and (folder / "images2").is_dir():
        mode = "ChangeDetection"
    elif mode == "MultiLabeled_Tiles":
        emd = _read_json(folder / "esri_model_definition.emd")
        if emd.get("SingleLabelFieldFound") == "Caption":
            mode = "ImageCaptioning"
    if mode not in catalog.ALL_FORMATS and mode != "ImageCaptioning":
        raise ExportFolderError(f"has metadata format '{mode}', which is not a known export format")
    return mode
