"""Known-answer tests for the detection AP numbers (hand-computed on hand-made boxes)."""

from __future__ import annotations

import numpy as np
import pytest

from gpjobs.training.metrics_detection import (
    DetectionEvaluator,
    ap_101_points,
    ap_all_points,
    box_iou,
    mask_iou,
)


def _hand_made_evaluator(**kwargs) -> DetectionEvaluator:
    ev = DetectionEvaluator(3, **kwargs)
    # Image A, class 1: two truths; a perfect hit, a miss, and a hit at IoU 81/119 = 0.68.
    ev.add(
        {
            "boxes": [[0, 0, 10, 10], [50, 50, 60, 60], [21, 21, 31, 31], [70, 70, 80, 80]],
            "scores": [0.9, 0.8, 0.7, 0.6],
            "labels": [1, 1, 1, 3],
        },
        {"boxes": [[0, 0, 10, 10], [20, 20, 30, 30]], "labels": [1, 1]},
    )
    # Image B, class 2: one truth; a loose hit (IoU 1/3) then, below detect_thresh, an exact one.
    ev.add(
        {"boxes": [[5, 0, 15, 10], [0, 0, 10, 10]], "scores": [0.5, 0.1], "labels": [2, 2]},
        {"boxes": [[0, 0, 10, 10]], "labels": [2]},
    )
    return ev


def test_known_answer_esri_and_coco_numbers():
    result = _hand_made_evaluator().compute(["palm", "car", "boat"])
    esri = result["average_precision_score"]
    # class 1 at IoU 0.1: TP, FP, TP -> precision envelope 1 over recall .5, 2/3 over the next .5
    assert esri["palm"] == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)
    # class 2: only the 0.5-score box survives detect_thresh 0.2, and it overlaps enough at IoU 0.1
    assert esri["car"] == pytest.approx(1.0)
    # class 3 has no truth: reported as 0 (as arcgis does) but left out of every mean
    assert esri["boat"] == 0.0
    assert result["classes_evaluated"] == 2
    assert result["average_precision"] == pytest.approx((5 / 6 + 1.0) / 2)
    # COCO, 101 points. class 1 @0.50..0.65: 51 points at precision 1, 50 at 2/3;
    # @0.70..0.95 the 0.68 hit is a miss: 51 points at 1, the rest 0.
    c1_low = (51 + 50 * 2 / 3) / 101
    c1_high = 51 / 101
    # class 2: the loose box is a FP at every COCO threshold, the exact one a TP: precision .5 at recall 1.
    c2 = 0.5
    assert result["map_50"] == pytest.approx((c1_low + c2) / 2)
    assert result["map_50_95"] == pytest.approx(((4 * c1_low + 6 * c1_high) / 10 + c2) / 2)


def test_iou_threshold_is_configurable():
    # At IoU 0.5 the loose class-2 box no longer counts: Esri AP for it drops to 0.
    result = _hand_made_evaluator(iou_thresh=0.5).compute()
    assert result["average_precision_score"]["2"] == 0.0
    assert result["ap_iou_thresh"] == 0.5


def test_detect_thresh_filters_only_the_esri_ap():
    low = _hand_made_evaluator(detect_thresh=0.0).compute()
    # with the 0.1 box kept, class 2 at IoU .1 sees TP then FP (the truth is already taken): AP stays 1
    assert low["average_precision_score"]["2"] == pytest.approx(1.0)
    high = _hand_made_evaluator(detect_thresh=0.95).compute()
    assert high["average_precision"] == 0.0
    assert high["map_50"] == low["map_50"]


def test_duplicate_detections_count_once():
    ev = DetectionEvaluator(1, iou_thresh=0.5)
    ev.add(
        {"boxes": [[0, 0, 10, 10], [0, 0, 10, 10]], "scores": [0.9, 0.8], "labels": [1, 1]},
        {"boxes": [[0, 0, 10, 10]], "labels": [1]},
    )
    # TP then FP: precision 1 at recall 1 already -> AP 1, but a second truth missed would lower it
    assert ev.compute()["average_precision"] == pytest.approx(1.0)
    ev.add({"boxes": [], "scores": [], "labels": []}, {"boxes": [[5, 5, 9, 9]], "labels": [1]})
    assert ev.compute()["average_precision"] == pytest.approx(0.5)


