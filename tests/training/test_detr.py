"""DETREG: Deformable DETR pieces (Hungarian solver, matcher, deformable attention, proposals) and the model
type end to end on tiny PASCAL VOC exports.

The end-to-end tests use a small transformer (`hidden_dim` 64, 1-2 layers, 10 queries) so a CPU epoch takes
seconds; the defaults (256 wide, 6 + 6 layers, 100 queries) are the same code at a larger size.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gpjobs.tasks.params import ParameterError
from gpjobs.training.protocol import ExitCode
from tests.builders.exports import write_classified_tiles, write_kitti, write_pascal_voc
from tests.training.helpers import make_spec, train_and_package
from tests.training.lifecycle_checks import CARD, assert_predict_cli_reproduces_ap, assert_resume_matches_straight_run

torch.set_num_threads(1)
SMALL = {"hidden_dim": 64, "enc_layers": 1, "dec_layers": 2, "dim_feedforward": 128, "num_queries": 10}
TINY = {"hidden_dim": 32, "enc_layers": 1, "dec_layers": 1, "dim_feedforward": 64, "num_queries": 5}


def test_matcher_gives_each_target_the_query_that_fits_it_best():
    from gpjobs.training.models.detr_matcher import HungarianMatcher

    boxes = torch.tensor([[[0.2, 0.2, 0.1, 0.1], [0.7, 0.7, 0.3, 0.3], [0.5, 0.5, 0.9, 0.9]]])  # cx cy w h
    logits = torch.tensor([[[4.0, -4.0], [-4.0, 4.0], [0.0, 0.0]]])
    targets = [{"boxes": torch.tensor([[0.7, 0.7, 0.3, 0.3], [0.2, 0.2, 0.1, 0.1]]), "labels": torch.tensor([1, 0])}]
    ((queries, found),) = HungarianMatcher()(logits, boxes, targets)
    assert dict(zip(queries.tolist(), found.tolist())) == {0: 1, 1: 0}
    nothing = [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}]
    empty = HungarianMatcher()(logits, boxes, nothing)
    assert empty[0][0].numel() == 0


def test_deformable_attention_samples_where_the_offsets_point():
    from gpjobs.training.models.detr_attention import deformable_sample

    # one head, two levels (2x2 and 1x1), values = their index: sampling a pixel centre returns that pixel
    value = torch.tensor([0.0, 1.0, 2.0, 3.0, 7.0]).view(1, 5, 1, 1)
    shapes = [(2, 2), (1, 1)]
    locations = torch.tensor([0.75, 0.25]).view(1, 1, 1, 1, 1, 2).repeat(1, 1, 1, 2, 1, 1)  # x=0.75, y=0.25
    weights = torch.tensor([1.0, 0.0]).view(1, 1, 1, 2, 1)
    assert float(deformable_sample(value, shapes, locations, weights)) == pytest.approx(1.0)  # row 0, col 1
    # the centre of the 2x2 map interpolates its four pixels (1.5); the 1x1 map's pixel centre is 7
    locations = torch.full((1, 1, 1, 2, 1, 2), 0.5)
    weights = torch.tensor([0.5, 0.5]).view(1, 1, 1, 2, 1)
    assert float(deformable_sample(value, shapes, locations, weights)) == pytest.approx((1.5 + 7.0) / 2)


def test_region_proposals_find_a_bright_square():
    from torchvision.ops import box_iou

    from gpjobs.training.models.detr_pretrain import region_proposals

    image = torch.full((3, 64, 64), -1.0)
    image[:, 16:40, 24:56] = 2.0
    boxes = region_proposals(image, k=30)
    assert 1 <= len(boxes) <= 30 and (boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all()
    assert float(box_iou(boxes, torch.tensor([[24.0, 16.0, 56.0, 40.0]])).max()) > 0.7
    assert torch.equal(boxes, region_proposals(image, k=30))  # seeded


def test_the_packaged_network_gives_the_candidates_detect_keeps():
    """The package's traced network (torch only: the PRF host has no torchvision operators) gives the top-k
    candidates; the PRF's dense decoder keeps those over the score floor, which is what detect() returns."""
    from gpjobs.training.models.detr_model import DECODER_SPEC
    from tests.training.helpers import build_family

    torch.manual_seed(0)
    fam = build_family("DETREG", chip_size=(32, 32), export_format="PASCAL_VOC_rectangles", arguments=SMALL)
    net = fam.build().eval()
    network = fam.deployable(net).eval()
    with torch.no_grad():
        traced = fam.trace(network)
        images = torch.rand(3, 3, 32, 32)
        boxes, scores, labels = traced(images)
        expected = net.detect(images)
    assert "torchvision::" not in str(traced.inlined_graph)
    assert fam.inference_spec(network) == {"output": "boxes", "index_values": [1, 2], **DECODER_SPEC}
    assert boxes.shape == (3, 20, 4) and scores.shape == labels.shape == (3, 20)  # 10 queries x 2 classes
    for b, want in enumerate(expected):
        keep = scores[b] >= DECODER_SPEC["score_thresh"]
        torch.testing.assert_close(boxes[b][keep], want["boxes"], atol=1e-4, rtol=0)
        assert torch.equal(labels[b][keep] + 1, want["labels"])


