"""Where the host puts a raster function's results: a GeoTIFF with the input's georeference (plus colour map and
raster attribute table for class outputs), or GeoJSON features in the raster's map coordinates."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

import numpy as np

GDAL_TYPES = {
    "u1": "uint8",
    "u2": "uint16",
    "i1": "int8",
    "i2": "int16",
    "u4": "uint32",
    "i4": "int32",
    "f4": "float32",
    "f8": "float64",
}


def numpy_dtype(pixel_type: Any) -> np.dtype:
    """An ArcGIS pixelType ('u1', 'i4', 'f4', ...) or a numpy dtype name as a numpy dtype."""
    return np.dtype(GDAL_TYPES.get(str(pixel_type), str(pixel_type)))


def class_rows(rat_json: str | None) -> list[dict[str, Any]]:
    """The rows of a PRF's rasterAttributeTable (Value, ClassName, Red, Green, Blue)."""
    if not rat_json:
        return []
    table = json.loads(rat_json) if isinstance(rat_json, str) else rat_json
    return [f["attributes"] for f in table.get("features", [])]


def write_class_metadata(dataset, rows: list[dict[str, Any]]) -> None:
    """Colour map (8/16-bit outputs: what GeoTIFF can hold) and class names as band tags."""
    if not rows:
        return
    if dataset.dtypes[0] in ("uint8", "uint16"):
        colors = {0: (0, 0, 0, 0)}
        for row in rows:
            colors[int(row["Value"])] = (int(row.get("Red", 0)), int(row.get("Green", 0)), int(row.get("Blue", 0)), 255)
        dataset.write_colormap(1, colors)
    dataset.update_tags(1, CLASSES=json.dumps({str(r["Value"]): r["ClassName"] for r in rows}))


def write_rat_sidecar(tif: Path, rows: list[dict[str, Any]]) -> Path | None:
    """`<tif>.aux.xml` with a GDAL raster attribute table (Value, ClassName, Red, Green, Blue): ArcGIS and QGIS
    show the class names from it, which GeoTIFF itself cannot store."""
    if not rows:
        return None
    fields = [("Value", 0, 5), ("ClassName", 2, 2), ("Red", 0, 6), ("Green", 0, 7), ("Blue", 0, 8)]
    lines = ["<PAMDataset>", '  <PAMRasterBand band="1">', '    <GDALRasterAttributeTable tableType="thematic">']
    for i, (name, kind, usage) in enumerate(fields):
        lines.append(
            f'      <FieldDefn index="{i}"><Name>{name}</Name><Type>{kind}</Type><Usage>{usage}</Usage></FieldDefn>'
        )
    for index, row in enumerate(rows):
        cells = [
            row.get("Value", 0),
            escape(str(row.get("ClassName", ""))),
            row.get("Red", 0),
            row.get("Green", 0),
            row.get("Blue", 0),
        ]
        lines.append(f'      <Row index="{index}">' + "".join(f"<F>{c}</F>" for c in cells) + "</Row>")
    lines += ["    </GDALRasterAttributeTable>", "  </PAMRasterBand>", "</PAMDataset>", ""]
    path = Path(str(tif) + ".aux.xml")
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def rings_to_map(rings: list, transform, row0: int, col0: int) -> list:
    """Rings in pixel coordinates of a block whose top-left raster pixel is (row0, col0) -> map coordinates."""
    out = []
    for ring in rings:
        points = []
        for x, y in ring:
            mx, my = transform @ (col0 + float(x), row0 + float(y))
            points.append([mx, my])
        if points and points[0] != points[-1]:
            points.append(points[0])
        out.append(points)
    return out


def write_geojson(path: Path, features: list[dict[str, Any]], crs) -> Path:
    """A FeatureCollection in the raster's coordinate system (named in the legacy `crs` member when known)."""
    collection: dict[str, Any] = {"type": "FeatureCollection", "features": features}
    epsg = crs.to_epsg() if crs is not None else None
    if epsg:
        collection["crs"] = {"type": "name", "properties": {"name": f"urn:ogc:def:crs:EPSG::{epsg}"}}
    path.write_text(json.dumps(collection), encoding="utf-8")
    return path


def signed_area(ring: list) -> float:
    """Shoelace area: positive for counter-clockwise rings (map coordinates, y up)."""
    return 0.5 * sum(x0 * y1 - x1 * y0 for (x0, y0), (x1, y1) in zip(ring, ring[1:]))


def _inside(point: list, ring: list) -> bool:
    x, y = point
    hit = False
    for (x0, y0), (x1, y1) in zip(ring, ring[1:]):
        if (y0 > y) != (y1 > y) and x < x0 + (y - y0) * (x1 - x0) / (y1 - y0):
            hit = not hit
    return hit


def geojson_feature(attributes: dict[str, Any], rings: list) -> dict[str, Any]:
    """A PRF feature's rings, in map coordinates, as GeoJSON. The PRFs' outer rings (Esri's pixel-space
    order) are counter-clockwise once rows become map y, as RFC 7946 wants them, holes clockwise; each hole
    goes with the outer ring around it, and several outer rings make a MultiPolygon."""
    props = {k: v for k, v in attributes.items() if k not in ("OID", "FID")}
    if not rings:
        return {"type": "Feature", "properties": props, "geometry": None}
    outer = [r for r in rings if signed_area(r) >= 0] or [r[::-1] for r in rings]
    holes = [r for r in rings if signed_area(r) < 0] if outer[0] in rings else []
    polygons = [[ring] for ring in outer]
    for hole in holes:
        home = next((p for p in polygons if _inside(hole[0], p[0])), polygons[0])
        home.append(hole)
    if len(polygons) == 1:
        return {"type": "Feature", "properties": props, "geometry": {"type": "Polygon", "coordinates": polygons[0]}}
    return {"type": "Feature", "properties": props, "geometry": {"type": "MultiPolygon", "coordinates": polygons}}
