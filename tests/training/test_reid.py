"""DEEPSORT: the Re-ID network trains on identity-per-folder crops, packages, and predicts embeddings."""

from __future__ import annotations

import json

import pytest
import torch

from gpjobs.training.protocol import ExitCode
from tests.builders.exports import write_imagenet
from tests.training.helpers import emd_of, epochs_of, gpjobs, make_spec, result_of, train

torch.set_num_threads(1)


def test_catalog_offers_the_reid_backbones_only():
    from gpjobs.catalog import ArgumentError, lookup_model_type, resolve_backbone

    info = lookup_model_type("DEEPSORT")
    assert info.implemented and resolve_backbone(info, None) == "REID_V1"
    assert resolve_backbone(info, "reid_v2") == "REID_V2"
    with pytest.raises(ArgumentError):
        resolve_backbone(info, "RESNET18")


@pytest.mark.parametrize("backbone", ["REID_V1", "REID_V2"])
def test_reid_net_embeds_to_unit_128d_vectors(backbone):
    from types import SimpleNamespace

    from gpjobs.catalog import lookup_model_type, parse_arguments
    from gpjobs.export import ClassInfo
    from gpjobs.training.models import family_for
    from gpjobs.training.weights import WeightsPolicy

    info = SimpleNamespace(bands=3, extract_bands=[0, 1, 2], classes=[ClassInfo(1, "a"), ClassInfo(2, "b"),
                                                                       ClassInfo(3, "c")],
                           chip_size=(64, 32), task="classification", format="Imagenet")
    mt = lookup_model_type("DEEPSORT")
    fam = family_for("DEEPSORT")(mt, info, backbone, parse_arguments(mt, {}), WeightsPolicy(), lambda *_: None)
    net = fam.build()
    loss = fam.training_loss(net, (torch.randn(4, 3, 64, 32), torch.tensor([0, 1, 2, 0])), torch.device("cpu"))
    loss.backward()
    assert torch.isfinite(loss)
    out = fam.predict(net.eval(), torch.randn(2, 3, 64, 32))
    assert len(out) == 2 and out[0]["class_name"] in ("a", "b", "c")
    vector = torch.tensor(out[0]["embedding"])
    assert vector.shape == (128,) and abs(float(vector.norm()) - 1.0) < 1e-3


def test_deepsort_trains_packages_and_predicts(tmp_path):
    folder = write_imagenet(tmp_path, n=24, size=32)
    spec = make_spec(tmp_path, [folder], "DEEPSORT", max_epochs=4, stop_training=False, learning_rate=0.003)
    code, reporter = train(spec)
    assert code == ExitCode.OK, [e for e in reporter.events if e["type"] in ("failed", "message")]
    epochs = epochs_of(reporter)
    assert epochs[-1]["train_loss"] < epochs[0]["train_loss"]
    result = result_of(reporter)
    assert result["metrics"]["accuracy"] >= 0.8  # two identities of distinct brightness
    emd = emd_of(result)
    assert emd["ModelType"] == "ObjectTracking" and emd["ModelName"] == "DeepSort"
    assert emd["ModelParameters"]["backbone"] == "reid_v1" and emd["EmbeddingSize"] == 128
    chips = sorted(p for p in (folder / "images").rglob("*.tif"))[:2]
    done = gpjobs("predict", result["package"], *map(str, chips), "--json")
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert len(lines) == 2 and all(len(line["embedding"]) == 128 for line in lines)
