"""Panoptic targets, MaX-DeepLab's losses and panoptic quality (PQ, SQ, RQ).

Segments of a chip: every instance mask (labels2/) is one "thing" segment; every other class present in
the semantic raster (labels/), background included, is one "stuff" segment over its pixels not covered
by an instance. Pixels of a thing class that no instance covers are void (ignored).

Losses (MaX-DeepLab, models.md §1B): slots are matched one-to-one to segments by the Hungarian method on
the similarity p_i(c_k) x Dice(m_k, m_i); the PQ-style loss is 0.75 x mean over matched pairs of
-(p x Dice) with p and Dice each weighted by the other (held constant), plus 0.25 x mean over unmatched
slots of -log p(no object) (at best -1 per matched segment, so the total loss goes below zero as the model
learns, as the paper's does); mask-ID: cross-entropy of each pixel's slot softmax against its segment's
slot; instance discrimination: pixel embeddings against their segments' mean embeddings (cosine,
temperature 0.3); semantic: cross-entropy. Total = 3 PQ + 1 instance + 0.3 mask-ID + 1 semantic.

PQ (Kirillov et al. 2019) per class over the validation set: a predicted and a true segment of the
class match when their IoU (void pixels left out of the union) exceeds 0.5; PQ = sum IoU / (TP + FP/2 +
FN/2), SQ = sum IoU / TP, RQ = TP / (TP + FP/2 + FN/2); predicted segments mostly (> 50%) on void pixels
are no false positives. Averages over the data's classes that occur (background, index 0, is learned
but not scored).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from gpjobs.training.models.matching import linear_sum_assignment

WEIGHTS = {"pq": 3.0, "instance": 1.0, "mask_id": 0.3, "semantic": 1.0}
POSITIVE_SHARE = 0.75
TEMPERATURE = 0.3


def segments(target: dict[str, torch.Tensor], is_thing: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(segment id map (H, W), -1 = void; class index per segment (M,)) of one chip's target."""
    semantic = target["semantic"]
    ids = torch.full_like(semantic, -1)
    classes: list[int] = []
    covered = torch.zeros_like(semantic, dtype=torch.bool)
    for mask, label in zip(target["masks"], target["labels"].tolist()):
        region = mask.bool() & ~covered
        if region.any():
            ids[region] = len(classes)
            classes.append(int(label))
            covered |= region
    for c in torch.unique(semantic).tolist():
        if bool(is_thing[c]):
            continue
        region = (semantic == c) & ~covered
        if region.any():
            ids[region] = len(classes)
            classes.append(int(c))
    return ids, torch.tensor(classes, dtype=torch.long, device=semantic.device)


