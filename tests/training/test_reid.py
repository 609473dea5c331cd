"""DEEPSORT: the Re-ID network trains on identity-per-folder crops, packages, and predicts embeddings."""

from __future__ import annotations

import pytest
import torch

from tests.builders.exports import write_imagenet
from tests.training.helpers import build_family, predict_json, train_and_package

torch.set_num_threads(1)


def test_catalog_offers_the_reid_backbones_only():
    from gpjobs.catalog import ArgumentError, lookup_model_type, resolve_backbone

    info = lookup_model_type("DEEPSORT")
    assert resolve_backbone(info, None) == "REID_V1"
    assert resolve_backbone(info, "reid_v2") == "REID_V2"
    with pytest.raises(ArgumentError):
        resolve_backbone(info, "RESNET18")


@pytest.mark.parametrize("backbone", ["REID_V1", "REID_V2"])
def test_reid_net_embeds_to_unit_128d_vectors(backbone):
    fam = build_family("DEEPSORT", backbone, classes=("a", "b", "c"), chip_size=(64, 32), export_format="Imagenet")
    net = fam.build()
    loss = fam.training_loss(net, (torch.randn(4, 3, 64, 32), torch.tensor([0, 1, 2, 0])), torch.device("cpu"))
    loss.backward()
    assert torch.isfinite(loss)
    out = fam.predict(net.eval(), torch.randn(2, 3, 64, 32))
    assert len(out) == 2 and out[0]["class_name"] in ("a", "b", "c")
    vector = torch.tensor(out[0]["embedding"])
    assert vector.shape == (128,) and abs(float(vector.norm()) - 1.0) < 1e-3


@pytest.mark.slow
def test_deepsort_trains_packages_and_predicts(tmp_path):
    run = train_and_package(
        tmp_path,
        write_imagenet(tmp_path, n=24, size=32),
        "DEEPSORT",
        max_epochs=4,
        stop_training=False,
        learning_rate=0.003,
    )
    assert run.epochs[-1]["train_loss"] < run.epochs[0]["train_loss"]
    assert run.metrics["accuracy"] >= 0.8  # two identities of distinct brightness
    emd = run.emd
    assert emd["ModelType"] == "ObjectTracking" and emd["ModelName"] == "DeepSort"
    assert emd["ModelParameters"]["backbone"] == "reid_v1" and emd["EmbeddingSize"] == 128
    lines = predict_json(run.package, *sorted((run.folder / "images").rglob("*.tif"))[:2])
    assert len(lines) == 2 and all(len(line["embedding"]) == 128 for line in lines)
