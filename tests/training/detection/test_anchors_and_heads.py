"""Anchors (SSD grids/zooms/ratios, k-means), Darknet-53 taps, and the SSD / YOLOv3 heads and losses."""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import pytest
import torch
from torch import nn

from gpjobs.training.models.detection.anchors import (
    auto_ssd_grids,
    boxes_wh,
    kmeans_wh,
    ssd_anchors,
    yolo_anchors,
)
from gpjobs.training.models.detection.darknet import darknet53_features
from gpjobs.training.models.detection.ssd_net import SSDNet, match_anchors, ssd_loss
from gpjobs.training.models.detection.yolo_net import (
    NMS_OVERLAP,
    DecoupledOutput,
    YOLOv3Net,
    assign_targets,
    check_chip_multiple,
    decode_boxes,
    resized_side,
    vote_boxes,
    yolo_detect,
    yolo_loss,
)


def test_ssd_anchors_follow_grid_zoom_ratio_order():
    a = ssd_anchors([2], [1.0], [[1.0, 1.0]])
    assert a.tolist() == [
        [0.25, 0.25, 0.5, 0.5],
        [0.75, 0.25, 0.5, 0.5],
        [0.25, 0.75, 0.5, 0.5],
        [0.75, 0.75, 0.5, 0.5],
    ]
    b = ssd_anchors([4, 1], [1.0, 0.5], [[1.0, 1.0], [2.0, 1.0]])
    assert b.shape == (4 * 4 * 4 + 1 * 4, 4)
    # first cell of the 4x4 grid: zoom 1 square, zoom 1 wide, zoom .5 square, zoom .5 wide
    assert b[:4, 2:].tolist() == [[0.25, 0.25], [0.5, 0.25], [0.125, 0.125], [0.25, 0.125]]
    assert b[-1].tolist() == [0.5, 0.5, 1.0, 0.5]


def test_auto_grids_follow_box_sizes():
    assert auto_ssd_grids(np.full((20, 2), 16.0), 64) == [4]
    two_sizes = np.concatenate([np.full((20, 2), 8.0), np.full((20, 2), 32.0)])
    assert auto_ssd_grids(two_sizes, 64) == [2, 8]
    assert auto_ssd_grids(np.zeros((0, 2)), 64) == [4]


def test_kmeans_anchors_recover_clusters_smallest_first():
    rng = np.random.default_rng(1)
    sizes = [(6, 6), (12, 24), (40, 20)]
    wh = np.concatenate([np.array(s) * rng.uniform(0.95, 1.05, (30, 2)) for s in sizes])
    centroids, fit = kmeans_wh(wh, 3)
    assert fit > 0.85
    np.testing.assert_allclose(centroids, sizes, rtol=0.08)
    anchors = yolo_anchors(wh)
    assert len(anchors) == 9
    areas = [w * h for w, h in anchors]
    assert areas == sorted(areas)
    assert len(yolo_anchors(np.zeros((0, 2)), fallback_chip=208)) == 9


def test_boxes_wh_reads_targets():
    wh = boxes_wh([{"boxes": torch.tensor([[0.0, 0.0, 4.0, 2.0]])}, {"boxes": torch.zeros(0, 4)}])
    assert wh.tolist() == [[4.0, 2.0]]


def test_darknet53_taps_any_band_count():
    net = darknet53_features(6)
    feats = net(torch.zeros(1, 6, 64, 64))
    assert [tuple(f.shape[1:]) for f in feats.values()] == [
        (64, 32, 32),
        (128, 16, 16),
        (256, 8, 8),
        (512, 4, 4),
        (1024, 2, 2),
    ]
    assert net.out_channels == [64, 128, 256, 512, 1024] and net.strides == [2, 4, 8, 16, 32]
    assert net.first_conv().in_channels == 6


@pytest.mark.slow  # builds, saves and reloads Darknet-53 three times
def test_darknet53_loads_local_weights_for_any_band_count(tmp_path):
    from gpjobs.training.weights import WeightsPolicy

    saved = darknet53_features(3)
    torch.save(saved.state_dict(), tmp_path / "darknet53.pth")
    policy = WeightsPolicy(str(tmp_path), "fail")
    net = darknet53_features(4, weights=policy)
    assert policy.outcome == "loaded darknet53.pth"
    assert net.first_conv().in_channels == 4 and net.first_conv_adapted
    deep = "stages.stage5.1.expand.conv.weight"
    assert torch.equal(net.state_dict()[deep], saved.state_dict()[deep])


def test_yolo_chip_must_be_multiple_of_32():
    check_chip_multiple(64)
    with pytest.raises(ValueError, match="multiple of 32.*32 or 64"):
        check_chip_multiple(48)


