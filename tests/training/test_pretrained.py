"""pretrained_model from arcgis.learn packages and COCO weights, mapped tensor for tensor onto our models.

The source state dicts are built from the published layouts (no Esri file is used): fastai v1 `create_body` cuts
a torchvision model's children (ResNet `[:-2]`, DenseNet/VGG/MobileNetV2 `[:-1]`, i.e. `features`), `cnn_learner`
is `Sequential(body, create_head(...))`, `DynamicUnet` is a `SequentialEx` whose `layers.0` is the body, and
torchvision's own DeepLabV3 / Faster R-CNN state dicts are what arcgis.learn saves for DeepLab-ResNet101 and
FasterRCNN (and what torchvision's COCO files hold).
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torchvision
from torch import nn

from gpjobs.catalog import TORCHVISION_COCO_WEIGHT_FILES, lookup_model_type, parse_arguments
from gpjobs.export import ClassInfo
from gpjobs.training.backbones import build_backbone
from gpjobs.training.models import family_for
from gpjobs.training.models.decoders import DynamicUnetDecoder, SegmentationNet
from gpjobs.training.package import PackageError, open_package
from gpjobs.training.pretrained import best_backbone_mapping, load_coco_weights, load_package_weights, read_state_dict
from gpjobs.training.weights import WeightsMissing, WeightsPolicy

torch.set_num_threads(1)


def make_family(
    model_type: str,
    backbone: str,
    *,
    bands: int = 3,
    classes: int = 2,
    args: dict | None = None,
    weights: WeightsPolicy | None = None,
    messages: list | None = None,
):
    info = SimpleNamespace(
        bands=bands,
        extract_bands=list(range(bands)),
        format="Classified_Tiles",
        classes=[ClassInfo(i + 1, f"c{i + 1}") for i in range(classes)],
        chip_size=(32, 32),
        task="classification" if model_type == "FEATURE_CLASSIFIER" else "segmentation",
    )
    mt = lookup_model_type(model_type)
    sink = messages if messages is not None else []
    return family_for(model_type)(
        mt,
        info,
        backbone,
        parse_arguments(mt, args or {}),
        weights or WeightsPolicy(),
        lambda level, text: sink.append((level, text)),
    )


def create_body(arch: str) -> nn.Sequential:
    """fastai v1 create_body: the torchvision model's children up to the pooling (ResNet -2, others -1)."""
    net = getattr(torchvision.models, arch)(weights=None)
    cut = -2 if arch.startswith("resnet") else -1
    return nn.Sequential(*list(net.children())[:cut])


class ConcatPool(nn.Module):  # fastai AdaptiveConcatPool2d: [max, avg]
    def forward(self, x):
        return torch.cat([nn.functional.adaptive_max_pool2d(x, 1), nn.functional.adaptive_avg_pool2d(x, 1)], 1)


def create_head(nf: int, nc: int) -> nn.Sequential:
    """fastai v1 create_head(nf, nc): pool, flatten, bn_drop_lin(nf, 512, p=0.25, relu), bn_drop_lin(512, nc, 0.5)."""
    return nn.Sequential(
        ConcatPool(),
        nn.Flatten(),
        nn.BatchNorm1d(nf),
        nn.Dropout(0.25),
        nn.Linear(nf, 512),
        nn.ReLU(inplace=True),
        nn.BatchNorm1d(512),
        nn.Dropout(0.5),
        nn.Linear(512, nc),
    )


def randomize(module: nn.Module) -> nn.Module:
    """Distinct values in every tensor (BN statistics included), so a misplaced tensor changes the output."""
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, t in module.state_dict().items():
            if t.is_floating_point():
                t.copy_(torch.rand(t.shape, generator=gen) * 0.2 + (0.9 if "running_var" in name else -0.1))
    return module


