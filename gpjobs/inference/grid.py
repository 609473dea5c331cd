"""The pixel grid an inference run works on: the input raster's own, or the one `context.extent` and
`context.cellSize` ask for (a window of the raster, resampled to another cell size).

The server reads a raster's description here when a job is submitted (no torch, only rasterio); the child opens
its rasters on the job's grid with `open_on_grid`, a GDAL warped view, so the host reads blocks of it exactly as
it reads a plain raster.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# ArcGIS' resampling environment defaults to nearest: class values and band values stay values of the raster.
RESAMPLING = "nearest"


class GridError(ValueError):
    """A raster that cannot be read, or an extent / cell size that does not fit it (the text says which)."""


@dataclass(frozen=True)
class RasterInfo:
    """What submit checks need to know about an input raster."""

    path: str
    width: int
    height: int
    count: int
    dtypes: tuple[str, ...]
    crs_wkt: str | None
    epsg: int | None
    bounds: tuple[float, float, float, float]  # left, bottom, right, top in the raster's CRS
    cell: tuple[float, float]  # x, y cell size


@dataclass(frozen=True)
class Extent:
    """`context.extent`: a rectangle, in `wkid`'s coordinates (None: the raster's own)."""

    xmin: float
    ymin: float
    xmax: float
    ymax: float
    wkid: int | None = None


@dataclass(frozen=True)
class Grid:
    """A target grid: the affine transform (6 numbers, rasterio order a, b, c, d, e, f) and its size."""

    transform: tuple[float, float, float, float, float, float]
    width: int
    height: int


def describe_raster(path: str | Path) -> RasterInfo:
    """The raster's size, bands, types and georeference; GridError when rasterio cannot open it."""
    import rasterio

    try:
        with rasterio.open(path) as ds:
            epsg = ds.crs.to_epsg() if ds.crs is not None else None
            return RasterInfo(
                str(path),
                ds.width,
                ds.height,
                ds.count,
                tuple(ds.dtypes),
                ds.crs.to_wkt() if ds.crs is not None else None,
                epsg,
                tuple(ds.bounds),
                (abs(ds.res[0]), abs(ds.res[1])),
            )
    except rasterio.errors.RasterioError as exc:
        raise GridError(f"not a raster that can be read ({exc})") from None


def extent_in_raster_crs(extent: Extent, info: RasterInfo) -> tuple[float, float, float, float]:
    """The extent's corners in the raster's coordinates (left, bottom, right, top)."""
    box = (extent.xmin, extent.ymin, extent.xmax, extent.ymax)
    if extent.wkid is None or extent.wkid == info.epsg or info.crs_wkt is None:
        return box
    from rasterio.crs import CRS
    from rasterio.errors import CRSError
    from rasterio.warp import transform_bounds

    try:
        return tuple(transform_bounds(CRS.from_epsg(extent.wkid), CRS.from_wkt(info.crs_wkt), *box))
    except CRSError as exc:
        raise GridError(
            f"extent spatialReference wkid {extent.wkid} is not a known coordinate system ({exc})"
        ) from None


def target_grid(info: RasterInfo, extent: Extent | None, cell_size: float | None) -> Grid | None:
    """The grid `extent` and `cell_size` ask for over `info` (None: the raster's own grid, nothing to do).

    Without a cell size the window snaps outwards to the raster's pixels, so pixels are copied, not resampled.
    An extent that misses the raster is a GridError; one that overlaps part of it is cut to the overlap.
    """
    if extent is None and cell_size is None:
        return None
    left, bottom, right, top = info.bounds
    if extent is not None:
        x0, y0, x1, y1 = extent_in_raster_crs(extent, info)
        left, bottom, right, top = max(left, x0), max(bottom, y0), min(right, x1), min(top, y1)
        if right <= left or top <= bottom:
            raise GridError(
                f"extent ({x0:g}, {y0:g}, {x1:g}, {y1:g}) lies outside the raster, whose extent is "
                f"({info.bounds[0]:g}, {info.bounds[1]:g}, {info.bounds[2]:g}, {info.bounds[3]:g}); "
                "give an extent that overlaps it (in the raster's coordinates, or name its wkid)"
            )
    cx, cy = info.cell
    if cell_size is None:
        # snap outwards to whole pixels of the raster
        ox, oy = info.bounds[0], info.bounds[3]
        col0, col1 = math.floor((left - ox) / cx + 1e-9), math.ceil((right - ox) / cx - 1e-9)
        row0, row1 = math.floor((oy - top) / cy + 1e-9), math.ceil((oy - bottom) / cy - 1e-9)
        return Grid((cx, 0.0, ox + col0 * cx, 0.0, -cy, oy - row0 * cy), max(1, col1 - col0), max(1, row1 - row0))
    width = max(1, round((right - left) / cell_size))
    height = max(1, round((top - bottom) / cell_size))
    return Grid((cell_size, 0.0, left, 0.0, -cell_size, top), width, height)


def open_on_grid(path: str | Path, grid: Grid | None) -> Any:
    """The raster opened for reading, seen through `grid` when there is one (a WarpedVRT the caller closes;
    closing it does not close the file, so both are returned in one object with a `close`)."""
    import rasterio

    dataset = rasterio.open(path)
    if grid is None:
        return dataset
    from rasterio.enums import Resampling
    from rasterio.transform import Affine
    from rasterio.vrt import WarpedVRT

    try:
        vrt = WarpedVRT(
            dataset,
            crs=dataset.crs,
            transform=Affine(*grid.transform),
            width=grid.width,
            height=grid.height,
            resampling=Resampling[RESAMPLING],
        )
    except Exception:
        dataset.close()
        raise
    return _Owned(vrt, dataset)


class _Owned:
    """A warped view that also closes the dataset under it."""

    def __init__(self, vrt: Any, dataset: Any) -> None:
        self._vrt, self._dataset = vrt, dataset

    def __getattr__(self, name: str) -> Any:
        return getattr(self._vrt, name)

    def close(self) -> None:
        self._vrt.close()
        self._dataset.close()
