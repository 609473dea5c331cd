"""MMSEGMENTATION: every `model` name arcgis.learn documents is accepted and trains; names without an
implementation of their own train as the closest one and say so."""

from __future__ import annotations

import pytest
import torch

from gpjobs.tasks.params import ParameterError
from gpjobs.training.models.mmseg import IMPLEMENTATIONS
from tests.builders.exports import write_classified_tiles, write_pascal_voc
from tests.training.helpers import build_family, make_spec, predict_json, train_and_package
from tests.training.lifecycle_checks import CARD, assert_resume_matches_straight_run

torch.set_num_threads(1)

# arcgis.learn's MMSegmentation.supported_models (models.md 1A)
ARCGIS_NAMES = (
    "ann",
    "apcnet",
    "ccnet",
    "cgnet",
    "deeplabv3",
    "deeplabv3plus",
    "dmnet",
    "dnlnet",
    "emanet",
    "fastscnn",
    "fcn",
    "gcnet",
    "hrnet",
    "mobilenet_v2",
    "nonlocal_net",
    "ocrnet",
    "psanet",
    "pspnet",
    "resnest",
    "sem_fpn",
    "unet",
    "upernet",
)


def test_every_documented_name_is_accepted_and_a_config_path_is_refused():
    from gpjobs.catalog import ArgumentError, lookup_model_type, parse_arguments

    info = lookup_model_type("MMSEGMENTATION")
    for name in ARCGIS_NAMES:
        assert parse_arguments(info, {"model": name.upper()})["model"] == name
    assert parse_arguments(info, {})["model"] == "deeplabv3"
    with pytest.raises(ArgumentError) as err:
        parse_arguments(info, {"model": r"C:\mmseg\configs\upernet\upernet_r50_512x512_80k_ade20k.py"})
    assert "config file path" in str(err.value) and all(name in str(err.value) for name in ARCGIS_NAMES)
    with pytest.raises(ArgumentError, match="did you mean upernet"):
        parse_arguments(info, {"model": "uppernet"})


def test_the_catalog_and_the_implementation_table_list_the_same_names():
    from gpjobs.catalog import lookup_model_type
    from gpjobs.training.models.mmseg import MODELS

    assert set(lookup_model_type("MMSEGMENTATION").arguments["model"].choices) == set(MODELS) == set(ARCGIS_NAMES)
    assert {trains for trains, _ in MODELS.values()} == set(IMPLEMENTATIONS)
    for name, (trains, note) in MODELS.items():  # a name trains as itself, or says what it is instead
        assert trains == name or note, name


def _family(model: str, messages: list | None = None):
    return build_family(
        "MMSEGMENTATION", export_format="Classified_Tiles", arguments={"model": model}, messages=messages
    )


@pytest.mark.parametrize("model", ARCGIS_NAMES)
def test_every_name_says_what_it_trains(model):
    from gpjobs.training.models.mmseg import MODELS

    messages: list[tuple[str, str]] = []
    fam = _family(model, messages)
    trains, note = MODELS[model]
    assert fam.implementation == trains
    assert any(
        level == "warning" and text.startswith(f"model={model}:") and f"trains {trains}" in text
        for level, text in messages
    ) == bool(note)
    params = fam.model_parameters()
    assert params["model"] == model and params["trained_as"] == trains and "not OpenMMLab" in params["implementation"]
    assert ("mapping_note" in params) == bool(note)
    fields = fam.emd_fields({})
    assert fields["ModelName"] == "MMSegmentation" and fields["Kwargs"]["model"] == model
    if trains == "mobilenet_v2":
        assert fam.backbone == "MOBILENET_V2"


@pytest.mark.parametrize("model", IMPLEMENTATIONS)
def test_every_implementation_builds_and_steps(model):
    fam = _family(model)
    net = fam.build()
    loss = fam.training_loss(net, (torch.randn(2, 3, 32, 32), torch.randint(0, 3, (2, 32, 32))), torch.device("cpu"))
    loss.backward()
    assert torch.isfinite(loss)
    head_grads = [p.grad for n, p in net.named_parameters() if not n.startswith("backbone.")]
    assert head_grads and all(g is not None for g in head_grads)  # every head parameter is in the loss
    assert net.eval()(torch.randn(1, 3, 32, 32)).shape == (1, 3, 32, 32)


@pytest.mark.slow
@pytest.mark.parametrize("model, cli", [("upernet", True), ("ocrnet", False)])  # gpjobs predict, load_model
@pytest.mark.timeout(300)
def test_upernet_and_ocrnet_train_package_predict_and_resume(tmp_path, model, cli):
    folder = write_classified_tiles(tmp_path, n=16, size=32)
    straight = assert_resume_matches_straight_run(
        tmp_path,
        folder,
        "MMSEGMENTATION",
        backbone_model="RESNET18",
        max_epochs=3,
        stop_training=False,
        arguments={"model": model, "class_balancing": True},
    )
    epochs = straight.epochs
    assert epochs[-1]["train_loss"] < epochs[0]["train_loss"]
    metrics = straight.metrics
    assert 0.0 <= metrics["accuracy"] <= 1.0 and 0.0 <= metrics["miou"] <= 1.0
    assert {"model.emd", "model.pth", "model.pt", "GpjobsPixelClassifier.py"} | CARD <= straight.members
    emd = straight.emd
    assert emd["ModelName"] == "MMSegmentation" and emd["ModelConfiguration"] == "_model_extension_inferencing"
    assert emd["InferenceFunction"] == "GpjobsPixelClassifier.py"
    assert emd["ModelParameters"]["trained_as"] == model and emd["DatasetType"] == "Classified_Tiles"
    assert float(emd["accuracy"]) == pytest.approx(metrics["accuracy"], rel=1e-3)
    _predict_reproduces_accuracy(tmp_path, straight, cli)