def esri_package(
    folder: Path,
    model_name: str,
    state: dict,
    *,
    classes: int = 2,
    backbone: str = "resnet18",
    with_optimizer: bool = True,
) -> Path:
    """An arcgis.learn-style model folder: .emd without a Gpjobs key, fastai Learner.save .pth."""
    folder.mkdir(parents=True, exist_ok=True)
    emd = {
        "Framework": "arcgis.learn.models._inferencing",
        "ModelConfiguration": "_x",
        "ModelName": model_name,
        "ModelFile": "esri.pth",
        "ModelParameters": {"backbone": backbone, "backend": "pytorch"},
        "Classes": [{"Value": i + 1, "Name": f"c{i + 1}", "Color": [0, 0, 0]} for i in range(classes)],
        "ArcGISLearnVersion": "2.0.1",
    }
    (folder / "esri.emd").write_text(json.dumps(emd))
    saved = {"model": state, "opt": {"state": {}, "param_groups": []}} if with_optimizer else state
    torch.save(saved, folder / "esri.pth")
    return folder


def test_feature_classifier_from_fastai_cnn_learner(tmp_path):
    learner = randomize(nn.Sequential(create_body("resnet18"), create_head(1024, 2))).eval()
    package = esri_package(tmp_path / "fc", "FeatureClassifier", learner.state_dict())
    messages: list = []
    family = make_family("FEATURE_CLASSIFIER", "RESNET18", messages=messages)
    model = family.build()
    with open_package(package) as pkg:
        report = load_package_weights(model, family, pkg, lambda level, text: messages.append((level, text)))
    assert report.loaded == report.total == {"backbone": 100, "head": 12}
    assert "fastai create_body under '0.'" in report.source
    x = torch.randn(2, 3, 48, 48)
    with torch.no_grad():  # same function: every tensor went where fastai had it
        assert torch.allclose(model.eval()(x), learner(x), atol=1e-5)
    assert any(
        "Fine-tuning from esri (arcgis.learn FeatureClassifier" in t and "backbone 100/100, head 12/12" in t
        for _, t in messages
    )


