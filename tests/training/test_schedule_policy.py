"""The schedule a job gets: a random backbone trains whole at the full rate whatever freeze_model says, on
chips as they are unless augment=true; a pretrained one keeps Esri's semantics (frozen first, discriminative
rate, flips and turns); the package's .emd and model card say which schedule ran."""

from __future__ import annotations

import json
import zipfile

import pytest
import torch

from gpjobs.catalog import TORCHVISION_WEIGHT_FILES
from gpjobs.training.backbones import build_backbone
from gpjobs.training.protocol import ExitCode
from gpjobs.training.weights import WeightsPolicy
from tests.builders.exports import write_labeled_tiles
from tests.training.helpers import emd_of, make_spec, result_of, train

pytestmark = pytest.mark.slow  # both tests train a classifier

torch.set_num_threads(1)


def _job(tmp_path, folder, **kw):
    spec = make_spec(
        tmp_path,
        [folder],
        "FEATURE_CLASSIFIER",
        backbone_model="RESNET18",
        max_epochs=1,
        batch_size=4,
        learning_rate=0.01,
        **kw,
    )
    code, reporter = train(spec)
    assert code == ExitCode.OK, [e for e in reporter.events if e["type"] in ("failed", "message")]
    texts = [e["text"] for e in reporter.events if e["type"] == "message"]
    result = result_of(reporter)
    with zipfile.ZipFile(result["package"]) as package:
        card = package.read("model_metrics.html").decode()
        weights = torch.load(package.open("model.pth"), map_location="cpu", weights_only=True)
    return texts, emd_of(result), card, weights


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return write_labeled_tiles(tmp_path_factory.mktemp("fc"), n=12, size=32, classes=((1, "a"), (2, "b")))


def test_random_backbone_is_trained_whole_at_the_full_rate_and_says_so(tmp_path, folder):
    texts, emd, card, _ = _job(tmp_path, folder, freeze_model=True)
    assert any("freeze_model=true is ignored: the RESNET18 backbone has no pretrained weights" in t for t in texts)
    assert emd["LearningRate"] == "1.0000e-02"  # one rate, not slice(lr/10, lr)
    schedule = emd["Gpjobs"]["schedule"]
    assert schedule["backbone"]["frozen"] is False and schedule["backbone_learning_rate"] == 0.01
    assert schedule["learning_rate_how"] == "given (learning_rate)"
    # the card states the validation metric per class and the schedule that produced it
    assert "Training schedule" in card and "freeze_model=true is ignored" in card
    assert "On the 4 validation chips, held out of training, at the best epoch (1" in card
    assert "<tr><td>a</td>" in card and "<tr><td>b</td>" in card  # per-class rows
    assert "warm-up over the first 30%" in card and "early stopping" in card
    assert schedule["augment"] is False and "augmentation</td><td>none" in card
    assert any(t.startswith("augment not set: training chips are used as they are") for t in texts)
    _, emd, card, _ = _job(tmp_path / "augmented", folder, arguments={"augment": True})
    assert emd["Gpjobs"]["schedule"]["augment"] is True and "flips and 90-degree turns" in card


def test_pretrained_backbone_keeps_esri_semantics(tmp_path, folder):
    import torchvision

    weights_dir = tmp_path / "weights"
    weights_dir.mkdir()
    imagenet = torchvision.models.resnet18(weights=None).state_dict()  # stands in for ImageNet weights
    torch.save(imagenet, weights_dir / TORCHVISION_WEIGHT_FILES["RESNET18"])
    texts, emd, card, packaged = _job(
        tmp_path, folder, freeze_model=True, weights_dir=str(weights_dir), missing_weights="fail"
    )
    assert emd["PretrainedWeights"].startswith("loaded")
    assert any("freeze_model=true: the pretrained RESNET18 backbone stays frozen" in t for t in texts)
    assert emd["LearningRate"] == "slice('1.0000e-03', '1.0000e-02', None)"
    assert emd["Gpjobs"]["schedule"]["backbone"]["frozen"] is True
    loaded = build_backbone("RESNET18", 3, weights=WeightsPolicy(str(weights_dir), "fail")).state_dict()
    convs = [k for k, v in loaded.items() if v.dim() == 4]
    assert len(convs) >= 20 and all(torch.equal(packaged[f"backbone.{k}"], loaded[k]) for k in convs)  # frozen
    assert "stays frozen" in card
    assert emd["Gpjobs"]["schedule"]["augment"] is True  # arcgis.learn's default for a pretrained backbone
    _, emd, _, _ = _job(tmp_path / "unfrozen", folder, freeze_model=False, weights_dir=str(weights_dir))
    assert emd["Gpjobs"]["schedule"]["backbone"] == {
        "frozen": False,
        "why": "freeze_model=false: the pretrained RESNET18 backbone is trained whole, at a tenth of the learning rate",
    }
    assert json.loads(json.dumps(emd["Gpjobs"]["schedule"])) == emd["Gpjobs"]["schedule"]