class TinyBackbone(nn.Module):
    """Five stride-2 taps, like the backbone factory's feature backbones, but cheap."""

    def __init__(self, bands: int = 3) -> None:
        super().__init__()
        chans = [bands, 8, 16, 32, 32, 32]
        self.layers = nn.ModuleList(
            nn.Sequential(nn.Conv2d(chans[i], chans[i + 1], 3, 2, 1), nn.BatchNorm2d(chans[i + 1]), nn.ReLU())
            for i in range(5)
        )
        self.out_channels = chans[1:]
        self.strides = [2, 4, 8, 16, 32]

    def forward(self, x):
        out = OrderedDict()
        for i, layer in enumerate(self.layers):
            x = layer(x)
            out[f"f{i}"] = x
        return out


def _squares(n: int = 4, size: int = 64):
    images = torch.zeros(n, 3, size, size)
    targets = []
    for i in range(n):
        x0 = 4 + 8 * i
        images[i, i % 2, 10:26, x0 : x0 + 16] = 1.0
        targets.append({"boxes": torch.tensor([[x0, 10.0, x0 + 16, 26.0]]), "labels": torch.tensor([1 + i % 2])})
    return images, targets


def _overfit(model, loss_fn, steps: int = 25):
    torch.manual_seed(0)
    images, targets = _squares()
    opt = torch.optim.AdamW(model.parameters(), 3e-3)
    losses = []
    for _ in range(steps):
        model.train()
        loss = loss_fn(model(images), targets)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return losses, images, targets


def test_ssd_head_shapes_matching_and_learning():
    torch.manual_seed(0)
    model = SSDNet(TinyBackbone(), 2, 64, [4, 2], [1.0], [[1.0, 1.0], [1.0, 0.5]])
    offsets, logits = model(torch.zeros(2, 3, 64, 64))
    assert offsets.shape == (2, (16 + 4) * 2, 4) and logits.shape == (2, 40, 2)
    # a truth that overlaps no anchor by > 0.4 still gets its best anchor
    match = match_anchors(torch.tensor([[0.0, 0.0, 0.05, 0.05]]), model.anchors)
    assert int((match >= 0).sum()) == 1
    losses, images, targets = _overfit(
        model, lambda out, t: ssd_loss(out, t, model.anchors, model.cell_sizes, (64, 64))
    )
    assert losses[-1] < 0.5 * losses[0]
    model.eval()
    with torch.no_grad():
        found = model.detect(images)
        boxes, scores, labels = model(images)  # eval forward: the TorchScript interface
    assert len(boxes) == len(scores) == len(labels) == sum(len(d["boxes"]) for d in found)
    assert all(set(d) == {"boxes", "scores", "labels"} for d in found)
    assert all(int(lbl) in (1, 2) for d in found for lbl in d["labels"])


def test_yolo_head_shapes_and_learning():
    torch.manual_seed(0)
    anchors = yolo_anchors(np.full((9, 2), 16.0) * np.linspace(0.5, 2, 9)[:, None])
    # width 64: the decoupled branches of the stride-8 level are then 16 channels wide (8 at width 32 halved the
    # loss in 40 steps, not 25)
    model = YOLOv3Net(TinyBackbone(), 2, anchors, width=64)
    assert isinstance(model.out3, DecoupledOutput)
    outs = model(torch.zeros(2, 3, 64, 64))
    assert [tuple(o.shape) for o in outs] == [(2, 3, 7, 8, 8), (2, 3, 7, 4, 4), (2, 3, 7, 2, 2)]
    losses, images, targets = _overfit(model, lambda out, t: yolo_loss(out, t, model.anchors, model.strides))
    assert losses[-1] < 0.5 * losses[0]
    model.eval()
    with torch.no_grad():
        found = model.detect(images)
    assert len(found) == 4 and all(d["boxes"].shape[-1] == 4 for d in found)