DYNAMIC_UNET_RESNET18_3_OUTPUTS = {  # fastai v1 DynamicUnet(resnet18 body, 3, last_cross, bottle, norm_type=None)
    "layers.1.weight": (512,),
    "layers.1.bias": (512,),
    "layers.1.running_mean": (512,),
    "layers.1.running_var": (512,),
    "layers.3.0.0.weight": (1024, 512, 3, 3),
    "layers.3.0.0.bias": (1024,),
    "layers.3.1.0.weight": (512, 1024, 3, 3),
    "layers.3.1.0.bias": (512,),
    **{
        f"layers.{i}.{k}": s
        for i, (up, skip, out) in zip(range(4, 8), [(512, 256, 512), (512, 128, 384), (384, 64, 256), (256, 64, 96)])
        for k, s in {
            "shuf.conv.0.weight": (up * 2, up, 1, 1),
            "shuf.conv.0.bias": (up * 2,),
            "bn.weight": (skip,),
            "bn.bias": (skip,),
            "bn.running_mean": (skip,),
            "bn.running_var": (skip,),
            "conv1.0.weight": (out, up // 2 + skip, 3, 3),
            "conv1.0.bias": (out,),
            "conv2.0.weight": (out, out, 3, 3),
            "conv2.0.bias": (out,),
        }.items()
    },
    "layers.8.conv.0.weight": (384, 96, 1, 1),
    "layers.8.conv.0.bias": (384,),
    "layers.10.layers.0.0.weight": (49, 99, 3, 3),
    "layers.10.layers.0.0.bias": (49,),
    "layers.10.layers.1.0.weight": (99, 49, 3, 3),
    "layers.10.layers.1.0.bias": (99,),
    "layers.11.0.weight": (3, 99, 1, 1),
    "layers.11.0.bias": (3,),
}
OUR_DECODER = {
    "layers.1.": "head.bn.",
    "layers.3.": "head.middle.",
    "layers.4.": "head.blocks.0.",
    "layers.5.": "head.blocks.1.",
    "layers.6.": "head.blocks.2.",
    "layers.7.": "head.blocks.3.",
    "layers.8.": "head.shuffle.",
    "layers.10.": "head.cross.",
    "layers.11.": "head.final.",
}


@pytest.mark.slow  # two U-Nets built and compared, seconds
def test_unet_from_fastai_dynamic_unet_backbone_and_decoder(tmp_path):
    body = randomize(create_body("resnet18")).eval()
    gen = torch.Generator().manual_seed(2)
    decoder = {k: torch.rand(s, generator=gen) + 0.5 for k, s in DYNAMIC_UNET_RESNET18_3_OUTPUTS.items()}
    state = {**{f"layers.0.{k}": v for k, v in body.state_dict().items()}, **decoder}
    package = esri_package(tmp_path / "unet", "UnetClassifier", state, with_optimizer=False)
    family = make_family("UNET", "RESNET18")
    backbone = build_backbone("RESNET18", 3)  # UNET over fastai's decoder (what bench/unet_decoder.py trains)
    model = SegmentationNet(backbone, DynamicUnetDecoder(backbone.out_channels, backbone.strides, 3, 3))
    with open_package(package) as pkg:
        report = load_package_weights(model, family, pkg, lambda *_: None)
    assert report.backbone_complete and report.loaded["head"] == report.total["head"] == len(decoder)
    own = model.state_dict()
    for key, tensor in decoder.items():
        prefix = next(p for p in OUR_DECODER if key.startswith(p))
        assert torch.equal(own[OUR_DECODER[prefix] + key[len(prefix) :]], tensor), key
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(model.backbone.eval()(x)["layer4"], body(x), atol=1e-5)


@pytest.mark.parametrize(
    "arch, backbone, prefix, unwrapped",
    [
        ("resnet18", "RESNET18", "0.", False),  # SSD: cnn_learner(custom_head=SSD head)
        ("resnet18", "RESNET18", "encoder.", False),  # RetinaNet: RetinaNetModel(encoder=create_body)
        ("resnet18", "RESNET18", "backbone.", False),  # DeepLab (non-ResNet101): Deeplab.backbone
        ("mobilenet_v2", "MOBILENET_V2", "0.", False),  # SSD / FeatureClassifier on MobileNetV2
        pytest.param(  # PSPNet U-Net: [*features children, ppm, final]; DenseNet builds take a second or more
            "densenet121", "DENSENET121", "model.layers.0.", True, marks=pytest.mark.slow
        ),
        pytest.param("vgg11_bn", "VGG11_BN", "backbone.", False, marks=pytest.mark.slow),  # VGG builds take seconds
    ],
)
def test_backbone_found_under_every_arcgis_layout(arch, backbone, prefix, unwrapped):
    body = randomize(create_body(arch)).eval()
    modules = list(body[0].children()) if unwrapped else list(body.children())
    flat = nn.Sequential(*modules).eval() if unwrapped else body
    source = {prefix + k: v for k, v in flat.state_dict().items()}
    source[prefix + "99.weight"] = torch.zeros(3)  # a head beside the body does not disturb the search
    ours = build_backbone(backbone, 3)
    found, layout, found_prefix = best_backbone_mapping(source, ours)
    assert found_prefix == prefix and len(found) == len(ours.state_dict()), layout
    ours.load_state_dict(found)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        deepest = list(ours.eval()(x).values())[-1]
        if arch.startswith("densenet"):  # torchvision applies the final ReLU in forward; our last stage has it
            expected = torch.relu(flat(x))
        elif arch.startswith("vgg"):  # create_body keeps VGG's adaptive pool after `features`
            expected = flat[0](x)
        else:
            expected = flat(x)
        assert torch.allclose(deepest, expected, atol=1e-5)


@pytest.mark.slow  # ResNet-50 models
def test_deeplab_from_torchvision_layout_equals_torchvision_deeplabv3():
    # arcgis.learn's DeepLab-ResNet101 is torchvision's DeepLabV3 (output stride 8); ResNet50 keeps the test small
    reference = randomize(
        torchvision.models.segmentation.deeplabv3_resnet50(
            weights=None, weights_backbone=None, num_classes=3, aux_loss=True
        )
    ).eval()
    family = make_family("DEEPLAB", "RESNET50", args={"keep_dilation": True})
    model = family.build()
    from gpjobs.training.pretrained import _load, map_foreign_state

    mapped, layout = map_foreign_state(reference.state_dict(), model, family)
    report = _load(model, family, mapped, "torchvision")
    assert report.loaded == report.total and set(report.total) == {"backbone", "head", "aux"}, report.counts()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(model.eval()(x), reference(x)["out"], atol=1e-4)


def test_partial_backbone_stops_the_job_unless_allowed(tmp_path):
    body = create_body("resnet18")
    state = {f"0.{k}": v for k, v in body.state_dict().items() if not k.startswith("7.")}  # layer4 missing
    package = esri_package(tmp_path / "ssd", "SingleShotDetector", state)
    family = make_family("FEATURE_CLASSIFIER", "RESNET18")
    with open_package(package) as pkg, pytest.raises(PackageError, match="allow_partial_pretrained") as err:
        load_package_weights(family.build(), family, pkg, lambda *_: None)
    assert "only 75 of the 100 backbone tensors of RESNET18" in str(err.value)
    messages: list = []
    family = make_family("FEATURE_CLASSIFIER", "RESNET18", args={"allow_partial_pretrained": "true"})
    with open_package(package) as pkg:
        report = load_package_weights(family.build(), family, pkg, lambda lvl, t: messages.append((lvl, t)))
    assert report.loaded["backbone"] == 75 and report.loaded.get("head", 0) == 0
    assert messages[-1][0] == "warning" and "25 backbone tensors start from random weights" in messages[-1][1]


def test_wrong_backbone_is_refused_with_the_fix(tmp_path):
    package = esri_package(
        tmp_path / "fc", "FeatureClassifier", nn.Sequential(create_body("resnet34")).state_dict(), backbone="resnet34"
    )
    family = make_family("FEATURE_CLASSIFIER", "RESNET18")
    with (
        open_package(package) as pkg,
        pytest.raises(PackageError, match="trained with backbone RESNET34; this job builds RESNET18"),
    ):
        load_package_weights(family.build(), family, pkg, lambda *_: None)


def test_three_band_package_spreads_its_first_conv_over_four_bands(tmp_path):
    body = randomize(create_body("resnet18"))
    package = esri_package(tmp_path / "fc", "FeatureClassifier", {f"0.{k}": v for k, v in body.state_dict().items()})
    family = make_family("FEATURE_CLASSIFIER", "RESNET18", bands=4)
    model = family.build()
    with open_package(package) as pkg:
        report = load_package_weights(model, family, pkg, lambda *_: None)
    assert report.backbone_complete and "first convolution spread from 3 to 4 bands" in report.notes
    rgb = body[0].weight
    assert torch.allclose(model.backbone.first_conv().weight[:, 3], rgb[:, 0] * 0.75)


def test_weight_normed_convs_and_dataparallel_prefix_are_undone(tmp_path):
    conv = nn.Conv2d(2, 4, 3)
    v = torch.randn(4, 2, 3, 3)
    g = torch.rand(4, 1, 1, 1) + 0.5
    torch.save(
        {"model": {"module.x.weight_v": v, "module.x.weight_g": g, "module.x.bias": conv.bias}}, tmp_path / "s.pth"
    )
    state = read_state_dict(tmp_path / "s.pth")
    assert set(state) == {"x.weight", "x.bias"}
    assert torch.allclose(state["x.weight"].flatten(1).norm(dim=1), g.flatten())
    (tmp_path / "bad.pth").write_bytes(b"nope")
    with pytest.raises(PackageError, match="not a readable PyTorch state dict"):
        read_state_dict(tmp_path / "bad.pth")


@pytest.mark.slow  # ResNet-50 models
def test_coco_faster_rcnn_loads_all_but_the_class_outputs(tmp_path):
    coco = torchvision.models.detection.fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None)
    name = TORCHVISION_COCO_WEIGHT_FILES[("FASTERRCNN", "RESNET50")]
    torch.save(coco.state_dict(), tmp_path / name)
    messages: list = []
    policy = WeightsPolicy(str(tmp_path), "fail")
    family = make_family("FASTERRCNN", "RESNET50", weights=policy, messages=messages)
    model = family.build()  # the ImageNet file is missing, but the COCO file covers RESNET50: no failure yet
    assert policy.pending is not None
    report = load_coco_weights(model, family, policy, lambda lvl, t: messages.append((lvl, t)))
    assert report is not None and policy.pending is None
    assert report.backbone_complete and report.loaded["rpn"] == report.total["rpn"]
    # the box predictor's class outputs (91 COCO classes) start fresh for our 2 classes + background
    assert sorted(k.rsplit(".", 2)[-2] for k in report.shape_mismatch) == [
        "bbox_pred",
        "bbox_pred",
        "cls_score",
        "cls_score",
    ]
    own = model.state_dict()
    assert torch.equal(own["net.rpn.head.cls_logits.weight"], coco.state_dict()["rpn.head.cls_logits.weight"])
    assert policy.outcome.startswith(f"loaded {name} (COCO: backbone 265/265")
    assert "re-initialised for 2 classes" in policy.outcome


