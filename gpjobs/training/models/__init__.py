"""Model families: `family_for(model_type)` finds the class that trains a model type.

Each family module (`classification`, `segmentation`, `detection/`) exposes
`FAMILIES: dict[str, type[ModelFamily]]` keyed by model_type name; it is imported only when needed.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from gpjobs.catalog import ArgumentError, ModelTypeInfo, lookup_model_type

if TYPE_CHECKING:
    from gpjobs.training.models.base import ModelFamily


def family_for(model_type: ModelTypeInfo | str) -> type[ModelFamily]:
    """The ModelFamily subclass for a model type (ArgumentError when it is unknown or not implemented)."""
    info = model_type if isinstance(model_type, ModelTypeInfo) else lookup_model_type(model_type)
    if not info.family:
        raise ArgumentError(f"model_type {info.name} has no training implementation")
    module = importlib.import_module(f"gpjobs.training.models.{info.family}")
    families = getattr(module, "FAMILIES", {})
    try:
        return families[info.name]
    except KeyError:
        raise ArgumentError(
            f"model_type {info.name} is not available in this build "
            f"(gpjobs.training.models.{info.family} provides: {', '.join(sorted(families)) or 'none'})"
        ) from None
