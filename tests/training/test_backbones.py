"""Backbone factory: feature taps, multispectral first conv, local weights policy, freezing."""

from __future__ import annotations

import pytest
import torch

from gpjobs.catalog import TORCHVISION_WEIGHT_FILES
from gpjobs.training.backbones import build_backbone, set_backbone_frozen
from gpjobs.training.weights import WeightsMissing, WeightsPolicy


@pytest.mark.parametrize(
    "name", ["RESNET18", "MOBILENET_V2", "DENSENET121", pytest.param("VGG11_BN", marks=pytest.mark.slow)]
)
def test_taps_shallow_to_deep_with_channels_and_strides(name):
    backbone = build_backbone(name, 3)
    feats = backbone(torch.zeros(2, 3, 64, 64))
    assert list(feats) == backbone.tap_names
    assert backbone.strides == [2, 4, 8, 16, 32]
    assert [f.shape[1] for f in feats.values()] == backbone.out_channels
    assert [64 // f.shape[-1] for f in feats.values()] == backbone.strides


def test_resnet_channels_are_torchvision_ones():
    assert build_backbone("RESNET18", 3).out_channels == [64, 64, 128, 256, 512]
    assert build_backbone("RESNET50", 3).out_channels[-1] == 2048


def test_multispectral_first_conv_from_rgb_weights(tmp_path):
    import torchvision

    reference = torchvision.models.resnet18(weights=None)
    torch.save(reference.state_dict(), tmp_path / TORCHVISION_WEIGHT_FILES["RESNET18"])
    messages = []
    policy = WeightsPolicy(str(tmp_path), "fail")
    backbone = build_backbone("RESNET18", 6, weights=policy, say=lambda lvl, txt: messages.append(txt))
    conv = backbone.first_conv()
    assert conv.in_channels == 6 and backbone.first_conv_adapted
    rgb = reference.conv1.weight
    # band 3 reuses the red filter, band 4 green, ... scaled by 3/6
    assert torch.allclose(conv.weight[:, 3], rgb[:, 0] * 0.5)
    assert torch.allclose(conv.weight[:, 1], rgb[:, 1] * 0.5)
    # deeper layers carry the loaded weights exactly
    assert torch.equal(backbone.stages["layer4"][0].conv1.weight, reference.layer4[0].conv1.weight)
    assert policy.outcome == f"loaded {TORCHVISION_WEIGHT_FILES['RESNET18']}"
    assert any("loaded" in m for m in messages) and any("6 bands" in m for m in messages)
    assert backbone.eval()(torch.zeros(1, 6, 32, 32))["layer4"].shape[1] == 512


def test_densenet_file_with_torchvision_legacy_key_names_loads(tmp_path):
    import torchvision

    net = torchvision.models.densenet121(weights=None)
    legacy = {k.replace("norm1", "norm.1").replace("conv2", "conv.2"): v for k, v in net.state_dict().items()}
    torch.save(legacy, tmp_path / TORCHVISION_WEIGHT_FILES["DENSENET121"])
    policy = WeightsPolicy(str(tmp_path), "fail")
    build_backbone("DENSENET121", 3, weights=policy)
    assert policy.outcome.startswith("loaded densenet121")


def test_missing_weights_random_or_fail(tmp_path):
    random_policy = WeightsPolicy(str(tmp_path), "random")
    build_backbone("MOBILENET_V2", 3, weights=random_policy)
    assert random_policy.outcome.startswith("none: mobilenet_v2-b0353104.pth not found")
    with pytest.raises(WeightsMissing, match="mobilenet_v2-b0353104.pth"):
        build_backbone("MOBILENET_V2", 3, weights=WeightsPolicy(str(tmp_path), "fail"))
    assert WeightsPolicy(None).find_file("RESNET18") is None


def test_corrupt_weights_file_follows_policy(tmp_path):
    (tmp_path / TORCHVISION_WEIGHT_FILES["RESNET18"]).write_bytes(b"not a checkpoint")
    policy = WeightsPolicy(str(tmp_path), "random")
    build_backbone("RESNET18", 3, weights=policy)
    assert policy.outcome.startswith("none: resnet18-f37072fd.pth could not be loaded")


def test_freeze_keeps_batchnorm_and_adapted_conv_trainable():
    backbone = build_backbone("RESNET18", 4)
    set_backbone_frozen(backbone, True)
    assert not backbone.stages["layer2"][0].conv1.weight.requires_grad
    assert backbone.stages["layer2"][0].bn1.weight.requires_grad
    assert backbone.first_conv().weight.requires_grad
    set_backbone_frozen(backbone, False)
    assert all(p.requires_grad for p in backbone.parameters())


def test_darknet_is_delegated():
    backbone = build_backbone("DARKNET53", 3)
    feats = backbone(torch.zeros(1, 3, 64, 64))
    assert len(feats) >= 3 and list(backbone.out_channels)


def test_unknown_backbone():
    with pytest.raises(ValueError, match="valid backbones"):
        build_backbone("EFFICIENTNET", 3)
