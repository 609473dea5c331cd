"""FASTERRCNN, RETINANET and MASKRCNN accept every backbone the FPN adapter supports, and each backbone family
builds and takes a training step (32 px chips, batch 2, reduced RPN settings: cheap)."""

from __future__ import annotations

import pytest
import torch

from gpjobs.catalog import CLASSIFICATION_BACKBONES, lookup_model_type, parse_arguments, resolve_backbone
from gpjobs.training.data import open_training_data
from gpjobs.training.models import family_for
from gpjobs.training.weights import WeightsPolicy
from tests.builders.exports import write_pascal_voc, write_rcnn_masks

FPN_TYPES = ("FASTERRCNN", "RETINANET", "MASKRCNN")
FAMILY_REPRESENTATIVES = ("RESNET18", "DENSENET121", "VGG11", "VGG11_BN", "MOBILENET_V2")
# one cheap build per torchvision detector family stays in `make test-fast`; the rest take seconds each
CHEAP = {("FASTERRCNN", "RESNET18"), ("RETINANET", "MOBILENET_V2")}
TINY_RCNN = {
    "rpn_pre_nms_top_n_train": 50,
    "rpn_post_nms_top_n_train": 20,
    "rpn_pre_nms_top_n_test": 50,
    "rpn_post_nms_top_n_test": 20,
    "rpn_batch_size_per_image": 16,
    "box_batch_size_per_image": 16,
}


@pytest.mark.parametrize("model_type", FPN_TYPES)
def test_catalog_lists_every_classification_backbone(model_type):
    info = lookup_model_type(model_type)
    assert set(info.backbones) == set(CLASSIFICATION_BACKBONES)
    assert resolve_backbone(info, "densenet121") == "DENSENET121"
    assert resolve_backbone(info, None) == "RESNET50"


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    root = tmp_path_factory.mktemp("fpn")
    return {"detection": write_pascal_voc(root, n=4, size=32), "instance": write_rcnn_masks(root, n=4, size=32)}


@pytest.mark.parametrize(
    "model_type, backbone",
    [
        pytest.param(m, b, marks=() if (m, b) in CHEAP else pytest.mark.slow)
        for m in FPN_TYPES
        for b in FAMILY_REPRESENTATIVES
    ],
)
def test_backbone_family_builds_and_steps(exports, model_type, backbone):
    torch.manual_seed(0)
    info = lookup_model_type(model_type)
    data = open_training_data([exports[info.task]], task=info.task, validation_percent=0.0, augment=False)
    args = parse_arguments(info, TINY_RCNN if model_type != "RETINANET" else {})
    family = family_for(model_type)(
        info, data.info, backbone, args, WeightsPolicy(None, "random"), lambda level, text: None
    )
    family.attach_data(data)
    model = family.build()
    train_loader, _ = data.loaders(2)
    batch = next(iter(train_loader))
    model.train()
    loss = family.training_loss(model, batch, torch.device("cpu"))
    assert torch.isfinite(loss) and loss.item() > 0
    loss.backward()
    # the gradient reaches the backbone through the FPN taps (not only the heads)
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in family.backbone_parameters(model))
    model.eval()
    with torch.no_grad():
        predictions = family.predict(model, batch[0])
    assert len(predictions) == 2 and all(set(p) >= {"boxes", "scores", "labels"} for p in predictions)