def test_yolo_resizes_chips_inside_the_network_and_keeps_boxes_in_chip_pixels():
    assert [resized_side(c) for c in (32, 64, 160, 224, 416)] == [64, 96, 256, 352, 640]  # ~1.5x, multiples of 32
    torch.manual_seed(0)
    anchors = yolo_anchors(np.full((9, 2), 16.0) * np.linspace(0.5, 2, 9)[:, None])
    model = YOLOv3Net(TinyBackbone(), 2, anchors, width=32, input_scale=1.5)
    assert model.strides == pytest.approx((8 / 1.5, 16 / 1.5, 32 / 1.5))
    raw = model.raw(torch.zeros(2, 3, 64, 64))  # 64 px chips run at 96 px: maps of 12, 6 and 3 cells
    assert [tuple(o.shape[-2:]) for o in raw] == [(12, 12), (6, 6), (3, 3)]
    losses, images, targets = _overfit(model, lambda out, t: yolo_loss(out, t, model.anchors, model.strides))
    assert losses[-1] < 0.5 * losses[0]
    model.eval()
    with torch.no_grad():
        boxes = decode_boxes(model.raw(images)[0], model.anchors[:3], model.strides[0])
    centres = (boxes[..., :2] + boxes[..., 2:]) / 2  # cell centres span the chip, not the resized input
    assert float(centres.min()) > -8 and float(centres.max()) < 72
    # the scale travels in the state dict; a state dict from before the resize loads as "run chips as they are"
    fresh = YOLOv3Net(TinyBackbone(), 2, anchors, width=32)
    fresh.load_state_dict(model.state_dict())
    assert fresh.scale == 1.5 and fresh.strides == model.strides
    old = {k: v for k, v in model.state_dict().items() if k != "input_scale"}
    fresh.load_state_dict(old)
    assert fresh.scale == 1.0 and fresh.strides == (8, 16, 32)


def test_yolo_packages_with_the_coupled_head_load_and_predict_as_they_were_trained():
    # YOLOv3's own output (one branch for boxes, objectness and classes) was the head before the decoupled one:
    # a state dict holding it rebuilds that head and gives the same outputs
    torch.manual_seed(0)
    anchors = yolo_anchors(np.full((9, 2), 16.0) * np.linspace(0.5, 2, 9)[:, None])
    old = YOLOv3Net(TinyBackbone(), 2, anchors, width=32, decoupled=False).eval()
    assert not isinstance(old.out3, DecoupledOutput)
    fresh = YOLOv3Net(TinyBackbone(), 2, anchors, width=32).eval()
    assert isinstance(fresh.out3, DecoupledOutput)
    fresh.load_state_dict(old.state_dict())
    assert not any(isinstance(m, DecoupledOutput) for m in fresh.modules())
    images = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        for a, b in zip(old.raw(images), fresh.raw(images)):
            assert torch.equal(a, b)
    # and a decoupled state dict into a decoupled network stays decoupled, in the same layout
    again = YOLOv3Net(TinyBackbone(), 2, anchors, width=32)
    again.load_state_dict(YOLOv3Net(TinyBackbone(), 2, anchors, width=32).state_dict())
    assert isinstance(again.out5, DecoupledOutput)
    assert [tuple(o.shape) for o in again.raw(images)] == [(2, 3, 7, 8, 8), (2, 3, 7, 4, 4), (2, 3, 7, 2, 2)]


def test_yolo_outputs_float32_under_bfloat16_autocast():
    # the GPU default: decoding and the loss must not run in bfloat16 (off by pixels; no numpy dtype either)
    torch.manual_seed(0)
    anchors = yolo_anchors(np.full((9, 2), 16.0) * np.linspace(0.5, 2, 9)[:, None])
    model = YOLOv3Net(TinyBackbone(), 2, anchors, width=32).eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        raw = model.raw(torch.rand(1, 3, 64, 64))
        found = model.detect(torch.rand(1, 3, 64, 64))
    assert {o.dtype for o in raw} == {torch.float32}
    assert found[0]["boxes"].dtype == found[0]["scores"].dtype == torch.float32


def test_yolo_truth_goes_to_every_fitting_anchor_in_its_cell_and_two_nearest_neighbours():
    # one 12x10 px box centred at (21, 13) px on a stride-8 grid of 4x4 cells: centre cell (x 2, y 1), in its right
    # and lower half (fractions 0.625 -> the right and lower neighbours); anchors 10x10 and 30x30 fit (< 4x), 50x8
    # does not (50/12 > 4)
    gt = torch.tensor([[0.0, 0.0, 15.0, 8.0, 27.0, 18.0]])
    truth, anchor, cy, cx = assign_targets(gt, torch.tensor([[10.0, 10.0], [30.0, 30.0], [50.0, 8.0]]), 8, 4, 4)
    cells = sorted(zip(anchor.tolist(), cy.tolist(), cx.tolist()))
    assert cells == [(0, 1, 2), (0, 1, 3), (0, 2, 2), (1, 1, 2), (1, 1, 3), (1, 2, 2)]
    assert truth.tolist() == [0] * 6