def test_wrong_class_is_not_a_hit():
    ev = DetectionEvaluator(2)
    ev.add({"boxes": [[0, 0, 10, 10]], "scores": [0.9], "labels": [2]}, {"boxes": [[0, 0, 10, 10]], "labels": [1]})
    result = ev.compute()
    assert result["average_precision_score"] == {"1": 0.0, "2": 0.0}
    assert result["classes_evaluated"] == 1


def test_mask_ap_uses_mask_overlap():
    truth = np.zeros((1, 8, 8), np.uint8)
    truth[0, :4, :4] = 1
    half = np.zeros((1, 8, 8), np.uint8)
    half[0, :4, :2] = 1  # IoU 0.5 with the truth
    ev = DetectionEvaluator(1, iou_thresh=0.6, use_masks=True)
    ev.add(
        {"masks": half, "scores": [0.9], "labels": [1], "boxes": [[0, 0, 2, 4]]},
        {"masks": truth, "labels": [1], "boxes": [[0, 0, 4, 4]]},
    )
    result = ev.compute()
    assert result["average_precision"] == 0.0
    assert result["map_50"] == pytest.approx(1.0)
    assert result["map_50_95"] == pytest.approx(0.1)


def test_interpolation_rules_and_iou():
    precision = np.array([1.0, 0.5, 2 / 3])
    recall = np.array([0.5, 0.5, 1.0])
    assert ap_all_points(precision, recall) == pytest.approx(5 / 6)
    assert ap_101_points(precision, recall) == pytest.approx((51 + 50 * 2 / 3) / 101)
    assert box_iou([[0, 0, 10, 10]], [[20, 20, 30, 30], [5, 0, 15, 10]]).tolist() == [[0.0, pytest.approx(1 / 3)]]
    assert mask_iou(np.zeros((0, 4, 4)), np.ones((2, 4, 4))).shape == (0, 2)


def test_greedy_matching_skips_only_predictions_that_cannot_match():
    """The matcher skips rows below the threshold and stops once every truth is taken; it must flag exactly
    what the plain greedy loop flags (scores sorted, each prediction takes its best free truth), NaNs included."""
    from gpjobs.training.metrics_detection import _greedy_match

    def plain(iou, thresh):
        tp, taken = np.zeros(iou.shape[0], dtype=bool), np.zeros(iou.shape[1], dtype=bool)
        for p in range(iou.shape[0] if iou.shape[1] else 0):
            candidates = np.where(taken, -1.0, iou[p])
            g = int(np.argmax(candidates))
            if candidates[g] >= thresh:
                taken[g] = tp[p] = True
        return tp

    rng = np.random.default_rng(0)
    for _ in range(2000):
        iou = np.round(rng.random((int(rng.integers(0, 20)), int(rng.integers(0, 5)))) ** rng.uniform(0.3, 3), 1)
        iou[rng.random(iou.shape) < 0.05] = np.nan
        for thresh in (0.1, 0.5, 0.9):
            assert np.array_equal(_greedy_match(iou, thresh), plain(iou, thresh))


def test_bfloat16_predictions_are_scored_like_float32():
    # autocast on a GPU hands the evaluator bfloat16 tensors, which have no numpy dtype
    torch = pytest.importorskip("torch")
    pred = {"boxes": torch.tensor([[0.0, 0.0, 10.0, 10.0]]), "scores": torch.tensor([0.9]), "labels": torch.tensor([1])}
    truth = {"boxes": [[0, 0, 10, 10]], "labels": [1]}
    results = []
    for dtype in (torch.float32, torch.bfloat16):
        ev = DetectionEvaluator(1)
        ev.add({**pred, "boxes": pred["boxes"].to(dtype), "scores": pred["scores"].to(dtype)}, truth)
        results.append(ev.compute(["a"])["average_precision"])
    assert results[0] == results[1] == 1.0