def _predict_reproduces_accuracy(tmp_path, run, cli: bool):
    """`gpjobs predict` (or load_model in this process) on the validation chips gives the validation accuracy."""
    import numpy as np
    import tifffile

    from gpjobs.export import read_label_raster
    from gpjobs.training.package import load_model, open_package

    data = run.validation_data("segmentation")
    if cli:
        masks = tmp_path / "masks"
        lines = predict_json(run.package, *[r.image for r in data.valid.records], "--masks-dir", masks)
        assert len(lines) == len(data.valid) and all("class_pixels" in line for line in lines)
        predicted = [tifffile.imread(masks / f"{rec.image.stem}.tif") for rec in data.valid.records]
    else:
        with open_package(run.package) as package:
            family, model = load_model(package)
            images = torch.stack([data.valid[i][0] for i in range(len(data.valid))])
            predicted = [p["_mask"] for p in family.predict(model, images)]
    correct = total = 0
    for rec, pred in zip(data.valid.records, predicted):
        truth = read_label_raster(rec.label)
        truth = truth[..., 0] if truth.ndim == 3 else truth
        correct += int((np.asarray(pred) == np.asarray(truth)).sum())
        total += truth.size
    assert correct / total == pytest.approx(run.metrics["accuracy"], abs=1e-6)


@pytest.mark.slow  # trains and packages
def test_a_mapped_name_trains_and_its_package_says_what_was_trained(tmp_path):
    folder = write_classified_tiles(tmp_path, n=8, size=32)
    run = train_and_package(
        tmp_path, folder, "MMSEGMENTATION", backbone_model="RESNET18", max_epochs=1, arguments={"model": "emanet"}
    )
    assert any("model=emanet" in text for text in run.messages)
    params = run.emd["ModelParameters"]
    assert params["trained_as"] == "nonlocal_net" and params["mapping_note"].startswith("emanet: EMANet")


def test_mmsegmentation_refuses_detection_data_at_submit(tmp_path):
    folder = write_pascal_voc(tmp_path, n=4, size=32)
    with pytest.raises(ParameterError) as err:
        make_spec(tmp_path, [folder], "MMSEGMENTATION", arguments={"model": "upernet"})
    assert "PASCAL_VOC_rectangles cannot train model_type MMSEGMENTATION" in str(err.value)
    assert "Classified_Tiles" in str(err.value)


@pytest.mark.slow
@pytest.mark.heavy  # near its bar: accuracy over seeds 0-2 at lr 1e-3, 10 epochs: min margin -0.06 (ocrnet),
# +0.05 (upernet, sem_fpn), +0.09 (hrnet); at the helper's 1e-2 (main's random backbones train whole at the full
# rate) and at 3e-3 seed 1 fails for all four
@pytest.mark.parametrize("model", ["upernet", "ocrnet", "sem_fpn", "hrnet"])  # the heads that read stride 4-8
def test_own_heads_learn_the_rectangles(tmp_path, model):
    folder = write_classified_tiles(tmp_path, n=24, size=32)
    run = train_and_package(
        tmp_path,
        folder,
        "MMSEGMENTATION",
        backbone_model="RESNET18",
        max_epochs=10,
        learning_rate=0.001,
        stop_training=False,
        arguments={"model": model},
    )
    # background is ~70% of the pixels: above that the rectangles were learned
    assert run.metrics["accuracy"] > 0.75, [e["metrics"] for e in run.epochs]


@pytest.mark.slow
def test_mmseg_deeplabv3plus_trains_packages_and_predicts(tmp_path):
    folder = write_classified_tiles(tmp_path, n=16, size=32)
    run = train_and_package(
        tmp_path,
        folder,
        "MMSEGMENTATION",
        backbone_model="RESNET18",
        max_epochs=3,
        stop_training=False,
        arguments={"model": "deeplabv3plus", "class_balancing": True},
    )
    assert run.epochs[-1]["train_loss"] < run.epochs[0]["train_loss"]
    assert 0.0 <= run.metrics["accuracy"] <= 1.0 and 0.0 <= run.metrics["miou"] <= 1.0
    emd = run.emd
    assert emd["ModelName"] == "MMSegmentation" and emd["ModelConfiguration"] == "_model_extension_inferencing"
    assert (
        emd["ModelParameters"]["model"] == "deeplabv3plus"
        and "not OpenMMLab" in emd["ModelParameters"]["implementation"]
    )
    lines = predict_json(run.package, *sorted((folder / "images").iterdir())[:2])
    assert len(lines) == 2 and all(sum(line["class_pixels"].values()) == 32 * 32 for line in lines)