def test_yolo_drops_boxes_that_overlap_a_better_one_by_more_than_arcgis_nms_overlap():
    # two confident 16 px boxes of one class in neighbouring stride-8 cells overlap by IoU 1/3: arcgis' tools
    # keep one (nms_overlap 0.1); a third, apart from both, stays
    raw = [torch.full((1, 3, 6, n, n), -20.0) for n in (4, 2, 1)]
    raw[0][0, 0, :4] = 0.0  # centre mid-cell, size 1x the anchor
    for y, x, score in ((0, 0, 3.0), (0, 1, 2.0), (3, 3, 1.0)):
        raw[0][0, 0, 4:, y, x] = score
    anchors = torch.full((9, 2), 16.0)
    found = yolo_detect(tuple(raw), anchors, (8, 16, 32))[0]
    assert NMS_OVERLAP == 0.1
    assert found["boxes"].tolist() == [[-4.0, -4.0, 12.0, 12.0], [20.0, 20.0, 36.0, 36.0]]
    assert len(yolo_detect(tuple(raw), anchors, (8, 16, 32), nms_thresh=0.45)[0]["boxes"]) == 3


def test_yolo_votes_each_kept_box_from_the_candidates_of_its_class_that_overlap_it_by_more_than_a_half():
    from gpjobs.training.inference import gpjobs_prf_core as prf_core  # the file the packages ship

    boxes = torch.tensor(
        [
            [0.0, 0.0, 10.0, 10.0],  # kept
            [1.0, 1.0, 11.0, 11.0],  # IoU 0.68 with it, same class: suppressed, votes
            [0.0, 0.0, 10.0, 10.0],  # the other class: kept, votes for nothing else
            [5.0, 5.0, 15.0, 15.0],  # IoU 0.14: suppressed by the NMS, too far to vote
            [20.0, 20.0, 30.0, 30.0],  # apart: kept as it is
        ]
    )
    scores = torch.tensor([0.9, 0.3, 0.5, 0.8, 0.2])
    labels = torch.tensor([0, 0, 1, 0, 0])
    kept = torch.tensor([0, 2, 4])
    expected = [[0.25, 0.25, 10.25, 10.25], [0.0, 0.0, 10.0, 10.0], [20.0, 20.0, 30.0, 30.0]]
    torch.testing.assert_close(vote_boxes(boxes, scores, labels, kept, 0.5), torch.tensor(expected))
    torch.testing.assert_close(prf_core.vote_boxes(boxes, scores, labels, kept, 0.5), torch.tensor(expected))
    assert prf_core.vote_boxes(boxes, scores, labels, kept[:0], 0.5).shape == (0, 4)


def test_yolo_decoding_is_bounded_around_its_cell_and_anchor():
    raw = torch.full((1, 3, 6, 2, 2), -50.0)  # every sigmoid at 0
    low = decode_boxes(raw, torch.tensor([[8.0, 8.0]] * 3), 8)
    raw.fill_(50.0)  # every sigmoid at 1
    high = decode_boxes(raw, torch.tensor([[8.0, 8.0]] * 3), 8)
    # centre of cell (0, 0) within -0.5..1.5 cells; size within 0..4x the anchor
    assert low[0, 0, 0, 0].tolist() == pytest.approx([-4.0, -4.0, -4.0, -4.0])
    assert high[0, 0, 0, 0].tolist() == pytest.approx([-4.0, -4.0, 28.0, 28.0])


def test_ssd_state_dict_rebuilds_the_head_it_belongs_to():
    trained = SSDNet(TinyBackbone(), 2, 64, [4, 2], [1.0, 0.5], [[1.0, 1.0]])
    fresh = SSDNet(TinyBackbone(), 2, 64, [4], [1.0], [[1.0, 1.0]])
    fresh.load_state_dict(trained.state_dict())
    assert fresh.grids == [4, 2] and fresh.k == 2
    assert torch.equal(fresh.anchors, trained.anchors)
    assert fresh.raw(torch.zeros(1, 3, 64, 64))[0].shape == (1, (16 + 4) * 2, 4)


def test_fpn_anchor_sizes_follow_the_chip_but_span_at_least_four_strides():
    from gpjobs.training.models.detection.fpn_adapter import level_anchor_sizes

    # 32 px chip -> 48 px input: the chip-relative sizes (3, 6, 12, 24, 48) are raised to 4 strides
    assert level_anchor_sizes(48, [4, 8, 16, 32, 64]) == ((16.0,), (32.0,), (64.0,), (128.0,), (256.0,))
    # 448 px chip -> 672 px input: the deepest level spans the chip, each finer one halves it
    assert level_anchor_sizes(672, [4, 8, 16, 32, 64]) == ((42.0,), (84.0,), (168.0,), (336.0,), (672.0,))
    # RetinaNet's scales multiply each level's size
    assert level_anchor_sizes(96, [8, 16, 32, 64, 128], (1.0, 0.5))[0] == (32.0, 16.0)
