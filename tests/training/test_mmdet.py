"""MMDETECTION: every `model` name arcgis.learn documents is accepted and trains; fcos, atss, vfnet and
cascade_rcnn are implementations of their own, the other names train as the closest one and say so."""

from __future__ import annotations

import functools

import pytest
import torch

from gpjobs.tasks.params import ParameterError
from tests.builders.exports import write_classified_tiles, write_pascal_voc
from tests.training.helpers import build_family, make_spec, predict_json, train_and_package
from tests.training.lifecycle_checks import (
    CARD,
    assert_predict_cli_reproduces_ap,
    assert_resume_matches_straight_run,
)

torch.set_num_threads(1)

# arcgis.learn's MMDetection.supported_models (models.md 1A), and the names gpjobs accepted before them
ARCGIS_NAMES = (
    "atss",
    "carafe",
    "cascade_rcnn",
    "cascade_rpn",
    "dcn",
    "detectors",
    "double_heads",
    "dynamic_rcnn",
    "empirical_attention",
    "fcos",
    "foveabox",
    "fsaf",
    "ghm",
    "hrnet",
    "libra_rcnn",
    "nas_fcos",
    "pafpn",
    "pisa",
    "regnet",
    "reppoints",
    "res2net",
    "sabl",
    "vfnet",
)
EARLIER_NAMES = ("faster_rcnn", "retinanet", "ssd", "yolov3", "yolo")
OWN = {
    "fcos": "FCOSFamily",
    "atss": "ATSSFamily",
    "vfnet": "VFNetFamily",
    "cascade_rcnn": "CascadeRCNNFamily",
    "faster_rcnn": "FasterRCNNFamily",
    "retinanet": "RetinaNetFamily",
    "ssd": "SSDFamily",
    "yolov3": "YOLOv3Family",
}
TINY_RCNN = {
    "rpn_pre_nms_top_n_train": 50,
    "rpn_post_nms_top_n_train": 20,
    "rpn_pre_nms_top_n_test": 50,
    "rpn_post_nms_top_n_test": 20,
    "rpn_batch_size_per_image": 16,
    "box_batch_size_per_image": 16,
    "box_detections_per_img": 10,
}


def test_every_documented_name_is_accepted_and_a_config_path_is_refused():
    from gpjobs.catalog import ArgumentError, lookup_model_type, parse_arguments

    info = lookup_model_type("MMDETECTION")
    for name in ARCGIS_NAMES + EARLIER_NAMES:
        assert parse_arguments(info, {"model": name.upper()})["model"] == name
    assert parse_arguments(info, {})["model"] == "faster_rcnn"
    with pytest.raises(ArgumentError) as err:
        parse_arguments(info, {"model": "configs/fcos/fcos_r50_caffe_fpn_gn-head_1x_coco.py"})
    assert "config file path" in str(err.value) and "cannot read OpenMMLab config files" in str(err.value)
    assert all(name in str(err.value) for name in ARCGIS_NAMES)
    with pytest.raises(ArgumentError, match="did you mean atss"):
        parse_arguments(info, {"model": "atts"})


def test_the_catalog_and_the_implementation_table_list_the_same_names():
    from gpjobs.catalog import lookup_model_type
    from gpjobs.training.models.mmdet import IMPLEMENTATIONS, MODELS

    assert set(lookup_model_type("MMDETECTION").arguments["model"].choices) == set(MODELS)
    assert set(ARCGIS_NAMES + EARLIER_NAMES) == set(MODELS)
    assert {trains for trains, _ in MODELS.values()} == set(IMPLEMENTATIONS) == set(OWN)
    for name, (trains, note) in MODELS.items():  # a name trains as itself, or says what it is instead
        assert (trains == name or name == "yolo") != bool(note), name


def _slow_params(models, slow: set[str]) -> list:
    """`slow` marks the names whose build (and step) takes about a CPU second or more."""
    return [pytest.param(m, marks=pytest.mark.slow) if m in slow else m for m in models]


def _family(model: str, messages: list, **args):
    return build_family(
        "MMDETECTION",
        chip_size=(64, 64),
        export_format="PASCAL_VOC_rectangles",
        arguments={"model": model, **args},
        messages=messages,
    )