def test_coco_file_for_another_model_type_fails_a_fail_policy(tmp_path):
    name = TORCHVISION_COCO_WEIGHT_FILES[("DEEPLAB", "RESNET50")]
    (tmp_path / name).write_bytes(b"unused")
    policy = WeightsPolicy(str(tmp_path), "fail")
    family = make_family("FEATURE_CLASSIFIER", "RESNET50", weights=policy)
    model = family.build()
    from gpjobs.training.pretrained import start_from_pretrained

    with pytest.raises(WeightsMissing, match="resnet50-0676ba61.pth not found.*gpjobs weights add"):
        start_from_pretrained(model, family, None, policy, lambda *_: None)


@pytest.mark.slow
def test_job_fine_tunes_an_arcgis_learn_classifier_package(tmp_path):
    from tests.builders.exports import write_labeled_tiles
    from tests.training.helpers import emd_of, make_spec, result_of, train

    folder = write_labeled_tiles(tmp_path, n=8, size=32)
    learner = nn.Sequential(create_body("resnet18"), create_head(1024, 2))
    package = esri_package(tmp_path / "esri_model", "FeatureClassifier", learner.state_dict())
    spec = make_spec(
        tmp_path / "a",
        [folder],
        "FEATURE_CLASSIFIER",
        backbone_model="RESNET18",
        max_epochs=1,
        pretrained_model=str(package / "esri.emd"),
    )
    code, reporter = train(spec)
    texts = [e["text"] for e in reporter.events if e["type"] == "message"]
    assert any(
        "Fine-tuning from esri (arcgis.learn FeatureClassifier, fastai create_body under '0.'): "
        "backbone 100/100, head 12/12 weight tensors loaded" in t
        for t in texts
    ), texts
    assert emd_of(result_of(reporter))["PretrainedWeights"].startswith("fine-tuned from esri (arcgis.learn")
    partial = esri_package(
        tmp_path / "partial",
        "FeatureClassifier",
        {k: v for k, v in learner.state_dict().items() if not k.startswith("0.7.")},
    )
    code, reporter = train(
        make_spec(
            tmp_path / "b",
            [folder],
            "FEATURE_CLASSIFIER",
            backbone_model="RESNET18",
            max_epochs=1,
            pretrained_model=str(partial / "esri.emd"),
        )
    )
    failed = [e for e in reporter.events if e["type"] == "failed"]
    assert int(code) == 2 and failed and "allow_partial_pretrained=true" in failed[0]["text"]
    assert not [e for e in reporter.events if e["type"] == "epoch"]  # stopped before any training


