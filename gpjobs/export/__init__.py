"""Esri *Export Training Data For Deep Learning* folders: read, recognise and validate them. No torch.

Both sides use this package: the server checks an `in_folder` at submit (`check_export`), the training
child builds its datasets on the same readers, and `gpjobs inspect` prints the same validation report.
"""

from __future__ import annotations

from gpjobs.export.check import ExportFolderError, check_export, export_format
from gpjobs.export.chips import ChipReadError, read_chip, read_label_raster
from gpjobs.export.info import ClassInfo, DataInfo, Normalization
from gpjobs.export.metadata import MetadataError, read_export_meta
from gpjobs.export.report import DataError, DataReport, inspect_folders, scan_folders

__all__ = [
    "ChipReadError",
    "ClassInfo",
    "DataError",
    "DataInfo",
    "DataReport",
    "ExportFolderError",
    "MetadataError",
    "Normalization",
    "check_export",
    "export_format",
    "inspect_folders",
    "read_chip",
    "read_export_meta",
    "read_label_raster",
    "scan_folders",
]
