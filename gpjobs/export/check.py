"""Submit-time check that a folder is an Esri training-data export, and which metadata format it holds.

The format comes from the same metadata reader the training child uses, so submit and the child agree on
it. Cheap on purpose (the metadata files and one directory entry): the full data validation runs in the
child, which reports every bad chip with a fix.
"""

from __future__ import annotations

import os
from pathlib import Path

from gpjobs.export.metadata import ExportMeta, MetadataError, read_export_meta


class ExportFolderError(ValueError):
    """The folder is not a usable export; the message says what is missing and how to fix it."""


def _has_entries(folder: Path) -> bool:
    try:
        with os.scandir(folder) as entries:
            return any(True for _ in entries)
    except OSError:
        return False


def check_export(folder: Path, alias: str | None = None, *, root: str | Path = "/") -> ExportMeta:
    """The export's metadata format (MetaDataMode after arcgis.learn's post-rules, export-format.md §2.1).

    Messages name the folder by `alias` (the user's /fileShares/... path), never by its local path. `root`
    is the root of the folder's store: metadata files leading outside it are refused.
    """
    shown = alias or folder.name
    if not folder.is_dir():
        raise ExportFolderError("does not exist or is not a folder")
    try:
        meta = read_export_meta(folder, root)
    except MetadataError as exc:
        text = str(exc).replace(str(folder), shown)
        raise ExportFolderError(text[len(shown) :].lstrip(" :") if text.startswith(shown) else text) from None
    except OSError as exc:  # unreadable metadata (permissions, a file removed meanwhile): the user's to fix
        raise ExportFolderError(
            f"cannot be read ({exc.strerror or type(exc).__name__}); check that the export's "
            "files are readable by the server"
        ) from None
    if meta.format == "ObjectTracking":
        if not _has_entries(Path(meta.emd["root"]) / "JPEGImages"):
            raise ExportFolderError(
                "has no frames: JPEGImages/ is empty (ObjectTracking data holds one folder of "
                "frames per sequence there)"
            )
    elif meta.format != "CycleGAN" and not _has_entries(folder / "images"):
        raise ExportFolderError(
            "has no image chips: images/ is missing or empty (only the export's metadata is "
            "there?); re-export the training data with Export Training Data For Deep Learning"
        )
    return meta


def export_format(folder: Path, alias: str | None = None, *, root: str | Path = "/") -> str:
    """The export's metadata format (see check_export)."""
    return check_export(folder, alias, root=root).format
