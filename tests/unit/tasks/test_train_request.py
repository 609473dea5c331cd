"""TrainDeepLearningModel parameters parsed as real clients send them into one typed request, and every bad
value named with what is allowed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gpjobs.paths import StoreRoots
from gpjobs.tasks.params import ParameterError, canonical_names
from gpjobs.tasks.train import INPUT_PARAMETERS, DataFolder, OutputTarget, PretrainedModel, TrainingRequest
from gpjobs.web.gp_params import check_devices, parse_submit
from tests.builders.exports import write_classified_tiles, write_kitti, write_labeled_tiles

MAX_ARGS = 8192


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
    base = {
        name: ""
        for name in (
            "in_folder",
            "output_name",
            "model_type",
            "arguments",
            "batch_size",
            "max_epochs",
            "learning_rate",
            "backbone_model",
            "validation_percent",
            "pretrained_model",
            "stop_training",
            "overwrite_model",
            "context",
            "freeze_model",
        )
    }
    base.update(
        in_folder="/fileShares/default/exports/seg",
        output_name='{"name": "m1"}',
        model_type="UNET",
        f="json",
        **{"env:outSR": "4326", "returnZ": "false"},
    )
    base.update(overrides)
    return base


def submit(roots: StoreRoots, max_arguments_bytes: int = MAX_ARGS, **overrides: str) -> TrainingRequest:
    return parse_submit(form(**overrides), roots, max_arguments_bytes=max_arguments_bytes).request


def problems(roots: StoreRoots, **overrides: str) -> list[str]:
    with pytest.raises(ParameterError) as err:
        submit(roots, **overrides)
    return err.value.details


def test_minimal_client_form_gives_defaults(roots: StoreRoots, share: Path) -> None:
    sub = parse_submit(form(), roots, max_arguments_bytes=MAX_ARGS)
    r = sub.request
    assert r.model_type.name == "UNET" and r.backbone == "RESNET34"
    assert r.in_folders == (
        DataFolder("/fileShares/default/exports/seg", str((share / "exports" / "seg").resolve()), str(share.resolve())),
    )
    assert r.data_format == "Classified_Tiles"
    assert r.output == OutputTarget(kind="item", name="m1")
    assert (r.batch_size, r.max_epochs, r.learning_rate, r.validation_percent) == (2, 20, None, 10.0)
    assert (r.stop_training, r.freeze_model, r.overwrite_model) == (True, True, False)
    assert r.given_arguments == {} and r.context.processor_type is None and r.pretrained is None
    assert r.arguments["chip_size"] is None and r.arguments["monitor"] == "valid_loss"  # declared defaults
    assert sub.inputs["model_type"] == "UNET" and "f" not in sub.inputs and "env:outSR" not in sub.inputs


def test_request_round_trips_through_its_stored_form(roots: StoreRoots) -> None:
    r = submit(
        roots,
        arguments='{"chip_size": "64", "MIXUP": "true"}',
        context='{"processorType": "cpu"}',
        pretrained_model='{"uri": "/fileShares/default/models/m.dlpk"}',
    )
    stored = json.loads(json.dumps(r.to_json_dict()))
    assert TrainingRequest.from_json_dict(stored) == r
    with pytest.raises(ValueError, match="older version"):
        TrainingRequest.from_json_dict({"model_type": "UNET", "in_folders": ["/x"]})


def test_every_in_folder_form(roots: StoreRoots) -> None:
    a, b = "/fileShares/default/exports/seg", "/fileShares/default/exports/seg2"
    for value in (f"{a},{b}", json.dumps({"uris": [a, b]}), json.dumps([a, b])):
        assert len(submit(roots, in_folder=value).in_folders) == 2
    assert [f.alias for f in submit(roots, in_folder=json.dumps({"uri": a})).in_folders] == [a]


def test_typed_values_and_spellings(roots: StoreRoots) -> None:
    sub = parse_submit(
        form(
            batch_size="4",
            max_epochs="3",
            learning_rate="0.001",
            validation_percent="20",
            backbone_model="resnet18",
            stop_training="False",
            overwriteModel="TRUE",
            freeze_Model="false",
            model_type="unet",
            arguments='{"chip_size": "224", "MIXUP": "True"}',
            context='{"processorType": "gpu", "cellSize": 0.3}',
        ),
        roots,
        max_arguments_bytes=MAX_ARGS,
    )
    r = sub.request
    assert (r.batch_size, r.max_epochs, r.learning_rate) == (4, 3, 0.001)
    assert r.validation_percent == 20.0 and r.backbone == "RESNET18"
    assert (r.stop_training, r.overwrite_model, r.freeze_model) == (False, True, False)
    assert r.given_arguments == {"chip_size": 224, "mixup": True}  # typed once, at submit
    assert r.context.processor_type == "GPU" and r.context.values["cellSize"] == 0.3
    assert sub.inputs["arguments"] == '{"chip_size": "224", "MIXUP": "True"}'  # served back as sent


def test_canonical_names() -> None:
    canonical = canonical_names(INPUT_PARAMETERS)
    assert canonical("overwriteModel") == canonical("OVERWRITE_MODEL") == "overwrite_model"
    assert canonical("freeze_Model") == "freeze_model" and canonical("env:outSR") is None


def test_learning_rate_zero_means_find_it(roots: StoreRoots) -> None:
    assert submit(roots, learning_rate="0").learning_rate is None


def test_esri_argument_text_form(roots: StoreRoots) -> None:
    r = submit(roots, arguments="chip_size 224;monitor 'valid_loss'")
    assert r.given_arguments == {"chip_size": 224, "monitor": "valid_loss"}


def test_ssd_ratios_in_the_flat_form_are_read_as_pairs(roots: StoreRoots) -> None:
    r = submit(
        roots, in_folder="/fileShares/default/exports/det", model_type="SSD", arguments='{"ratios": "[1.0, 1.0]"}'
    )
    assert r.given_arguments["ratios"] == [[1.0, 1.0]]
    assert any(
        "read as [w, h] pairs" in d
        for d in problems(
            roots,
            in_folder="/fileShares/default/exports/det",
            model_type="SSD",
            arguments='{"ratios": "[1.0, 1.0, 2]"}',
        )
    )


def test_esri_form_arguments_accepted_where_arcgis_accepts_them(roots: StoreRoots) -> None:
    for model_type in ("UNET", "DEEPLAB"):
        r = submit(
            roots,
            model_type=model_type,
            backbone_model="RESNET18",
            arguments='{"USE_UNET": "True", "PYRAMID_SIZES": "[1, 2, 3, 6]"}',
        )
        assert r.given_arguments == {"use_unet": True, "pyramid_sizes": [1, 2, 3, 6]}
        assert len(r.notes) == 2 and all("has no effect on" in n for n in r.notes)  # said in the job messages


def test_every_numeric_argument_has_a_range_and_the_error_says_it(roots: StoreRoots) -> None:
    from gpjobs.catalog import MODEL_TYPES

    unbounded = [
        f"{m.name}.{n}"
        for m in MODEL_TYPES.values()
        for n, s in m.arguments.items()
        if s.is_numeric and (s.minimum is None or s.maximum is None)
    ]
    assert unbounded == []
    for raw, text in (("100000", "from 0 to 16"), ("-1", "from 0 to 16")):
        assert any(text in d for d in problems(roots, arguments=json.dumps({"num_workers": raw})))
    for raw in ("-1", "1e30", "Infinity", "nan"):
        assert any("chip_size" in d for d in problems(roots, arguments=json.dumps({"chip_size": raw})))


def test_processor_type_must_name_a_slot_kind_the_server_has(roots: StoreRoots) -> None:
    gpu = submit(roots, context='{"processorType": "GPU"}')
    with pytest.raises(ParameterError, match="no GPU slot"):
        check_devices(gpu, ["cpu"])
    check_devices(gpu, ["cpu", "cuda:0"])
    with pytest.raises(ParameterError, match="no CPU slot"):
        check_devices(submit(roots, context='{"processorType": "CPU"}'), ["cuda:0"])
    check_devices(submit(roots), ["cuda:0"])  # unset: any slot


def test_output_to_file_share(roots: StoreRoots, share: Path) -> None:
    out = submit(roots, output_name='{"uri": "/fileShares/default/models/trained"}').output
    assert out == OutputTarget(
        kind="uri",
        name="trained",
        alias="/fileShares/default/models/trained",
        path=str((share / "models" / "trained").resolve()),
    )
    assert out.package_uri == "/fileShares/default/models/trained/trained.dlpk"
    # A plain string naming a store path is a uri too (the arcgis client's rule).
    plain = submit(roots, output_name="/fileShares/default/models/t2").output
    assert plain.kind == "uri" and plain.name == "t2"
    named = submit(roots, output_name="/fileShares/default/models/t3.dlpk").output
    assert named.package_uri == "/fileShares/default/models/t3.dlpk"


def test_output_item_with_folder(roots: StoreRoots) -> None:
    folder = "0bffc1c3fe984a17bd9ae705b3ca7e22"
    out = submit(roots, output_name=json.dumps({"name": "x", "folderId": folder})).output
    assert out == OutputTarget(kind="item", name="x", folder_id=folder)
    assert submit(roots, output_name="plainname").output.name == "plainname"


def test_pretrained_forms(roots: StoreRoots, share: Path) -> None:
    item = "3b8f1c9e2a4d4f0b9c7e6a5d4c3b2a10"
    for value in (
        json.dumps({"itemId": item}),
        json.dumps({"url": f"https://h/portal/sharing/rest/content/items/{item}"}),
        item,
    ):
        assert submit(roots, pretrained_model=value).pretrained == PretrainedModel(item_id=item)
    r = submit(roots, pretrained_model='{"uri": "/fileShares/default/models/m.dlpk"}')
    assert r.pretrained == PretrainedModel(
        path=str((share / "models" / "m.dlpk").resolve()),
        alias="/fileShares/default/models/m.dlpk",
        root=str(share.resolve()),
    )


@pytest.mark.parametrize(
    "overrides, expected",
    [
        ({"model_type": ""}, "model_type: required"),
        ({"model_type": "NOPE"}, "model_type 'NOPE'"),
        ({"model_type": "DETREG", "arguments": '{"num_queries": 0}'}, "argument 'num_queries'"),
        ({"backbone_model": "DARKNET53"}, "backbone_model 'DARKNET53' cannot be used with model_type UNET"),
        ({"arguments": '{"nope": 1}'}, "unknown argument 'nope'"),
        ({"arguments": '{"chip_size": "abc"}'}, "argument 'chip_size'"),
        ({"arguments": "[" * 5000 + "]" * 5000}, "arguments: "),
        ({"arguments": '{"a":' * 100 + "1" + "}" * 100}, "nested too deeply"),
        ({"context": '{"a":' * 100 + "1" + "}" * 100}, "nested too deeply"),
        ({"arguments": '{"chip_size": '}, "arguments: not valid JSON"),
        ({"batch_size": "0"}, "batch_size: 0 is out of range; use a whole number from 1 to 4096"),
        ({"batch_size": "two"}, "batch_size: 'two' is not a number"),
        ({"batch_size": "1e400"}, "batch_size: '1e400' is not a finite number"),
        ({"max_epochs": "-1"}, "max_epochs"),
        ({"max_epochs": "1.5"}, "max_epochs"),
        ({"learning_rate": "-0.1"}, "learning_rate: -0.1 is out of range; use a number from 0 to 10"),
        ({"learning_rate": "abc"}, "learning_rate: 'abc' is not a number"),
        ({"validation_percent": "50"}, "validation_percent: 50 is out of range; use a number from 0 to 50 (not incl"),
        ({"validation_percent": "-1"}, "validation_percent"),
        ({"stop_training": "maybe"}, "stop_training: 'maybe' is not a boolean"),
        ({"in_folder": ""}, "in_folder: required"),
        ({"in_folder": "/fileShares/default/../x"}, "in_folder: path"),
        ({"in_folder": "/fileShares/other/x"}, "unknown data store"),
        ({"in_folder": "/fileShares/default/not_export"}, "is not an Export Training Data For Deep Learning folder"),
        ({"in_folder": "/fileShares/default/absent"}, "does not exist"),
        (
            {"in_folder": "/fileShares/default/exports/det"},
            "export format KITTI_rectangles cannot train model_type UNET",
        ),
        ({"in_folder": "/fileShares/default/exports/seg,/fileShares/default/exports/cls"}, "different formats"),
        ({"in_folder": "\\\\server\\share\\seg"}, "Add its share to the [unc_paths] setting"),
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
    ],
)
def test_bad_values_name_the_parameter_and_the_rule(roots: StoreRoots, overrides: dict, expected: str) -> None:
    details = problems(roots, **overrides)
    assert any(expected in d for d in details), details


def test_all_problems_reported_at_once(roots: StoreRoots) -> None:
    details = problems(roots, batch_size="0", max_epochs="x", validation_percent="60")
    assert len(details) == 3


def test_arguments_size_capped(roots: StoreRoots) -> None:
    big = json.dumps({"chip_size": "1" * 100})
    with pytest.raises(ParameterError, match="more than the 50 allowed"):
        submit(roots, max_arguments_bytes=50, arguments=big)


def test_detection_export_for_detection_model(roots: StoreRoots) -> None:
    r = submit(roots, in_folder="/fileShares/default/exports/det", model_type="SSD", backbone_model="RESNET18")
    assert r.data_format == "KITTI_rectangles"


def test_real_samples_are_recognised(samples_dir: Path) -> None:
    roots = StoreRoots(file_shares={"samples": samples_dir})
    r = submit(roots, in_folder="/fileShares/samples/palm-pascal-voc", model_type="RETINANET")
    assert r.data_format == "PASCAL_VOC_rectangles"
    r = submit(roots, in_folder="/fileShares/samples/phragmites-kitti", model_type="FASTERRCNN")
    assert r.data_format == "KITTI_rectangles"


def test_export_errors_never_show_the_local_path(roots: StoreRoots, share: Path) -> None:
    details = problems(roots, in_folder="/fileShares/default/not_export")
    assert str(share) not in " ".join(details) and "/fileShares/default/not_export" in details[0]


def test_export_without_chips_is_refused(roots: StoreRoots, share: Path) -> None:
    import shutil

    shutil.rmtree(share / "exports" / "seg" / "images")
    assert any("images/ is missing or empty" in d for d in problems(roots))


@pytest.mark.slow  # a fresh interpreter
def test_submit_validation_never_imports_torch(roots: StoreRoots, share: Path) -> None:
    import subprocess
    import sys

    code = (
        "import sys; from gpjobs.paths import StoreRoots; import gpjobs.web, gpjobs.app; "
        "from gpjobs.web.gp_params import parse_submit; "
        f"parse_submit({{'in_folder': '/fileShares/default/exports/seg', 'output_name': 'm', 'model_type': 'UNET'}}, "
        f"StoreRoots(file_shares={{'default': {str(share)!r}}}), max_arguments_bytes=100); "
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_maxdeeplab_chips_must_be_multiples_of_16_at_submit(tmp_path: Path) -> None:
    from tests.builders.exports import write_panoptic

    write_panoptic(tmp_path / "share" / "exports", n=2, size=40, name="pan")
    write_panoptic(tmp_path / "share" / "exports", n=2, size=32, name="pan32")
    roots = StoreRoots(file_shares={"default": tmp_path / "share"})
    bad = problems(roots, in_folder="/fileShares/default/exports/pan", model_type="MAXDEEPLAB")
    assert any("in_folder: MAXDEEPLAB needs chips whose side is a multiple of 16; 40 px" in d for d in bad), bad
    assert (
        submit(
            roots, in_folder="/fileShares/default/exports/pan", model_type="MAXDEEPLAB", arguments='{"chip_size": 32}'
        ).given_arguments["chip_size"]
        == 32
    )
    assert submit(roots, in_folder="/fileShares/default/exports/pan32", model_type="MAXDEEPLAB")
    assert any(
        "arguments: MAXDEEPLAB" in d
        for d in problems(
            roots, in_folder="/fileShares/default/exports/pan32", model_type="MAXDEEPLAB", arguments='{"chip_size": 40}'
        )
    )