@pytest.mark.slow  # ResNet-50 models
def test_pspnet_pyramid_and_final_convs_from_arcgis_layout(tmp_path):
    body = create_body("resnet50")
    ppm = nn.ModuleList(
        nn.Sequential(nn.AdaptiveAvgPool2d(s), nn.Conv2d(2048, 512, 1, bias=False), nn.BatchNorm2d(512), nn.ReLU())
        for s in (1, 2, 3, 6)
    )
    final = nn.Sequential(
        nn.Conv2d(4096, 512, 3, padding=1, bias=False),
        nn.BatchNorm2d(512),
        nn.ReLU(),
        nn.Dropout(0.1),
        nn.Conv2d(512, 3, 1),
    )
    state = {
        **{f"backbone.{k}": v for k, v in body.state_dict().items()},
        **{f"ppm.features.{k}": v for k, v in randomize(ppm).state_dict().items()},
        **{f"final.{k}": v for k, v in randomize(final).state_dict().items()},
        "aux_logits.weight": torch.zeros(3, 1024, 1, 1),
        "aux_logits.bias": torch.zeros(3),
    }
    package = esri_package(tmp_path / "psp", "PSPNetClassifier", state, backbone="resnet50")
    family = make_family("PSPNET", "RESNET50", args={"use_unet": False})
    model = family.build()
    with open_package(package) as pkg:
        report = load_package_weights(model, family, pkg, lambda *_: None)
    assert report.backbone_complete and report.loaded["context"] == report.total["context"] == 4 * 5 + 5
    assert report.loaded["head"] == report.total["head"] == 2 and "aux" not in report.loaded
    own = model.state_dict()
    assert torch.equal(own["context.branches.3.1.weight"], state["ppm.features.3.1.weight"])
    assert torch.equal(own["head.1.weight"], state["final.4.weight"])


