"""The torch-free validation report: every format, broken exports, multi-folder merges, real samples."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from gpjobs.export import DataError, inspect_folders, read_chip, scan_folders
from gpjobs.export.metadata import parse_map_txt, read_export_meta
from tests.builders.exports import (
    WRITERS,
    box_outside_chip,
    corrupt_chip,
    empty_label_file,
    mismatch_stem,
    remove_file,
    set_label_value,
    truncate_chip,
    write_classified_tiles,
    write_kitti,
    write_labeled_tiles,
    write_multilabeled_tiles,
    write_pascal_voc,
)


@pytest.mark.parametrize("fmt", sorted(WRITERS))
def test_every_format_is_detected_and_clean(tmp_path, fmt):
    folder = WRITERS[fmt](tmp_path)
    report = inspect_folders([folder], full=True)
    assert report.format == fmt
    assert report.ok, report.errors
    assert report.warnings == []
    assert report.chips == report.checked_chips > 0
    assert report.chip_size == (32, 32) and report.bands == 3 and report.dtype == "uint8"
    if report.classes:
        assert all(c["count"] > 0 for c in report.classes)


@pytest.mark.parametrize(
    "dtype,bands,ext,compression",
    [
        ("uint16", 6, "tif", "lzw"),
        ("int16", 4, "tif", "deflate"),
        ("float32", 1, "tif", None),
        ("uint8", 3, "png", None),
        ("uint8", 3, "jpg", None),
        ("uint8", 1, "png", None),
    ],
)
def test_imagery_types(tmp_path, dtype, bands, ext, compression):
    folder = write_classified_tiles(tmp_path, n=4, bands=bands, dtype=dtype, ext=ext, compression=compression)
    report = inspect_folders([folder], full=True)
    assert report.ok, report.errors
    assert (report.bands, report.dtype) == (bands, dtype)
    chip = read_chip(next((folder / "images").iterdir()))
    assert chip.shape == (32, 32, bands) and str(chip.dtype) == dtype


def test_side_files_12_digit_names_and_extract_bands(tmp_path):
    folder = write_pascal_voc(tmp_path, n=5, ext="jpg", side_files=True, digits=12, start_index=100)
    assert any(p.name == "Thumbs.db" for p in (folder / "images").iterdir())
    report = inspect_folders([folder], full=True)
    assert report.ok and report.chips == 5 and report.warnings == []
    chip = next(p for p in sorted((folder / "images").iterdir()) if p.suffix == ".jpg")
    assert len(chip.stem) == 12
    assert read_chip(chip, extract_bands=[2, 0]).shape == (32, 32, 2)


def test_map_txt_is_tolerant():
    rows = parse_map_txt("images\\000000001.tif  labels\\000000001.tif \r\n\r\nimages\\a.tif\r\n")
    assert rows == [["images/000000001.tif", "labels/000000001.tif"], ["images/a.tif"]]


def test_placeholders_are_not_numbers(tmp_path):
    meta = read_export_meta(write_kitti(tmp_path, n=2))
    assert meta.emd["ImageHeight"] == "e.g. 256" and meta.tile_size == (32, 32)


def _one_error(report, *needles):
    assert not report.ok
    text = " ".join(report.errors)
    for needle in needles:
        assert needle in text, text
    return text


def test_out_of_range_label_values(tmp_path):
    seg = write_classified_tiles(tmp_path, n=4)
    path = set_label_value(seg, 9)
    _one_error(inspect_folders([seg], full=True), path.name, "values 9", "class list")
    for writer in (write_pascal_voc, write_kitti, write_labeled_tiles):
        folder = writer(tmp_path, n=4, name=writer.__name__)
        path = set_label_value(folder, 7)
        _one_error(inspect_folders([folder], full=True), path.name, "'7'")


def test_empty_label_files_are_errors_even_in_the_fast_check(tmp_path):
    folder = write_pascal_voc(tmp_path, n=40)
    path = empty_label_file(folder, "000000033")  # stem 11 of 0,3,6...: outside a 3-chip sample
    _one_error(inspect_folders([folder], full=True), f"labels/{path.name}", "empty")
    fast = inspect_folders([folder], sample=3)
    assert fast.checked_chips == 3
    _one_error(fast, path.name)


def test_truncated_and_corrupt_chips(tmp_path):
    folder = write_classified_tiles(tmp_path, n=4, bands=6, dtype="uint16")
    truncated = truncate_chip(folder)
    corrupt = corrupt_chip(folder, "000000003")
    _one_error(inspect_folders([folder], full=True), truncated.name, corrupt.name, "cannot be decoded")


def test_mismatched_stems_are_reported_by_name(tmp_path):
    folder = write_kitti(tmp_path, n=4)
    moved = mismatch_stem(folder)
    report = inspect_folders([folder], full=True)
    assert report.ok and report.chips == 3
    text = " ".join(report.warnings)
    assert "images/000000000.tif" in text and f"labels/{moved.name}" in text


def test_boxes_outside_the_chip(tmp_path):
    folder = write_pascal_voc(tmp_path, n=3)
    path = box_outside_chip(folder)
    _one_error(inspect_folders([folder], full=True), path.name, "outside")


def test_no_chips_and_missing_metadata(tmp_path):
    folder = write_classified_tiles(tmp_path, n=2)
    remove_file(folder, "esri_model_definition.emd")
    _one_error(inspect_folders([folder]), "esri_model_definition.emd missing")
    report = inspect_folders([tmp_path / "nowhere"])
    assert not report.ok


def test_folders_merge_when_classes_agree(tmp_path):
    a = write_classified_tiles(tmp_path, n=4, name="a")
    b = write_classified_tiles(tmp_path, n=6, name="b", seed=3)
    report = inspect_folders([a, b], full=True)
    assert report.ok and report.chips == 10


def test_folders_with_different_classes_name_the_class(tmp_path):
    a = write_classified_tiles(tmp_path, n=2, name="a")
    b = write_classified_tiles(tmp_path, n=2, name="b", classes=((1, "a"), (2, "roads")))
    _one_error(inspect_folders([a, b]), "class 2", "'b'", "'roads'")
    c = write_classified_tiles(tmp_path, n=2, name="c", classes=((1, "a"), (2, "b"), (3, "c")))
    _one_error(inspect_folders([a, c]), "class 3 'c'")
    d = write_pascal_voc(tmp_path, n=2, name="d")
    _one_error(inspect_folders([a, d]), "same metadata format")


def test_multilabel_names_or_values(tmp_path):
    folder = write_multilabeled_tiles(tmp_path, n=6, label_names=True)
    report = inspect_folders([folder], full=True)
    assert report.ok and sum(c["count"] for c in report.classes) > 6


def test_scan_keeps_parsed_boxes(tmp_path):
    scan = scan_folders([write_kitti(tmp_path, n=3)])
    assert all(r.objects for r in scan.records)
    value, box = scan.records[0].objects[0]
    assert value in (1, 2) and 0 <= box[0] < box[2] <= 32


def test_data_error_names_files(tmp_path):
    folder = write_classified_tiles(tmp_path, n=2)
    path = set_label_value(folder, 42)
    err = DataError(inspect_folders([folder], full=True))
    assert path.name in str(err) and "Fix:" in str(err)


# --- real samples ---------------------------------------------------------------------------------

SAMPLES = {
    "phragmites-kitti": ("KITTI_rectangles", 50, 6, "uint16", 7),
    "palm-pascal-voc": ("PASCAL_VOC_rectangles", 150, 3, "uint8", 1),
}


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_real_samples(samples_dir, name):
    fmt, chips, bands, dtype, n_classes = SAMPLES[name]
    report = inspect_folders([samples_dir / name], full=True)
    assert report.ok, report.errors
    assert (report.format, report.chips, report.bands, report.dtype) == (fmt, chips, bands, dtype)
    assert len(report.classes) == n_classes
    assert report.listed_in_map > chips  # map.txt describes chips that are absent


def test_real_sample_counts(samples_dir):
    kitti = inspect_folders([samples_dir / "phragmites-kitti"], full=True)
    assert [c["count"] for c in kitti.classes][:3] == [28, 20, 2]
    assert kitti.classes[6]["name"] == "Phragmites"
    palm = inspect_folders([samples_dir / "palm-pascal-voc"], full=True)
    assert palm.classes == [{"value": 1, "name": "Palm", "count": 425}]


def _inspect_json(*folders: Path) -> tuple[int, dict]:
    proc = subprocess.run(
        [sys.executable, "-m", "gpjobs.cli", "inspect", *map(str, folders), "--json"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    return proc.returncode, json.loads(proc.stdout)


@pytest.mark.slow  # the CLI in a fresh interpreter
def test_cli_json_on_real_samples(samples_dir):
    code, data = _inspect_json(samples_dir / "phragmites-kitti")
    assert code == 0
    assert (data["format"], data["chips"], data["chip_size"], data["bands"], data["dtype"]) == (
        "KITTI_rectangles",
        50,
        [32, 32],
        6,
        "uint16",
    )
    assert {"value": 7, "name": "Phragmites", "count": 0} in data["classes"]
    code, data = _inspect_json(samples_dir / "building-unet-classified-tiles")
    assert code != 0  # metadata only: no chips present
    assert (data["format"], data["chips"], data["chip_size"], data["bands"]) == ("Classified_Tiles", 0, [400, 400], 3)
    assert [c["value"] for c in data["classes"]] == [1, 2] and data["errors"]


def test_cli_exits_nonzero_on_errors(tmp_path):
    folder = write_kitti(tmp_path, n=3)
    empty_label_file(folder)
    code, data = _inspect_json(folder)
    assert code == 1 and data["errors"] and isinstance(data["warnings"], list)


def test_inspect_does_not_import_torch(tmp_path):
    folder = write_kitti(tmp_path, n=2)
    code = (
        f"import sys; from gpjobs.export import inspect_folders; "
        f"r = inspect_folders([{str(folder)!r}]); assert r.ok; assert 'torch' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
