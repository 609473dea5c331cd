"""Features as a GeoPackage, with the fields a raster function's getFields declares (in their types) and the
coordinate system of the input raster. Written with pyogrio (GDAL/OGR in its wheel): rasterio's GDAL has the
GeoPackage driver but rasterio writes only rasters.

The geometries are read back from the GeoJSON the host wrote, by OGR itself, so the two files hold the same
shapes; the attributes are typed here from the declared fields.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

# esriFieldType -> numpy dtype of the GeoPackage column (OID and geometry fields are the layer's own).
FIELD_TYPES = {
    "esriFieldTypeString": object,
    "esriFieldTypeDouble": np.float64,
    "esriFieldTypeSingle": np.float32,
    "esriFieldTypeInteger": np.int32,
    "esriFieldTypeSmallInteger": np.int16,
    "esriFieldTypeBigInteger": np.int64,
    "esriFieldTypeDate": object,
    "esriFieldTypeGUID": object,
}
SKIPPED = frozenset({"esriFieldTypeOID", "esriFieldTypeGeometry"})
LAYER = "features"


def output_fields(declared: list[dict[str, Any]], features: list[dict[str, Any]]) -> list[tuple[str, Any]]:
    """(name, dtype) of every output column: the declared fields first, in their order and types, then any
    other property the features carry (Classify Objects keeps the input polygons' fields), typed by value."""
    columns: list[tuple[str, Any]] = []
    seen: set[str] = set()
    for spec in declared:
        kind = spec.get("type")
        if kind in SKIPPED or spec.get("name") in ("OID", "FID", "Shape"):
            continue
        columns.append((str(spec["name"]), FIELD_TYPES.get(str(kind), object)))
        seen.add(str(spec["name"]))
    for feature in features:
        for key, value in (feature.get("properties") or {}).items():
            if key in seen:
                continue
            seen.add(key)
            kind = (
                np.float64
                if isinstance(value, float)
                else np.int64
                if isinstance(value, int) and not isinstance(value, bool)
                else object
            )
            columns.append((key, kind))
    return columns


def _column(values: list[Any], dtype: Any) -> np.ndarray:
    if dtype is object:
        return np.asarray([None if v is None else str(v) for v in values], dtype=object)
    if np.issubdtype(np.dtype(dtype), np.integer):
        missing = [v is None for v in values]
        if any(missing):  # OGR integer columns have no NULL in a numpy array: store them as floats then
            return np.asarray([np.nan if v is None else float(v) for v in values], dtype=np.float64)
    return np.asarray([np.nan if v is None else v for v in values], dtype=dtype)


def write_geopackage(
    geojson: Path, out: Path, declared: list[dict[str, Any]], features: list[dict[str, Any]], crs_wkt: str | None
) -> Path:
    """`out` (.gpkg) from the features of `geojson` (the same list as `features`, in that order)."""
    from pyogrio.raw import read, write

    columns = output_fields(declared, features)
    field_data = [_column([(f.get("properties") or {}).get(name) for f in features], dtype) for name, dtype in columns]
    if features:
        _meta, _index, geometry, _fields = read(geojson, read_geometry=True, columns=[])
    else:
        geometry = np.asarray([], dtype=object)
    out.unlink(missing_ok=True)
    write(
        out,
        geometry,
        field_data,
        [name for name, _ in columns],
        driver="GPKG",
        layer=LAYER,
        geometry_type="MultiPolygon"
        if any(f.get("geometry", {}).get("type") == "MultiPolygon" for f in features if f.get("geometry"))
        else "Polygon",
        crs=crs_wkt,
        promote_to_multi=False,
    )
    return out
