"""The PRF host as server jobs drive it: a run stopped midway and run again over its block journal computes only
the missing blocks and writes what one uninterrupted run writes; context extent / cell size give the output
its window and cell size; features get a GeoPackage with the declared fields; runNMS drops duplicates."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from gpjobs.inference import geopackage, nms
from gpjobs.inference.grid import Extent, describe_raster, target_grid
from gpjobs.inference.host import run_inference
from tests.builders.rasters import CELL, ORIGIN, write_raster

ARGS = {"padding": 4, "batch_size": 1}


class Stop(Exception):
    pass


def read(path: Path) -> tuple[np.ndarray, object, object]:
    import rasterio

    with rasterio.open(path) as ds:
        return ds.read(), ds.transform, ds.crs


@pytest.mark.slow  # runs a trained package
def test_a_stopped_run_resumes_from_its_journal(trained, tmp_path: Path) -> None:
    package = trained("UNET")["package"]
    raster = write_raster(tmp_path / "scene.tif", width=256, height=224)  # 64-px tiles, padding 4: 5 x 4 blocks
    whole = run_inference(package, [raster], tmp_path / "whole.tif", arguments=ARGS)
    calls: list[tuple[int, int]] = []

    def stop_after_five() -> bool:
        if len(calls) >= 5:
            raise Stop
        return False

    with pytest.raises(Stop):
        run_inference(
            package,
            [raster],
            tmp_path / "out.tif",
            arguments=ARGS,
            journal_dir=tmp_path / "blocks",
            progress=lambda done, total: calls.append((done, total)),
            cancelled=stop_after_five,
        )
    assert calls[-1] == (5, whole.blocks) and whole.blocks > 10
    resumed: list[tuple[int, int]] = []
    again = run_inference(
        package,
        [raster],
        tmp_path / "out.tif",
        arguments=ARGS,
        journal_dir=tmp_path / "blocks",
        progress=lambda done, total: resumed.append((done, total)),
    )
    assert again.resumed_blocks == 5 and resumed[0] == (5, whole.blocks)  # the journal's blocks count as done
    assert len(resumed) == whole.blocks - 5 + 1  # ...and only the others were computed
    expected, transform, crs = read(whole.output)
    got, got_transform, got_crs = read(again.output)
    assert np.array_equal(got, expected) and got_transform == transform and got_crs == crs
    # other arguments: the journal's blocks belong to another run and are not reused
    other = run_inference(
        package, [raster], tmp_path / "other.tif", arguments={**ARGS, "padding": 2}, journal_dir=tmp_path / "blocks"
    )
    assert other.resumed_blocks == 0


@pytest.mark.slow  # runs a trained package
def test_extent_and_cell_size_make_the_output_grid(trained, tmp_path: Path) -> None:
    package = trained("UNET")["package"]
    raster = write_raster(tmp_path / "scene.tif", width=96, height=80)
    info = describe_raster(raster)
    # a window of the raster, not on its pixel edges: snapped outwards to whole pixels
    window = target_grid(info, Extent(ORIGIN[0] + 10.2, ORIGIN[1] - 20.1, ORIGIN[0] + 30.3, ORIGIN[1] - 5.0), None)
    out = run_inference(package, [raster], tmp_path / "window.tif", arguments=ARGS, grid=window)
    pixels, transform, _ = read(out.output)
    assert pixels.shape[1:] == (31, 41) and (transform.c, transform.f) == (ORIGIN[0] + 10.0, ORIGIN[1] - 5.0)
    whole = run_inference(package, [raster], tmp_path / "whole.tif", arguments={"padding": 0, "batch_size": 1})
    inside = run_inference(
        package,
        [raster],
        tmp_path / "inside.tif",
        arguments={"padding": 0, "batch_size": 1},
        grid=target_grid(info, Extent(ORIGIN[0], ORIGIN[1] - 32.0, ORIGIN[0] + 32.0, ORIGIN[1]), None),
    )
    # a window of exactly the first 64-px tile, no padding: its classes are the whole run's, pixel for pixel
    assert np.array_equal(read(inside.output)[0], read(whole.output)[0][:, :64, :64])
    coarse = run_inference(
        package, [raster], tmp_path / "coarse.tif", arguments=ARGS, grid=target_grid(info, None, 2 * CELL)
    )
    pixels, transform, _ = read(coarse.output)
    assert pixels.shape[1:] == (40, 48) and transform.a == 2 * CELL and transform.e == -2 * CELL


@pytest.mark.slow  # runs a trained package
def test_features_get_a_geopackage_with_the_declared_fields(trained, tmp_path: Path) -> None:
    import pyogrio

    package = trained("SSD")["package"]
    raster = write_raster(tmp_path / "scene.tif", width=64, height=64)
    result = run_inference(package, [raster], tmp_path / "objects.geojson", arguments={"threshold": 0.0})
    features = json.loads(result.output.read_text())["features"]
    assert features, "an SSD with bias 0 finds boxes after one epoch"
    assert [f["name"] for f in result.fields] == ["OID", "Class", "Confidence", "ClassValue", "Shape"]
    gpkg = geopackage.write_geopackage(
        result.output, tmp_path / "objects.gpkg", result.fields, features, describe_raster(raster).crs_wkt
    )
    info = pyogrio.read_info(gpkg)
    assert list(info["fields"]) == ["Class", "Confidence", "ClassValue"]
    assert list(info["dtypes"]) == ["object", "float64", "int32"] and info["crs"] == "EPSG:32617"
    assert info["features"] == len(features) and info["geometry_type"] == "Polygon"
    _meta, _fids, geometry, columns = pyogrio.raw.read(gpkg)
    assert list(columns[1]) == [f["properties"]["Confidence"] for f in features] and len(geometry) == len(features)


def box(x0: float, y0: float, x1: float, y1: float, **props) -> dict:
    return {
        "type": "Feature",
        "properties": props,
        "geometry": {"type": "Polygon", "coordinates": [[[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]]},
    }


def test_nms_drops_the_weaker_of_overlapping_objects_of_one_class() -> None:
    features = [
        box(0, 0, 10, 10, Confidence=80, ClassValue=1),
        box(1, 1, 11, 11, Confidence=90, ClassValue=1),
        box(1, 1, 11, 11, Confidence=70, ClassValue=2),
        box(20, 20, 30, 30, Confidence=10, ClassValue=1),
        box(9, 9, 19, 19, Confidence=60, ClassValue=1),
    ]
    kept = nms.suppress(features, confidence_field="Confidence", class_field=None, max_overlap_ratio=0.5)
    assert [f["properties"]["Confidence"] for f in kept] == [90, 70, 10, 60]  # 80 overlaps 90 by 0.68
    strict = nms.suppress(features, confidence_field="confidence", class_field=None, max_overlap_ratio=0.0)
    assert [f["properties"]["Confidence"] for f in strict] == [90, 70, 10]  # any overlap of one class
    one_class = nms.suppress(features, confidence_field="Confidence", class_field="nosuchfield", max_overlap_ratio=0.5)
    assert [f["properties"]["Confidence"] for f in one_class] == [90, 10, 60]