@pytest.mark.parametrize("model", ARCGIS_NAMES + EARLIER_NAMES)
def test_every_name_says_what_it_trains(model):
    from gpjobs.training.models.mmdet import MODELS

    messages: list[tuple[str, str]] = []
    fam = _family(model, messages, model_weight=True, **TINY_RCNN)
    trains, note = MODELS[model]
    assert OWN[trains] in [c.__name__ for c in type(fam).__mro__]
    assert fam.backbone == ("DARKNET53" if trains == "yolov3" else "RESNET18")
    assert any(level == "warning" and "OpenMMLab" in text for level, text in messages)
    mapped = [text for level, text in messages if level == "warning" and text.startswith(f"model={model}:")]
    assert bool(mapped) == bool(note) and all(f"(model {trains})" in text for text in mapped)
    params = fam.model_parameters()
    assert params["model"] == model and params["trained_as"] == trains and "not OpenMMLab" in params["implementation"]
    assert ("mapping_note" in params) == bool(note)
    fields = fam.emd_fields({})
    assert fields["ModelName"] == "MMDetection" and fields["ModelConfiguration"] == "_model_extension_inferencing"
    assert fields["Kwargs"] == {"model": model, "model_weight": True}


@pytest.mark.slow  # a detector built per name (0.2-0.9 CPU s each, 28 names)
@pytest.mark.parametrize("model", ARCGIS_NAMES + EARLIER_NAMES)
def test_every_name_builds_the_network_it_trains(model):
    from gpjobs.training.models.mmdet import MODELS

    trains, _ = MODELS[model]
    fam = _family(model, [], model_weight=True, **TINY_RCNN)
    assert _architecture(fam.build()) == _implementation_architecture(trains)


def _architecture(net) -> tuple[str, ...]:
    """Class names of the network, its torchvision detector and RoI heads (cascade vs plain), when it has them."""
    inner = getattr(net, "net", None)
    return type(net).__name__, type(inner).__name__, type(getattr(inner, "roi_heads", None)).__name__


@functools.cache
def _implementation_architecture(trains: str) -> tuple[str, ...]:
    return _architecture(_family(trains, [], **TINY_RCNN).build())


@pytest.mark.parametrize("model", _slow_params(sorted(OWN), {"atss", "cascade_rcnn", "yolov3"}))
def test_every_implementation_steps_once(model):
    fam = _family(model, [], **TINY_RCNN)
    net = fam.build()
    images = torch.randn(2, 3, 64, 64)
    targets = [
        {"boxes": torch.tensor([[4.0, 6.0, 30.0, 28.0]]), "labels": torch.tensor([1])},
        {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)},
    ]  # a chip without boxes
    loss = fam.training_loss(net, (images, targets), torch.device("cpu"))
    loss.backward()
    assert torch.isfinite(loss) and any(p.grad is not None and p.grad.abs().sum() > 0 for p in net.parameters())
    predictions = fam.predict(net.eval(), images)
    assert len(predictions) == 2 and all(len(p["boxes"]) == len(p["scores"]) == len(p["labels"]) for p in predictions)


@pytest.mark.slow  # traces two detectors (about a CPU second each)
@pytest.mark.parametrize("model", ["atss", "vfnet"])
def test_the_packaged_network_and_its_prf_decoder_detect_what_detect_does(model):
    """What GpjobsObjectDetector.py runs for atss / vfnet (the traced candidates, then its dense decoder) gives
    detect()'s detections. The class biases start at 0 so that an untrained head has detections to compare."""
    import importlib.util

    from gpjobs.training.package import INFERENCE_DIR

    torch.manual_seed(0)
    fam = _family(model, [])
    net = fam.build().eval()
    with torch.no_grad():
        net.head.cls_logits.bias.fill_(0.0)
    network = fam.deployable(net)
    traced = fam.trace(network)
    spec = fam.inference_spec(network)
    assert spec["output"] == "boxes" and spec["decoder"] == "dense"
    assert "torchvision::" not in str(traced.inlined_graph)  # the PRF host has torch only
    loader = importlib.util.spec_from_file_location("prf_under_test", INFERENCE_DIR / "GpjobsObjectDetector.py")
    prf = importlib.util.module_from_spec(loader)
    loader.loader.exec_module(prf)
    images = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        found = prf.decode_dense(tuple(traced(images)), spec)
        expected = net.detect(images)
    for got, want in zip(found, expected):
        assert len(want["boxes"]) > 0
        torch.testing.assert_close(got["boxes"], want["boxes"], atol=1e-3, rtol=0)
        torch.testing.assert_close(got["scores"], want["scores"], atol=1e-5, rtol=0)
        assert torch.equal(got["labels"] + 1, want["labels"])