def _downsample(ids: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    return F.interpolate(ids[None, None].float(), size=tuple(size), mode="nearest")[0, 0].long()


def panoptic_loss(
    out: dict[str, torch.Tensor],
    targets: Sequence[dict[str, torch.Tensor]],
    is_thing: torch.Tensor,
    chip_segments: Sequence[tuple[torch.Tensor, torch.Tensor]] | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """MaX-DeepLab's total loss over a batch and its parts (detached tensors, for logging: turning them into
    floats here would wait for the device at every step); `chip_segments`: each target's `segments` when the
    caller has them already (validation scores PQ against them too)."""
    size = out["masks"].shape[-2:]
    totals = {k: out["masks"].new_zeros(()) for k in WEIGHTS}
    for b, target in enumerate(targets):
        ids, classes = chip_segments[b] if chip_segments is not None else segments(target, is_thing)
        ids = _downsample(ids, size).flatten()
        present = torch.unique(ids[ids >= 0])
        remap = torch.full((len(classes) + 1,), -1, dtype=torch.long, device=ids.device)
        remap[present] = torch.arange(len(present), device=ids.device)
        ids = torch.where(ids >= 0, remap[ids.clamp_min(0)], ids)
        classes = classes[present]
        logits = out["masks"][b].float().flatten(1)  # (N, P)
        class_logp = torch.log_softmax(out["classes"][b].float(), -1)  # (N, K+1)
        semantic = _downsample(target["semantic"], size)
        totals["semantic"] = totals["semantic"] + F.cross_entropy(out["semantic"][b : b + 1].float(), semantic[None])
        n, m = logits.shape[0], len(classes)
        if m == 0:
            totals["pq"] = totals["pq"] - class_logp[:, -1].mean() * (1 - POSITIVE_SHARE)
            continue
        truth = F.one_hot(ids.clamp_min(0), m).T.float() * (ids >= 0).float()  # (M, P)
        probs = torch.softmax(logits, 0)
        dice = 2 * probs @ truth.T / (probs.sum(1)[:, None] + truth.sum(1)[None] + 1e-6)  # (N, M)
        p_class = class_logp[:, classes].exp()  # (N, M)
        similarity = (p_class * dice).detach().cpu().numpy()
        # every segment gets a slot (the best n segments when there are more segments than slots)
        slots, segs = linear_sum_assignment(-similarity)  # similarity is (N slots, M segments)
        seg, slot = torch.as_tensor(segs, device=ids.device), torch.as_tensor(slots, device=ids.device)
        d, logp = dice[slot, seg], class_logp[slot, classes[seg]]
        positive = -(logp.exp().detach() * d + d.detach() * logp).mean()
        unmatched = torch.ones(n, dtype=torch.bool, device=ids.device)
        unmatched[slot] = False
        negative = -class_logp[unmatched, -1].mean() if unmatched.any() else logits.new_zeros(())
        totals["pq"] = totals["pq"] + POSITIVE_SHARE * positive + (1 - POSITIVE_SHARE) * negative
        slot_of = torch.full((m,), -1, dtype=torch.long, device=ids.device)
        slot_of[seg] = slot
        target_slot = torch.where(ids >= 0, slot_of[ids.clamp_min(0)], torch.full_like(ids, -1))
        totals["mask_id"] = totals["mask_id"] + F.cross_entropy(logits.T, target_slot, ignore_index=-1)
        emb = F.normalize(out["instance"][b].float().flatten(1), dim=0)  # (D, P)
        centers = F.normalize(emb @ truth.T, dim=0)  # (D, M)
        labelled = ids >= 0
        totals["instance"] = totals["instance"] + F.cross_entropy(
            (centers.T @ emb[:, labelled]).T / TEMPERATURE, ids[labelled]
        )
    count = max(len(targets), 1)
    parts = {k: v / count for k, v in totals.items()}
    return sum(WEIGHTS[k] * v for k, v in parts.items()), {k: v.detach() for k, v in parts.items()}


class PanopticQuality:
    """Accumulates TP / FP / FN / IoU per class over chips; `result()` gives PQ, SQ, RQ and per-class values."""

    def __init__(self, names: Sequence[str]) -> None:
        self.names = list(names)  # index 0 = background (not scored)
        k = len(self.names)
        self.tp, self.fp, self.fn, self.iou = np.zeros(k), np.zeros(k), np.zeros(k), np.zeros(k)

    def update(
        self,
        pred_class: torch.Tensor,
        pred_instance: torch.Tensor,
        truth_ids: torch.Tensor,
        truth_classes: torch.Tensor,
    ) -> None:
        """One chip: predicted class and instance maps (H, W), true segment ids (-1 void) and their classes."""
        key = (pred_class.long() * (int(pred_instance.max()) + 1) + pred_instance.long()).flatten()
        pred_keys, pred_ids = torch.unique(key, return_inverse=True)
        pred_cls = (pred_keys // (int(pred_instance.max()) + 1)).cpu().numpy()
        m = len(truth_classes)
        joint = (
            torch.bincount(pred_ids * (m + 1) + (truth_ids.flatten().long() + 1), minlength=len(pred_keys) * (m + 1))
            .view(len(pred_keys), m + 1)
            .cpu()
            .numpy()
        )
        void, inter = joint[:, 0], joint[:, 1:]
        pred_area, true_area = joint.sum(1), inter.sum(0)
        true_cls = truth_classes.cpu().numpy()
        matched_pred = np.zeros(len(pred_keys), dtype=bool)
        matched_true = np.zeros(m, dtype=bool)
        for p, g in zip(*np.nonzero(inter)):
            if pred_cls[p] != true_cls[g]:
                continue
            union = pred_area[p] + true_area[g] - inter[p, g] - void[p]
            iou = inter[p, g] / union if union > 0 else 0.0
            if iou > 0.5:
                matched_pred[p] = matched_true[g] = True
                self.tp[true_cls[g]] += 1
                self.iou[true_cls[g]] += iou
        for g in np.flatnonzero(~matched_true):
            self.fn[true_cls[g]] += 1
        for p in np.flatnonzero(~matched_pred):
            if void[p] <= 0.5 * pred_area[p]:
                self.fp[pred_cls[p]] += 1

    def result(self) -> dict[str, Any]:
        per_class, pqs, sqs, rqs = {}, [], [], []
        for c in range(1, len(self.names)):
            tp, fp, fn = self.tp[c], self.fp[c], self.fn[c]
            if tp + fp + fn == 0:
                continue
            rq = tp / (tp + fp / 2 + fn / 2)
            sq = self.iou[c] / tp if tp else 0.0
            per_class[self.names[c]] = {
                "pq": round(float(sq * rq), 10),
                "sq": round(float(sq), 10),
                "rq": round(float(rq), 10),
            }
            pqs.append(sq * rq), sqs.append(sq), rqs.append(rq)
        return {"PQ": _mean(pqs), "SQ": _mean(sqs), "RQ": _mean(rqs), "per_class_metrics": per_class}


def _mean(values: list[float]) -> float:
    return float(np.mean(values)) if values else 0.0
