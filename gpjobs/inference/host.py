"""Drive a package's Python raster function (PRF) over whole rasters, the way ArcGIS's deep-learning tools do.

Calls, in ArcGIS's order: initialize(model=<.emd>, device) -> getParameterInfo() (defaults of the model
arguments) -> getConfiguration(**arguments as strings) -> updateRasterInfo(output_info=...) -> per block
updatePixels(...) (pixel outputs, stitched into a GeoTIFF with the input's georeference) or vectorize(...)
(features, turned into map coordinates and written as GeoJSON). Blocks are `ty` x `tx` pixels plus `padding`
on every side, read with the band selection `extractBands`; outside the raster and where it has no data the
block is zero with `raster_mask` 0.

This module never imports torch: the PRF does, from the unzipped package, when it is loaded.
Server jobs (gpjobs/inference/job.py) call `run_inference` with a progress callback, a stop check that runs
between blocks, the job's processing grid (context extent / cell size) and a block journal folder: every
finished block is kept there, and a run over the same journal computes only the blocks still missing.
"""

from __future__ import annotations

import importlib.util
import json
import sys
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from gpjobs.inference import outputs
from gpjobs.inference.blocks import BlockJournal
from gpjobs.inference.grid import Grid, open_on_grid
from gpjobs.inference.package import PackageError, open_package

Progress = Callable[[int, int], None]
POLYGON = 4  # ArcGIS geometry types: 1 point, 2 multipoint, 3 polyline, 4 polygon


class InferenceError(ValueError):
    """The package, raster or arguments cannot be run; the message says what is wrong and how to fix it."""


class InferenceCancelled(RuntimeError):
    """The cancel check asked to stop; blocks written so far stay in the output."""


@dataclass
class InferenceResult:
    output: Path
    kind: str  # "pixels" | "features"
    blocks: int
    features: int = 0
    configuration: dict[str, Any] = field(default_factory=dict)
    sidecars: list[Path] = field(default_factory=list)
    fields: list[dict[str, Any]] = field(default_factory=list)  # features: the PRF's getFields
    resumed_blocks: int = 0  # blocks a journal already held


def load_prf(folder: Path, emd: dict[str, Any], emd_name: str = ".emd"):
    """The PRF instance the .emd's InferenceFunction names, loaded from the package folder."""
    name = str(emd.get("InferenceFunction") or "")
    if not name.endswith(".py"):
        raise InferenceError(
            f"{emd_name}: InferenceFunction is {name or 'missing'}; a gpjobs package names its "
            "Python raster function there (e.g. GpjobsPixelClassifier.py)"
        )
    path = folder / name
    if not path.is_file():
        raise InferenceError(
            f"{emd_name}: InferenceFunction {name} is not in the package; repackage the model "
            "with a current gpjobs (every package ships its raster function)"
        )
    module_name = f"gpjobs_prf_{path.stem}_{zlib.crc32(str(path.resolve()).encode()):08x}"
    try:
        spec = importlib.util.spec_from_file_location(module_name, path)
        if spec is None or spec.loader is None:
            raise ImportError(f"Python finds no loader for {path.name}")
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        spec.loader.exec_module(module)
    except Exception as exc:  # a PRF that does not import is the package's fault: say so, do not crash
        raise InferenceError(f"{name} could not be loaded: {type(exc).__name__}: {exc}") from exc
    cls = getattr(module, path.stem, None)
    if cls is None:
        raise InferenceError(
            f"{name} defines no class {path.stem} (ArcGIS instantiates the class named after the file)"
        )
    if not callable(getattr(cls, "getParameterInfo", None)):
        raise InferenceError(
            f"{name} is not a raster function (it has no getParameterInfo), so it does not run "
            f"over a raster: use it from Python as {name} describes (object trackers: "
            "init(frame, boxes), then update(frame)), or `gpjobs predict` on chips or frames"
        )
    return cls()


def _call(prf, method: str, *args, **kwargs):
    """A PRF call whose failure becomes an InferenceError naming the method (the message is the PRF's)."""
    try:
        return getattr(prf, method)(*args, **kwargs)
    except InferenceError:
        raise
    except Exception as exc:
        text = str(exc) or type(exc).__name__
        raise InferenceError(f"{type(prf).__name__}.{method}: {text}") from exc


