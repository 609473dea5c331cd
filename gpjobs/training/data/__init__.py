"""Training data: read and validate every Export Training Data For Deep Learning format.

Importing this package does not import torch: `inspect_folders`, `DataReport`, `DataInfo`, `read_chip`
and friends are torch-free (the server may use them). The torch part (`open_training_data`,
`TrainingData`, `to_model_input`) is imported on first use.
"""

from __future__ import annotations

from typing import Any

from gpjobs.training.data.chips import ChipReadError, read_chip, read_label_raster
from gpjobs.training.data.info import ClassInfo, DataInfo, Normalization
from gpjobs.training.data.metadata import MetadataError, read_export_meta
from gpjobs.training.data.report import DataError, DataReport, inspect_folders, scan_folders

_TORCH_NAMES = {"open_training_data", "TrainingData", "to_model_input", "collate_detection"}

__all__ = ["ChipReadError", "ClassInfo", "DataError", "DataInfo", "DataReport", "MetadataError", "Normalization",
           "inspect_folders", "read_chip", "read_export_meta", "read_label_raster", "scan_folders",
           *sorted(_TORCH_NAMES)]


def __getattr__(name: str) -> Any:
    if name in _TORCH_NAMES:
        from gpjobs.training.data import loading

        return getattr(loading, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