@pytest.mark.slow
def test_detreg_trains_packages_and_predict_reproduces_ap(tmp_path):
    folder = write_pascal_voc(tmp_path, n=16, size=32)
    run = train_and_package(
        tmp_path,
        folder,
        "DETREG",
        backbone_model="RESNET18",
        max_epochs=4,
        learning_rate=2e-3,
        freeze_model=False,
        stop_training=False,
        arguments=SMALL,
    )
    epochs = run.epochs
    assert epochs[-1]["valid_loss"] < epochs[0]["valid_loss"], [e["valid_loss"] for e in epochs]
    for epoch in epochs:
        assert all(0.0 <= epoch["metrics"][k] <= 1.0 for k in ("average_precision", "map_50", "map_50_95"))
    assert {"model.emd", "model.pth", "model.pt", "GpjobsObjectDetector.py"} | CARD <= run.members
    emd = run.emd
    assert emd["ModelName"] == "DETReg" and emd["ModelType"] == "ObjectDetection"
    assert emd["ModelConfiguration"] == "_model_extension_inferencing" and emd["DatasetType"] == "PASCAL_VOC_rectangles"
    assert emd["InferenceFunction"] == "GpjobsObjectDetector.py" and emd["GpjobsInference"]["output"] == "boxes"
    assert set(emd["average_precision_score"]) == {"a", "b"} and "score >= 0.2" in emd["MetricsNote"]
    params = emd["ModelParameters"]
    assert params["num_queries"] == 10 and params["aux_loss"] is True and params["pretrain_epochs"] == 0
    assert run.metrics["average_precision"] > 0.0  # it found the squares
    assert_predict_cli_reproduces_ap(run)


@pytest.mark.slow
def test_detreg_resumes_after_an_interrupt_with_the_same_numbers(tmp_path):
    folder = write_kitti(tmp_path, n=8, size=32)
    assert_resume_matches_straight_run(
        tmp_path,
        folder,
        "DETREG",
        backbone_model="RESNET18",
        max_epochs=2,
        batch_size=2,
        learning_rate=1e-3,
        freeze_model=False,
        stop_training=False,
        arguments=TINY,
    )


@pytest.mark.slow  # pretrains and trains
def test_detreg_pretraining_runs_first_when_asked_and_is_recorded(tmp_path):
    folder = write_pascal_voc(tmp_path, n=8, size=32)
    run = train_and_package(
        tmp_path,
        folder,
        "DETREG",
        backbone_model="RESNET18",
        max_epochs=1,
        batch_size=2,
        learning_rate=1e-3,
        arguments={**TINY, "pretrain_epochs": 2, "pretrain_proposals": 10},
    )
    first_epoch = next(i for i, e in enumerate(run.events) if e["type"] == "epoch")
    pre = [i for i, e in enumerate(run.events) if "DETReg pre-training epoch" in e.get("text", "")]
    assert len(pre) == 2 and pre[-1] < first_epoch  # before the supervised training
    assert any("class head starts fresh" in t for t in run.messages)
    emd = run.emd
    assert emd["DETRegPretraining"]["epochs"] == 2 and all(np.isfinite(emd["DETRegPretraining"]["loss"]))
    assert emd["ModelParameters"]["pretrain_epochs"] == 2


def test_detreg_refuses_pixel_classification_data_at_submit(tmp_path):
    folder = write_classified_tiles(tmp_path, n=4, size=32)
    with pytest.raises(ParameterError) as err:
        make_spec(tmp_path, [folder], "DETREG")
    assert "Classified_Tiles cannot train model_type DETREG" in str(err.value)
    assert "PASCAL_VOC_rectangles" in str(err.value)


def test_detreg_refuses_an_impossible_transformer_with_a_fix_it_error(tmp_path):
    folder = write_pascal_voc(tmp_path, n=4, size=32)
    run = train_and_package(
        tmp_path, folder, "DETREG", max_epochs=1, arguments={"hidden_dim": 60}, expect=ExitCode.BAD_INPUT
    )
    assert "hidden_dim must be a multiple of 8" in run.failure and "56 or 64" in run.failure
    with pytest.raises(ParameterError, match="num_queries"):  # out of its range: refused when the job is submitted
        make_spec(tmp_path, [folder], "DETREG", arguments={"num_queries": 0})


def test_detreg_accepts_resnets_only():
    from gpjobs.catalog import ArgumentError, lookup_model_type, resolve_backbone

    info = lookup_model_type("DETREG")
    assert resolve_backbone(info, None) == "RESNET50"
    with pytest.raises(ArgumentError, match="RESNET18"):
        resolve_backbone(info, "VGG16")


@pytest.mark.slow
@pytest.mark.heavy  # ~2-4 min of CPU; from random ResNet-18 weights DETR needs a few hundred steps
@pytest.mark.timeout(900)
def test_detreg_reaches_a_meaningful_esri_ap(tmp_path):
    folder = write_pascal_voc(tmp_path, n=32, size=64)
    run = train_and_package(
        tmp_path,
        folder,
        "DETREG",
        backbone_model="RESNET18",
        max_epochs=12,
        learning_rate=1e-3,
        freeze_model=False,
        stop_training=False,
        arguments={"hidden_dim": 64, "enc_layers": 2, "dec_layers": 2, "dim_feedforward": 128, "num_queries": 20},
    )
    trace = [(e["epoch"], round(e["valid_loss"], 3), round(e["metrics"]["average_precision"], 3)) for e in run.epochs]
    assert run.metrics["average_precision"] >= 0.3, trace