def scalars_of(parameters: list[dict[str, Any]], arguments: dict[str, Any] | None) -> dict[str, str]:
    """Model arguments as ArcGIS passes them: every parameter's default, overridden by the user's, as strings."""
    fixed = {"raster", "rasters", "raster2", "model", "device"}
    known = {p["name"] for p in parameters}
    values = {p["name"]: p.get("value") for p in parameters if p["name"] not in fixed and p.get("value") is not None}
    unknown = sorted(set(arguments or {}) - known)
    if unknown:
        names = ", ".join(sorted(known - fixed))
        raise InferenceError(f"unknown model argument(s) {', '.join(unknown)}; this model takes: {names}")
    values.update(arguments or {})
    return {k: str(v) for k, v in values.items()}


class RasterSource:
    """Reads padded blocks of chosen bands; outside the raster and nodata -> 0 with mask 0."""

    def __init__(self, path: Path, bands: list[int], grid: Grid | None = None) -> None:
        try:
            self.dataset = open_on_grid(path, grid)
        except Exception as exc:
            raise InferenceError(f"{path}: not a raster rasterio can read ({exc})") from exc
        self.path = Path(path)
        if not bands or max(bands) >= self.dataset.count:
            self.dataset.close()
            raise InferenceError(
                f"{self.path.name} has {self.dataset.count} band(s) but the model reads bands "
                f"{[b + 1 for b in bands]} (ExtractBands {bands}, 0-based); use a raster with "
                "the bands the model was trained on"
            )
        self.bands = [b + 1 for b in bands]
        self.height, self.width = self.dataset.height, self.dataset.width
        self.dtype = np.dtype(self.dataset.dtypes[bands[0]])

    def read(self, row0: int, col0: int, rows: int, cols: int) -> tuple[np.ndarray, np.ndarray]:
        from rasterio.windows import Window

        pixels = np.zeros((len(self.bands), rows, cols), dtype=self.dtype)
        mask = np.zeros((len(self.bands), rows, cols), dtype=np.uint8)
        r0, c0 = max(row0, 0), max(col0, 0)
        r1, c1 = min(row0 + rows, self.height), min(col0 + cols, self.width)
        if r1 > r0 and c1 > c0:
            window = Window(c0, r0, c1 - c0, r1 - r0)
            inside = (slice(None), slice(r0 - row0, r1 - row0), slice(c0 - col0, c1 - col0))
            pixels[inside] = self.dataset.read(self.bands, window=window)
            mask[inside] = self.dataset.read_masks(self.bands, window=window) > 0
        return pixels, mask

    def close(self) -> None:
        self.dataset.close()


FEATURE_SUFFIXES = (".geojson", ".json")


def _mode(parameters: list[dict[str, Any]], prf, out: Path) -> str:
    """objects (Classify Objects), features (Detect Objects) or pixels (Classify Pixels and the other raster
    outputs). A PRF with both updatePixels and vectorize (panoptic) serves both tools: `out` says which."""
    names = [p["name"] for p in parameters]
    if "rasters" in names:
        return "objects"
    if hasattr(prf, "vectorize") and hasattr(prf, "updatePixels"):
        return "features" if out.suffix.lower() in FEATURE_SUFFIXES else "pixels"
    return "features" if hasattr(prf, "vectorize") else "pixels"


def run_inference(
    package: str | Path,
    rasters: list[str | Path],
    out: str | Path,
    *,
    arguments: dict[str, Any] | None = None,
    device: int = -1,
    features: str | Path | None = None,
    progress: Progress | None = None,
    cancelled: Callable[[], bool] | None = None,
    grid: Grid | None = None,
    journal_dir: str | Path | None = None,
) -> InferenceResult:
    """Run `package` over `rasters` (two for change detection) and write `out` (.tif for pixel outputs,
    .geojson for features; a panoptic package gives either, as `out` says). `progress(done, total)` after every
    block; `cancelled()` is asked between blocks (it may also raise to stop). `grid`: read the rasters on this
    grid (window and cell size). `journal_dir`: keep every finished block there and skip the blocks it holds."""
    try:
        with open_package(package) as pkg:
            prf = load_prf(pkg.folder, pkg.emd, pkg.emd_path.name)
            _call(prf, "initialize", model=str(pkg.emd_path), device=device)
            parameters = _call(prf, "getParameterInfo")
            scalars = scalars_of(parameters, arguments)
            config = _call(prf, "getConfiguration", **scalars)
            mode = _mode(parameters, prf, Path(out))
            names = [p["name"] for p in parameters if p.get("dataType") == "raster"] or ["raster"]
            if mode != "objects" and len(rasters) != len(names):
                raise InferenceError(
                    f"this model takes {len(names)} raster(s) ({', '.join(names)}); {len(rasters)} given"
                )
            bands = [int(b) for b in config.get("extractBands") or pkg.emd.get("ExtractBands") or [0, 1, 2]]
            sources = [RasterSource(Path(r), bands, grid) for r in rasters]
            try:
                _same_grid(sources)
                journal = None
                if journal_dir is not None:
                    journal = BlockJournal(
                        Path(journal_dir), _fingerprint(package, rasters, grid, config, scalars, mode)
                    )
                job = _Job(prf, config, sources, names, Path(out), progress, cancelled, journal)
                if mode == "pixels":
                    return job.pixels()
                if mode == "features":
                    return job.detections()
                return job.objects(features)
            finally:
                for source in sources:
                    source.close()
    except PackageError as exc:
        raise InferenceError(str(exc)) from exc