@pytest.mark.parametrize("model", _slow_params(["fcos", "cascade_rcnn"], {"fcos"}))
def test_the_packaged_network_needs_torch_only(model):
    """The PRF host has torch but not torchvision's compiled operators (nms, roi_align, deform_conv2d)."""
    fam = _family(model, [], **TINY_RCNN)
    network = fam.deployable(fam.build().eval())
    with torch.no_grad():
        traced = fam.trace(network)
    graphs = [str(traced.inlined_graph)] + [
        str(getattr(traced, f"box_stage{i}").graph) for i in range(3) if hasattr(traced, f"box_stage{i}")
    ]
    assert len(graphs) == (4 if model == "cascade_rcnn" else 1)
    assert not any("torchvision::" in g for g in graphs)
    assert fam.inference_spec(network)["decoder"] == ("rcnn" if model == "cascade_rcnn" else "dense")


@pytest.mark.slow
@pytest.mark.parametrize(
    "model, arguments, cli",
    [  # one goes through `gpjobs predict`, the others load_model
        ("fcos", {}, True),
        ("atss", {}, False),
        ("vfnet", {}, False),
        ("cascade_rcnn", TINY_RCNN, False),
    ],
)
@pytest.mark.timeout(300)
def test_own_implementation_trains_packages_predicts_and_resumes(tmp_path, model, arguments, cli):
    folder = write_pascal_voc(tmp_path, n=8, size=32)
    straight = assert_resume_matches_straight_run(
        tmp_path,
        folder,
        "MMDETECTION",
        backbone_model="RESNET18",
        max_epochs=2,
        batch_size=2,
        learning_rate=1e-3,
        freeze_model=False,
        stop_training=False,
        arguments={"model": model, **arguments},
    )
    epochs = straight.epochs
    assert epochs[-1]["train_loss"] < epochs[0]["train_loss"], [e["train_loss"] for e in epochs]
    for epoch in epochs:
        assert all(0.0 <= epoch["metrics"][k] <= 1.0 for k in ("average_precision", "map_50", "map_50_95"))
    assert {"model.emd", "model.pth", "model.pt", "GpjobsObjectDetector.py"} | CARD <= straight.members
    emd = straight.emd
    assert emd["ModelName"] == "MMDetection" and emd["ModelType"] == "ObjectDetection"
    assert emd["InferenceFunction"] == "GpjobsObjectDetector.py" and emd["GpjobsInference"]["output"] == "boxes"
    assert emd["ModelParameters"]["trained_as"] == model and "mapping_note" not in emd["ModelParameters"]
    assert emd["DatasetType"] == "PASCAL_VOC_rectangles" and emd["Kwargs"]["model"] == model
    assert set(emd["average_precision_score"]) == {"a", "b"}
    assert_predict_cli_reproduces_ap(straight, cli=cli)


@pytest.mark.slow  # trains and packages
def test_a_mapped_name_trains_and_its_package_says_what_was_trained(tmp_path):
    folder = write_pascal_voc(tmp_path, n=8, size=32)
    run = train_and_package(
        tmp_path,
        folder,
        "MMDETECTION",
        backbone_model="RESNET18",
        max_epochs=1,
        batch_size=2,
        learning_rate=1e-3,
        arguments={"model": "foveabox"},
    )
    assert any(
        e["type"] == "message" and e["level"] == "warning" and "model=foveabox" in e["text"] and "FCOS" in e["text"]
        for e in run.events
    )
    params = run.emd["ModelParameters"]
    assert params["model"] == "foveabox" and params["trained_as"] == "fcos"
    assert params["mapping_note"].startswith("foveabox: FoveaBox") and "torchvision FCOS" in params["implementation"]


