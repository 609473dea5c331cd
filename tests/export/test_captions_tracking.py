"""ImageCaptioning and ObjectTracking data, the Panoptic_Segmentation chip rule: read, validate, fix-it errors."""

from __future__ import annotations

import json
import shutil

import pytest

from gpjobs.catalog import MODEL_TYPES, chip_size_problem
from gpjobs.export import export_format, inspect_folders
from gpjobs.export.captions import Vocabulary, detokenize, tokenize
from gpjobs.export.check import ExportFolderError
from tests.builders.exports import write_image_captioning, write_multilabeled_tiles, write_object_tracking


def test_caption_export_is_told_from_multilabeled_tiles(tmp_path):
    captions = write_image_captioning(tmp_path)
    assert export_format(captions) == "ImageCaptioning"
    assert export_format(write_multilabeled_tiles(tmp_path)) == "MultiLabeled_Tiles"
    report = inspect_folders([captions], full=True)
    assert report.ok and report.chips == 16 and report.classes == []


def test_tokens_and_vocabulary():
    assert tokenize("A red-ish square, in the TOP left corner.") == [
        "a",
        "red-ish",
        "square",
        ",",
        "in",
        "the",
        "top",
        "left",
        "corner",
        ".",
    ]
    vocab = Vocabulary.build(["a red square.", "a red disc.", "a blue square."], min_freq=2)
    assert vocab.itos == ["xxpad", "xxunk", "xxbos", "xxeos", ".", "a", "red", "square"]  # by count, then name
    ids = vocab.encode("a blue square.")
    assert ids[0] == vocab.bos and ids[-1] == vocab.eos and vocab.stoi["xxunk"] in ids
    assert vocab.text(ids + [vocab.stoi["red"]]) == "a xxunk square."  # stops at the end token
    assert detokenize(["the", "corner", ",", "a", "square", "."]) == "the corner, a square."


def test_empty_caption_is_a_fix_it_error(tmp_path):
    folder = write_image_captioning(tmp_path, n=6)
    label = sorted((folder / "labels").iterdir())[2]
    label.write_text(
        label.read_text().replace("a blue square", " ").split("<object>")[0]
        + "<object><name> </name></object></annotation>\n"
    )
    report = inspect_folders([folder], full=True)
    assert not report.ok
    assert any("caption" in e and f"labels/{label.name}" in e and "Fix:" in e for e in report.errors), report.errors


def test_object_tracking_layout(tmp_path):
    folder = write_object_tracking(tmp_path, n=4, frames=4, annotate_every=2)
    assert export_format(folder) == "ObjectTracking"
    report = inspect_folders([folder], full=True)
    assert report.ok, report.errors
    assert report.chips == 8 and report.chip_size == (32, 32) and report.count_unit == "object frames"
    assert {c["name"]: c["count"] for c in report.classes} == {"boat": 4, "car": 8}
    assert any("no annotation" in w and "JPEGImages/seq000/00005.jpg" in w for w in report.warnings)
    # a YouTube-VOS download is accepted at its root (train/ inside)
    root = tmp_path / "youtube_vos"
    shutil.copytree(folder, root / "train")
    assert export_format(root) == "ObjectTracking"
    assert inspect_folders([root], full=True).chips == 8


def test_tracking_problems_name_files_and_fixes(tmp_path):
    folder = write_object_tracking(tmp_path, n=3, frames=3)
    meta = json.loads((folder / "meta.json").read_text())
    del meta["videos"]["seq001"]["objects"]["2"]
    (folder / "meta.json").write_text(json.dumps(meta))
    report = inspect_folders([folder], full=True)
    assert not report.ok
    assert any("meta.json" in e and "Annotations/seq001/00000.png (object 2)" in e for e in report.errors)
    (folder / "meta.json").write_text("{not json")
    with pytest.raises(ExportFolderError, match="meta.json is not valid JSON"):
        export_format(folder)
    (folder / "meta.json").unlink()  # without meta.json every object is of class "object"
    report = inspect_folders([folder], full=True)
    assert report.ok and [c["name"] for c in report.classes] == ["object"]
    shutil.rmtree(folder / "JPEGImages")
    (folder / "JPEGImages").mkdir()
    with pytest.raises(ExportFolderError, match="JPEGImages/ is empty"):
        export_format(folder)


def test_maxdeeplab_chip_rule():
    info = MODEL_TYPES["MAXDEEPLAB"]
    assert chip_size_problem(info, 64) is None and chip_size_problem(info, (256, 512)) is None
    text = chip_size_problem(info, 100)
    assert "multiple of 16" in text and "96 or 112" in text and "chip_size" in text
    assert chip_size_problem(MODEL_TYPES["UNET"], 100) is None