@pytest.mark.slow
def test_deeplab_job_starts_from_installed_coco_weights(tmp_path):
    from tests.builders.exports import write_classified_tiles
    from tests.training.helpers import emd_of, make_spec, result_of, train

    weights = tmp_path / "weights"
    weights.mkdir()
    coco = torchvision.models.segmentation.deeplabv3_resnet50(weights=None, weights_backbone=None, aux_loss=True)
    name = TORCHVISION_COCO_WEIGHT_FILES[("DEEPLAB", "RESNET50")]
    torch.save(coco.state_dict(), weights / name)
    folder = write_classified_tiles(tmp_path, n=8, size=32)
    spec = make_spec(
        tmp_path / "job",
        [folder],
        "DEEPLAB",
        backbone_model="RESNET50",
        max_epochs=1,
        weights_dir=str(weights),
        missing_weights="fail",
    )
    code, reporter = train(spec)
    outcome = emd_of(result_of(reporter))["PretrainedWeights"]
    # torchvision's 21-class outputs start fresh for NoData + 2 classes: 2 tensors in the head, 2 in the aux head
    assert outcome == (
        f"loaded {name} (COCO: backbone 265/265, aux 5/7, head 35/37 tensors; 4 class-dependent "
        "tensors re-initialised for 2 classes)"
    ), outcome
    texts = [e["text"] for e in reporter.events if e["type"] == "message"]
    assert any(t == f"Pretrained weights: {outcome}" for t in texts)
    assert any("RESNET50 dilated to output stride 16" in t for t in texts)
