"""Submit parameters parsed as real clients send them, and every bad value named with what is allowed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gpjobs.paths import StoreRoots
from gpjobs.web.gp_params import Limits, ParameterError, canonical_name, parse_submit
from tests.builders.exports import write_classified_tiles, write_kitti, write_labeled_tiles


@pytest.fixture()
def share(tmp_path: Path) -> Path:
    root = tmp_path / "share"
    write_classified_tiles(root / "exports", n=2, name="seg")
    write_classified_tiles(root / "exports", n=2, name="seg2")
    write_kitti(root / "exports", n=2, name="det")
    write_labeled_tiles(root / "exports", n=2, name="cls")
    (root / "models").mkdir()
    (root / "models" / "m.dlpk").write_bytes(b"PK")
    (root / "not_export").mkdir()
    return root


@pytest.fixture()
def roots(share: Path) -> StoreRoots:
    return StoreRoots(file_shares={"default": share})


def form(**overrides: str) -> dict[str, str]:
    """What the arcgis client sends: every declared input, "" for unset ones, plus f and env params."""
    base = {name: "" for name in ("in_folder", "output_name", "model_type", "arguments", "batch_size",
                                  "max_epochs", "learning_rate", "backbone_model", "validation_percent",
                                  "pretrained_model", "stop_training", "overwrite_model", "context",
                                  "freeze_model")}
    base.update(in_folder="/fileShares/default/exports/seg", output_name='{"name": "m1"}', model_type="UNET",
                f="json", **{"env:outSR": "4326", "returnZ": "false"})
    base.update(overrides)
    return base


def problems(roots: StoreRoots, **overrides: str) -> list[str]:
    with pytest.raises(ParameterError) as err:
        parse_submit(form(**overrides), roots)
    return err.value.details


def test_minimal_client_form_gives_defaults(roots: StoreRoots, share: Path) -> None:
    req = parse_submit(form(), roots)
    s = req.spec
    assert s["model_type"] == "UNET" and s["backbone_model"] == "RESNET34"
    assert s["in_folders"] == [str((share / "exports" / "seg").resolve())]
    assert s["data_format"] == "Classified_Tiles"
    assert s["output"] == {"kind": "item", "name": "m1", "folder_id": None}
    assert (s["batch_size"], s["max_epochs"], s["learning_rate"], s["validation_percent"]) == (2, 20, None, 10.0)
    assert (s["stop_training"], s["freeze_model"], s["overwrite_model"]) == (True, True, False)
    assert s["arguments"] == {} and s["context"] == {} and s["pretrained_model"] is None
    assert req.inputs["model_type"] == "UNET" and "f" not in req.inputs and "env:outSR" not in req.inputs


def test_every_in_folder_form(roots: StoreRoots) -> None:
    a, b = "/fileShares/default/exports/seg", "/fileShares/default/exports/seg2"
    for value in (f"{a},{b}", json.dumps({"uris": [a, b]}), json.dumps([a, b])):
        assert len(parse_submit(form(in_folder=value), roots).spec["in_folders"]) == 2
    assert parse_submit(form(in_folder=json.dumps({"uri": a})), roots).spec["in_folder_aliases"] == [a]


def test_typed_values_and_spellings(roots: StoreRoots) -> None:
    spec = parse_submit(form(batch_size="4", max_epochs="3", learning_rate="0.001", validation_percent="20",
                             backbone_model="resnet18", stop_training="False", overwriteModel="TRUE",
                             freeze_Model="false", model_type="unet",
                             arguments='{"chip_size": "224", "MIXUP": "True"}',
                             context='{"processorType": "gpu", "cellSize": 0.3}'), roots).spec
    assert (spec["batch_size"], spec["max_epochs"], spec["learning_rate"]) == (4, 3, 0.001)
    assert spec["validation_percent"] == 20.0 and spec["backbone_model"] == "RESNET18"
    assert (spec["stop_training"], spec["overwrite_model"], spec["freeze_model"]) == (False, True, False)
    assert spec["arguments"] == {"chip_size": "224", "MIXUP": "True"}
    assert spec["context"]["processorType"] == "GPU"


def test_canonical_names() -> None:
    assert canonical_name("overwriteModel") == canonical_name("OVERWRITE_MODEL") == "overwrite_model"
    assert canonical_name("freeze_Model") == "freeze_model" and canonical_name("env:outSR") is None


def test_learning_rate_zero_means_find_it(roots: StoreRoots) -> None:
    assert parse_submit(form(learning_rate="0"), roots).spec["learning_rate"] is None


def test_esri_argument_text_form(roots: StoreRoots) -> None:
    spec = parse_submit(form(arguments="chip_size 224;monitor 'valid_loss'"), roots).spec
    assert spec["arguments"] == {"chip_size": "224", "monitor": "valid_loss"}


def test_output_to_file_share(roots: StoreRoots, share: Path) -> None:
    out = parse_submit(form(output_name='{"uri": "/fileShares/default/models/trained"}'), roots).spec["output"]
    assert out == {"kind": "uri", "name": "trained", "alias": "/fileShares/default/models/trained",
                   "path": str((share / "models" / "trained").resolve())}
    # A plain string naming a store path is a uri too (the arcgis client's rule).
    plain = parse_submit(form(output_name="/fileShares/default/models/t2"), roots).spec["output"]
    assert plain["kind"] == "uri" and plain["name"] == "t2"


def test_output_item_with_folder(roots: StoreRoots) -> None:
    folder = "0bffc1c3fe984a17bd9ae705b3ca7e22"
    out = parse_submit(form(output_name=json.dumps({"name": "x", "folderId": folder})), roots).spec["output"]
    assert out == {"kind": "item", "name": "x", "folder_id": folder}
    assert parse_submit(form(output_name="plainname"), roots).spec["output"]["name"] == "plainname"


def test_pretrained_forms(roots: StoreRoots, share: Path) -> None:
    item = "3b8f1c9e2a4d4f0b9c7e6a5d4c3b2a10"
    for value in (json.dumps({"itemId": item}), json.dumps({"url": f"https://h/portal/sharing/rest/content/items/{item}"}),
                  item):
        assert parse_submit(form(pretrained_model=value), roots).spec["pretrained"] == {"item_id": item}
    spec = parse_submit(form(pretrained_model='{"uri": "/fileShares/default/models/m.dlpk"}'), roots).spec
    assert spec["pretrained_model"] == str((share / "models" / "m.dlpk").resolve())


@pytest.mark.parametrize("overrides, expected", [
    ({"model_type": ""}, "model_type: required"),
    ({"model_type": "NOPE"}, "model_type 'NOPE'"),
    ({"model_type": "DETREG"}, "not supported by this server yet"),
    ({"backbone_model": "DARKNET53"}, "backbone_model 'DARKNET53' cannot be used with model_type UNET"),
    ({"arguments": '{"nope": 1}'}, "unknown argument 'nope'"),
    ({"arguments": '{"chip_size": "abc"}'}, "argument 'chip_size'"),
    ({"arguments": '{"chip_size": '}, "arguments: not valid JSON"),
    ({"batch_size": "0"}, "batch_size: '0' is not allowed"),
    ({"batch_size": "two"}, "batch_size: 'two' is not a whole number"),
    ({"max_epochs": "-1"}, "max_epochs"),
    ({"max_epochs": "1.5"}, "max_epochs"),
    ({"learning_rate": "-0.1"}, "learning_rate: -0.1 is negative"),
    ({"learning_rate": "abc"}, "learning_rate: 'abc' is not a number"),
    ({"validation_percent": "50"}, "validation_percent: 50 is not allowed"),
    ({"validation_percent": "-1"}, "validation_percent"),
    ({"stop_training": "maybe"}, "stop_training: 'maybe' is not a boolean"),
    ({"in_folder": ""}, "in_folder: required"),
    ({"in_folder": "/fileShares/default/../x"}, "in_folder: path"),
    ({"in_folder": "/fileShares/other/x"}, "unknown data store"),
    ({"in_folder": "/fileShares/default/not_export"}, "is not an Export Training Data For Deep Learning folder"),
    ({"in_folder": "/fileShares/default/absent"}, "does not exist"),
    ({"in_folder": "/fileShares/default/exports/det"}, "export format KITTI_rectangles cannot train model_type UNET"),
    ({"in_folder": "/fileShares/default/exports/seg,/fileShares/default/exports/cls"}, "different formats"),
    ({"output_name": ""}, "output_name: required"),
    ({"output_name": '{"name": "a/b"}'}, "not a valid model name"),
    ({"output_name": '{"name": "x", "folderId": "nope"}'}, "folderId 'nope'"),
    ({"output_name": '{"uri": "/fileShares/default/missing/deep/out"}'}, "parent folder"),
    ({"output_name": '{"uri": "/fileShares/default"}'}, "inside the store"),
    ({"output_name": '{"uri": "/fileShares/default/../../etc"}'}, "output_name: path"),
    ({"output_name": '{"other": 1}'}, "output_name: expected"),
    ({"pretrained_model": '{"uri": "/fileShares/default/exports"}'}, "pretrained_model: "),
    ({"pretrained_model": '{"itemId": "xyz"}'}, "not an item id"),
    ({"pretrained_model": '{"url": "https://h/other"}'}, "not a .../content/items/<id> item url"),
    ({"context": '{"processorType": "TPU"}'}, "processorType 'TPU'"),
    ({"context": "gpu"}, "context: expected a JSON object"),
])
def test_bad_values_name_the_parameter_and_the_rule(roots: StoreRoots, overrides: dict, expected: str) -> None:
    details = problems(roots, **overrides)
    assert any(expected in d for d in details), details


def test_all_problems_reported_at_once(roots: StoreRoots) -> None:
    details = problems(roots, batch_size="0", max_epochs="x", validation_percent="60")
    assert len(details) == 3


def test_arguments_size_capped(roots: StoreRoots) -> None:
    big = json.dumps({"chip_size": "1" * 100})
    with pytest.raises(ParameterError, match="more than the 50 allowed"):
        parse_submit(form(arguments=big), roots, Limits(max_arguments_bytes=50))


def test_detection_export_for_detection_model(roots: StoreRoots) -> None:
    spec = parse_submit(form(in_folder="/fileShares/default/exports/det", model_type="SSD",
                             backbone_model="RESNET18"), roots).spec
    assert spec["data_format"] == "KITTI_rectangles"


def test_real_samples_are_recognised(samples_dir: Path) -> None:
    roots = StoreRoots(file_shares={"samples": samples_dir})
    spec = parse_submit(form(in_folder="/fileShares/samples/palm-pascal-voc", model_type="RETINANET"), roots).spec
    assert spec["data_format"] == "PASCAL_VOC_rectangles"
    spec = parse_submit(form(in_folder="/fileShares/samples/phragmites-kitti", model_type="FASTERRCNN"), roots).spec
    assert spec["data_format"] == "KITTI_rectangles"


def test_export_errors_never_show_the_local_path(roots: StoreRoots, share: Path) -> None:
    details = problems(roots, in_folder="/fileShares/default/not_export")
    assert str(share) not in " ".join(details) and "/fileShares/default/not_export" in details[0]


def test_export_without_chips_is_refused(roots: StoreRoots, share: Path) -> None:
    import shutil

    shutil.rmtree(share / "exports" / "seg" / "images")
    assert any("images/ is missing or empty" in d for d in problems(roots))


def test_submit_validation_never_imports_torch(roots: StoreRoots, share: Path) -> None:
    import subprocess
    import sys

    code = ("import sys; from gpjobs.paths import StoreRoots; import gpjobs.web, gpjobs.app; "
            "from gpjobs.web.gp_params import parse_submit; "
            f"parse_submit({{'in_folder': '/fileShares/default/exports/seg', 'output_name': 'm', 'model_type': 'UNET'}}, "
            f"StoreRoots(file_shares={{'default': {str(share)!r}}})); "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