def _fingerprint(
    package: str | Path,
    rasters: list[str | Path],
    grid: Grid | None,
    config: dict[str, Any],
    scalars: dict[str, str],
    mode: str,
) -> dict[str, Any]:
    """What a journal's blocks were computed from: blocks of another package file, raster, grid or tiling
    are not reused."""

    def stamp(path: str | Path) -> list[Any]:
        st = Path(path).stat()
        return [str(Path(path).resolve()), st.st_size, st.st_mtime_ns]

    return {
        "package": stamp(package),
        "rasters": [stamp(r) for r in rasters],
        "grid": None if grid is None else [list(grid.transform), grid.width, grid.height],
        "tile": [int(config["tx"]), int(config["ty"]), int(config.get("padding", 0))],
        "arguments": scalars,
        "mode": mode,
    }


def _same_grid(sources: list[RasterSource]) -> None:
    first = sources[0].dataset
    for other in sources[1:]:
        d = other.dataset
        if (d.width, d.height) != (first.width, first.height) or d.transform != first.transform:
            raise InferenceError(
                f"{other.path.name} and {sources[0].path.name} must share one grid (size and "
                "georeference) for change detection; resample one onto the other first"
            )


class _Job:
    def __init__(
        self,
        prf,
        config: dict[str, Any],
        sources: list[RasterSource],
        names: list[str],
        out: Path,
        progress: Progress | None,
        cancelled: Callable[[], bool] | None,
        journal: BlockJournal | None = None,
    ) -> None:
        self.prf, self.config, self.sources, self.names, self.out = prf, config, sources, names, out
        self.progress, self.cancelled, self.journal = progress, cancelled, journal
        self.resumed = len(journal) if journal is not None else 0
        self.padding = int(config.get("padding", 0))
        self.tx, self.ty = int(config["tx"]), int(config["ty"])
        first = sources[0]
        self.height, self.width = first.height, first.width
        self.grid = [(r, c) for r in range(0, self.height, self.ty) for c in range(0, self.width, self.tx)]

    def _pending(self, total: int) -> list[int]:
        """Indexes of the blocks (or batches) still to compute; reports the journal's ones as done."""
        pending = [i for i in range(total) if self.journal is None or not self.journal.done(i)]
        if self.progress is not None and len(pending) < total:
            self.progress(total - len(pending), total)
        return pending

    def _stop_check(self, done: int, total: int) -> None:
        if self.cancelled is not None and self.cancelled():
            raise InferenceCancelled(f"cancelled after {done} of {total} blocks")

    def _blocks(self) -> Iterator[tuple[int, int, int, dict[str, Any]]]:
        total = len(self.grid)
        pending = self._pending(total)
        for count, index in enumerate(pending):
            self._stop_check(total - len(pending) + count, total)
            row0, col0 = self.grid[index]
            p = self.padding
            blocks: dict[str, Any] = {}
            for name, source in zip(self.names, self.sources):
                pixels, mask = source.read(row0 - p, col0 - p, self.ty + 2 * p, self.tx + 2 * p)
                blocks[f"{name}_pixels"], blocks[f"{name}_mask"] = pixels, mask
            yield index, row0, col0, blocks
            if self.progress is not None:
                self.progress(total - len(pending) + count + 1, total)

    def pixels(self) -> InferenceResult:
        from rasterio.transform import Affine

        src = self.sources[0].dataset
        info = {"bandCount": 1, "pixelType": "f4", "cellSize": (src.res[0], src.res[1]), "noData": None}
        raster_info = {
            "bandCount": len(self.sources[0].bands),
            "pixelType": src.dtypes[0],
            "cellSize": (src.res[0], src.res[1]),
            "width": src.width,
            "height": src.height,
        }
        kwargs = _call(
            self.prf, "updateRasterInfo", output_info=info, **{f"{n}_info": raster_info for n in self.names}
        ) or {"output_info": info}
        info = kwargs.get("output_info", info)
        upscale = max(1, int(round(src.res[0] / float(info.get("cellSize", src.res)[0]))))
        dtype = outputs.numpy_dtype(info.get("pixelType", "f4"))
        nodata = info.get("noData")
        nodata = None if nodata is None else float(np.asarray(nodata).ravel()[0])
        rows = outputs.class_rows(info.get("rasterAttributeTable"))
        profile = {
            "driver": "GTiff",
            "width": src.width * upscale,
            "height": src.height * upscale,
            "count": int(info.get("bandCount", 1)),
            "dtype": dtype.name,
            "crs": src.crs,
            "transform": src.transform @ Affine.scale(1.0 / upscale),
            "nodata": nodata,
            "tiled": True,
            "blockxsize": 256,
            "blockysize": 256,
            "compress": "deflate",
            "BIGTIFF": "IF_SAFER",
        }
        self.out.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._write_pixels(profile, rows, info, upscale, dtype)
        except InferenceError:
            self.out.unlink(missing_ok=True)  # a half-written result would look like an answer
            raise
        sidecar = outputs.write_rat_sidecar(self.out, rows)
        return InferenceResult(
            self.out,
            "pixels",
            len(self.grid),
            configuration=self.config,
            sidecars=[sidecar] if sidecar else [],
            resumed_blocks=self.resumed,
        )

    def _write_pixels(
        self, profile: dict[str, Any], rows: list, info: dict[str, Any], upscale: int, dtype: np.dtype
    ) -> None:
        import rasterio
        from rasterio.windows import Window

        src = self.sources[0].dataset
        with rasterio.open(self.out, "w", **profile) as dst:
            outputs.write_class_metadata(dst, rows)
            props = {"pixelType": info.get("pixelType", dtype.str[1:]), "cellSize": info.get("cellSize")}
            for index, row0, col0, blocks in self._blocks():
                shape = (profile["count"], self.ty * upscale, self.tx * upscale)
                tlc = src.transform @ (col0, row0)
                result = _call(self.prf, "updatePixels", tlc, shape, props, **blocks)
                block = np.asarray(result["output_pixels"])
                if block.ndim == 2:
                    block = block[None]
                h = min(block.shape[1], (self.height - row0) * upscale)
                w = min(block.shape[2], (self.width - col0) * upscale)
                block = block[:, :h, :w].astype(dtype, copy=False)
                if self.journal is not None:
                    self.journal.save_pixels(index, block)  # the GeoTIFF is written from the journal at the end
                else:
                    dst.write(block, window=Window(col0 * upscale, row0 * upscale, w, h))
            if self.journal is not None:
                for index, (row0, col0) in enumerate(self.grid):
                    block = self.journal.load_pixels(index)
                    dst.write(block, window=Window(col0 * upscale, row0 * upscale, block.shape[2], block.shape[1]))

    def _declare_features(self) -> list[dict[str, Any]]:
        """getFields / getGeometryType, as the feature tools ask before the first block: polygons only here.
        Returns the declared fields."""
        declared = _call(self.prf, "getFields")
        kind = _call(self.prf, "getGeometryType")
        if int(kind) != POLYGON:
            raise InferenceError(
                f"{type(self.prf).__name__} gives geometry type {kind}; the host writes polygons (type {POLYGON}) only"
            )
        fields = json.loads(declared) if isinstance(declared, str) else declared or {}
        return list(fields.get("fields", []))

    def _collect(self, total: int, found: dict[int, list[dict[str, Any]]]) -> list[dict[str, Any]]:
        """Every block's features in block order: the ones just found, the journal's for the others."""
        out: list[dict[str, Any]] = []
        for index in range(total):
            if index in found:
                out.extend(found[index])
            else:  # only a journal skips blocks
                assert self.journal is not None
                out.extend(self.journal.load_features(index))
        return out

    def _keep(self, found: dict[int, list[dict[str, Any]]], index: int, features: list[dict[str, Any]]) -> None:
        if self.journal is not None:
            self.journal.save_features(index, features)
        found[index] = features

    def detections(self) -> InferenceResult:
        fields = self._declare_features()
        src = self.sources[0].dataset
        found: dict[int, list[dict[str, Any]]] = {}
        for index, row0, col0, blocks in self._blocks():
            result = _call(self.prf, "vectorize", **blocks)
            vectors = (
                json.loads(result["output_vectors"])
                if isinstance(result.get("output_vectors"), str)
                else result.get("output_vectors", {})
            )
            self._keep(
                found,
                index,
                [
                    outputs.geojson_feature(
                        f.get("attributes", {}), outputs.rings_to_map(f["geometry"]["rings"], src.transform, row0, col0)
                    )
                    for f in vectors.get("features", [])
                ],
            )
        features = self._collect(len(self.grid), found)
        self.out.parent.mkdir(parents=True, exist_ok=True)
        outputs.write_geojson(self.out, features, src.crs)
        return InferenceResult(
            self.out, "features", len(self.grid), len(features), self.config, fields=fields, resumed_blocks=self.resumed
        )

    def objects(self, features_path: str | Path | None) -> InferenceResult:
        """Classify Objects: one chip per input polygon (centred on it), or per tile of the raster without one."""
        fields = self._declare_features()
        src = self.sources[0]
        size_y, size_x = int(self.config["ty"]), int(self.config["tx"])
        batch = max(1, int(self.config.get("batch_size", 1)))
        regions = _object_regions(features_path, src, size_y, size_x)
        found: dict[int, list[dict[str, Any]]] = {}
        total = (len(regions) + batch - 1) // batch
        pending = self._pending(total)
        for count, index in enumerate(pending):
            self._stop_check(total - len(pending) + count, total)
            start = index * batch
            out: list[dict[str, Any]] = []
            group = regions[start : start + batch]
            chips = [src.read(r, c, size_y, size_x) for r, c, _ in group]
            result = _call(
                self.prf, "vectorize", rasters_pixels=[p for p, _ in chips], rasters_mask=[m for _, m in chips]
            )
            classified = json.loads(result["output_vectors"]).get("features", [])
            for (row0, col0, original), feature in zip(group, classified):
                attributes = feature.get("attributes", {})
                if original is None:
                    rings = outputs.rings_to_map(feature["geometry"]["rings"], src.dataset.transform, row0, col0)
                    out.append(outputs.geojson_feature(attributes, rings))
                else:  # the input polygon, its attributes and the model's
                    props = {**original["properties"], **outputs.geojson_feature(attributes, [])["properties"]}
                    out.append({"type": "Feature", "properties": props, "geometry": original["geometry"]})
            self._keep(found, index, out)
            if self.progress is not None:
                self.progress(total - len(pending) + count + 1, total)
        features = self._collect(total, found)
        self.out.parent.mkdir(parents=True, exist_ok=True)
        outputs.write_geojson(self.out, features, src.dataset.crs)
        return InferenceResult(
            self.out, "features", total, len(features), self.config, fields=fields, resumed_blocks=self.resumed
        )


def _object_regions(features_path, src: RasterSource, size_y: int, size_x: int) -> list[tuple[int, int, Any]]:
    """(row0, col0, input feature or None) of every chip to classify."""
    if features_path is None:
        return [(r, c, None) for r in range(0, src.height, size_y) for c in range(0, src.width, size_x)]
    try:
        collection = json.loads(Path(features_path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InferenceError(f"{features_path}: not a readable GeoJSON file ({exc})") from exc
    inverse = ~src.dataset.transform
    regions = []
    for feature in collection.get("features", []):
        geometry = feature.get("geometry") or {}
        rings = geometry.get("coordinates") or []
        if geometry.get("type") != "Polygon" or not rings:
            raise InferenceError(
                f"{Path(features_path).name}: classify objects takes Polygon features (found {geometry.get('type')})"
            )
        cols, rows = zip(*(inverse @ (x, y) for x, y in rings[0]))
        row_c, col_c = (min(rows) + max(rows)) / 2, (min(cols) + max(cols)) / 2
        regions.append(
            (
                int(round(row_c - size_y / 2)),
                int(round(col_c - size_x / 2)),
                {"geometry": geometry, "properties": feature.get("properties") or {}},
            )
        )
    return regions