def test_mmdetection_refuses_pixel_classification_data_at_submit(tmp_path):
    folder = write_classified_tiles(tmp_path, n=4, size=32)
    with pytest.raises(ParameterError) as err:
        make_spec(tmp_path, [folder], "MMDETECTION", arguments={"model": "atss"})
    assert "Classified_Tiles cannot train model_type MMDETECTION" in str(err.value)
    assert "PASCAL_VOC_rectangles" in str(err.value)


@pytest.mark.slow
@pytest.mark.heavy  # minutes of CPU each from random weights, near the AP bar: `make test-heavy` only
@pytest.mark.timeout(900)
@pytest.mark.parametrize(
    "model, arguments",
    [
        ("fcos", {}),
        ("atss", {}),
        ("vfnet", {}),
        (
            "cascade_rcnn",
            {
                "rpn_pre_nms_top_n_train": 200,
                "rpn_post_nms_top_n_train": 100,
                "rpn_pre_nms_top_n_test": 200,
                "rpn_post_nms_top_n_test": 100,
                "rpn_batch_size_per_image": 64,
                "box_batch_size_per_image": 64,
                "box_detections_per_img": 20,
            },
        ),
    ],
)
def test_own_implementation_reaches_a_meaningful_esri_ap(tmp_path, model, arguments):
    folder = write_pascal_voc(tmp_path, n=32, size=64)
    run = train_and_package(
        tmp_path,
        folder,
        "MMDETECTION",
        backbone_model="RESNET18",
        max_epochs=10,
        learning_rate=2e-3,
        freeze_model=False,
        stop_training=False,
        arguments={"model": model, **arguments},
    )
    trace = [(e["epoch"], round(e["valid_loss"], 3), round(e["metrics"]["average_precision"], 3)) for e in run.epochs]
    assert max(e["metrics"]["average_precision"] for e in run.epochs) >= 0.3, trace


@pytest.mark.slow
def test_mmdet_ssd_trains_packages_and_predicts(tmp_path):
    voc = write_pascal_voc(tmp_path, n=8, size=32)
    # 1e-3 now that the random backbone trains at the full rate (3e-3: train-loss margin 3 % at worst over 10 seeds;
    # 1e-3: 14 %; tests/learning_margins.py)
    run = train_and_package(
        tmp_path,
        voc,
        "MMDETECTION",
        backbone_model="RESNET18",
        max_epochs=4,
        batch_size=2,
        learning_rate=0.001,
        freeze_model=False,
        stop_training=False,
        arguments={"model": "ssd"},
    )
    assert run.epochs[-1]["train_loss"] < run.epochs[0]["train_loss"]
    assert 0.0 <= run.metrics["average_precision"] <= 1.0
    emd = run.emd
    assert emd["ModelName"] == "MMDetection" and emd["ModelType"] == "ObjectDetection"
    assert emd["ModelParameters"]["model"] == "ssd"
    lines = predict_json(run.package, *sorted((voc / "images").iterdir())[:2])
    assert len(lines) == 2 and all("boxes" in line for line in lines)


@pytest.mark.parametrize("model", ["fcos", "retinanet", "atss", "vfnet"])
def test_validation_takes_loss_and_detections_from_one_pass_as_two_passes_give_them(model):
    """The one-forward validation of the one-stage detectors gives exactly the loss-mode loss and the eval-mode
    detections (so the reported validation loss and AP do not depend on which path ran). The class biases
    start at 0 so that an untrained head has detections to compare."""
    from gpjobs.training.models.detection.common import set_loss_mode

    torch.manual_seed(0)
    net = _family(model, []).build()
    with torch.no_grad():
        for name, module in net.named_modules():
            if name.endswith("cls_logits"):
                module.bias.fill_(0.0)
    images = torch.randn(2, 3, 64, 64)
    targets = [
        {"boxes": torch.tensor([[4.0, 6.0, 30.0, 28.0], [20.0, 20.0, 60.0, 50.0]]), "labels": torch.tensor([1, 2])},
        {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)},
    ]
    with torch.no_grad():
        set_loss_mode(net)
        loss = net.losses(images, targets)
        found = net.eval().detect(images)
        set_loss_mode(net)
        one_loss, one_found = net.losses_and_detections(images, targets)
    assert torch.isfinite(loss)
    assert torch.equal(one_loss, loss)
    assert sum(len(f["boxes"]) for f in found) > 0
    for a, b in zip(one_found, found):
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
