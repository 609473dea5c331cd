"""Inputs of the inference tasks without training: georeferenced GeoTIFFs, packages that hold only an .emd
(what submit reads), GeoJSON polygons. Trained packages for running jobs: `trained_package` (once per process).
"""

from __future__ import annotations

import atexit
import json
import shutil
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

ORIGIN = (500000.0, 4000000.0)  # UTM 17N, 0.5 m cells
CELL = 0.5
EPSG = 32617


def write_raster(
    path: Path,
    *,
    width: int = 64,
    height: int = 64,
    bands: int = 3,
    dtype: str = "uint8",
    seed: int = 0,
    epsg: int = EPSG,
    cell: float = CELL,
) -> Path:
    """A random GeoTIFF with its origin at ORIGIN."""
    import rasterio
    from rasterio.transform import from_origin

    rng = np.random.default_rng(seed)
    top = np.iinfo(dtype).max if np.issubdtype(np.dtype(dtype), np.integer) else 1.0
    pixels = (rng.random((bands, height, width)) * top).astype(dtype)
    path.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        width=width,
        height=height,
        count=bands,
        dtype=dtype,
        crs=f"EPSG:{epsg}",
        transform=from_origin(*ORIGIN, cell, cell),
    ) as dst:
        dst.write(pixels)
    return path


def write_emd_package(
    path: Path,
    *,
    function: str = "GpjobsPixelClassifier.py",
    model_type: str = "UNET",
    bands: tuple[int, ...] = (0, 1, 2),
    dtype: str = "uint8",
) -> Path:
    """A .dlpk with only an .emd: enough for the submit checks (raster function, bands, pixel type)."""
    emd = {
        "InferenceFunction": function,
        "ModelName": model_type,
        "ExtractBands": list(bands),
        "Gpjobs": {"model_type": model_type, "dtype": dtype},
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(f"{path.stem}.emd", json.dumps(emd))
    return path


def write_polygons(path: Path, boxes: list[tuple[float, float, float, float]], *, geometry: bool = True) -> Path:
    """GeoJSON boxes (xmin, ymin, xmax, ymax in map units); geometry=False writes features without one."""
    features = [
        {
            "type": "Feature",
            "properties": {"id": i},
            "geometry": {"type": "Polygon", "coordinates": [[[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]]}
            if geometry
            else None,
        }
        for i, (x0, y0, x1, y1) in enumerate(boxes)
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    return path


_TRAINED: dict[str, Path] = {}
_RECIPES: dict[str, tuple[str, dict[str, Any]]] = {
    "UNET": ("write_classified_tiles", {}),
    "SSD": ("write_pascal_voc", {"arguments": {"bias": 0.0}}),  # boxes after one epoch (scores start at 0.5)
    "FEATURE_CLASSIFIER": ("write_labeled_tiles", {}),
    "CHANGEDETECTOR": ("write_change_detection", {}),
}


def trained_package(model_type: str) -> Path:
    """A .dlpk of `model_type` trained for one epoch on 8 chips of 32 px (RESNET18), once per test process."""
    if model_type not in _TRAINED:
        from tests.builders import exports
        from tests.training.helpers import make_spec, result_of, train

        root = Path(tempfile.mkdtemp(prefix=f"gpjobs-{model_type.lower()}-"))
        atexit.register(shutil.rmtree, root, True)
        builder, extra = _RECIPES[model_type]
        folder = getattr(exports, builder)(root, n=8, size=32)
        spec = make_spec(
            root,
            [folder],
            model_type,
            max_epochs=1,
            learning_rate=0.001,
            batch_size=4,
            validation_percent=25.0,
            backbone_model="RESNET18",
            **extra,
        )
        code, reporter = train(spec)
        assert code == 0, [e for e in reporter.events if e["type"] in ("failed", "message")]
        _TRAINED[model_type] = Path(result_of(reporter)["package"])
    return _TRAINED[model_type]
