"""What our own one-stage dense detectors (ATSS, VFNet) share: the P3-P7 pyramid, one square anchor per
feature cell, ATSS's adaptive training-sample selection, and per-level top-k + NMS post-processing.

A subclass gives `head` (feature maps -> per-cell outputs), `loss(outputs, anchors, assignment, targets)` and
`scores_and_boxes(outputs, anchors)`; this class does the rest of the detection interface (common.py).
"""

from __future__ import annotations

import abc
from typing import Any

import torch
from torch import nn
from torchvision.ops import batched_nms, box_iou

from gpjobs.training.models.detection.fpn_adapter import FeaturePyramid, group_norm

SCORE_THRESH = 0.05  # mmdetection's test config for ATSS and VFNet
NMS_THRESH = 0.6
TOP_K = 1000  # candidates per level before NMS
MAX_DETECTIONS = 100
PRIOR = 0.01  # initial foreground probability of the class logits (focal-loss detectors)


def tower(channels: int, convs: int) -> nn.Sequential:
    """`convs` x (3x3 conv, GroupNorm, ReLU), as the heads of FCOS / ATSS / VFNet."""
    layers: list[nn.Module] = []
    for _ in range(convs):
        layers += [nn.Conv2d(channels, channels, 3, padding=1), group_norm(channels), nn.ReLU(inplace=True)]
    return nn.Sequential(*layers)


def flatten_levels(maps: list[torch.Tensor]) -> torch.Tensor:
    """[B, C, H, W] per level -> [B, sum(H*W), C]."""
    return torch.cat([m.flatten(2).transpose(1, 2) for m in maps], 1)


def atss_assign(
    anchors: list[torch.Tensor], gt_boxes: torch.Tensor, gt_labels: torch.Tensor, top_k: int = 9
) -> tuple[torch.Tensor, torch.Tensor]:
    """ATSS (Zhang et al. 2020): per ground-truth box, the `top_k` anchors of each level nearest its centre are
    candidates; those whose IoU reaches mean + std of the candidates' IoUs and whose centre lies inside the box
    are positives (an anchor claimed twice goes to the higher IoU).

    Returns (labels [A]: 0 background, else the box's label; matched [A]: ground-truth index or -1).
    """
    every = torch.cat(anchors)
    count = every.shape[0]
    labels = torch.zeros(count, dtype=torch.int64, device=every.device)
    matched = torch.full((count,), -1, dtype=torch.int64, device=every.device)
    if gt_boxes.numel() == 0:
        return labels, matched
    ious = box_iou(every, gt_boxes)  # [A, G]
    centres = (every[:, :2] + every[:, 2:]) / 2
    gt_centres = (gt_boxes[:, :2] + gt_boxes[:, 2:]) / 2
    distance = torch.cdist(centres, gt_centres)  # [A, G]
    candidates, start = [], 0
    for level in anchors:
        n = level.shape[0]
        k = min(top_k, n)
        candidates.append(distance[start : start + n].topk(k, dim=0, largest=False).indices + start)
        start += n
    cand = torch.cat(candidates)  # [C, G]
    cand_ious = ious.gather(0, cand)
    threshold = cand_ious.mean(0) + (cand_ious.std(0) if cand.shape[0] > 1 else 0.0)
    cx, cy = centres[cand, 0], centres[cand, 1]  # [C, G]
    inside = (
        (cx - gt_boxes[:, 0] > 0.01)
        & (cy - gt_boxes[:, 1] > 0.01)
        & (gt_boxes[:, 2] - cx > 0.01)
        & (gt_boxes[:, 3] - cy > 0.01)
    )
    positive = (cand_ious >= threshold[None]) & inside
    claimed = torch.full_like(ious, -1.0)
    gt_index = torch.arange(gt_boxes.shape[0], device=every.device).expand_as(cand)
    claimed[cand[positive], gt_index[positive]] = ious[cand[positive], gt_index[positive]]
    best, best_gt = claimed.max(1)
    positive_anchor = best >= 0
    labels[positive_anchor] = gt_labels[best_gt[positive_anchor]]
    matched[positive_anchor] = best_gt[positive_anchor]
    return labels, matched


class DenseDetector(nn.Module, abc.ABC):
    """Base of ATSS and VFNet over `FeaturePyramid(body)` P3-P7; anchors are squares of `anchor_scale` strides.

    Subclasses set `self.head` (pyramid maps -> outputs) and implement `loss` and `scores_and_boxes`.
    """

    anchor_scale = 8.0  # mmdetection's octave_base_scale for ATSS and VFNet

    def __init__(self, body: nn.Module, num_classes: int) -> None:
        super().__init__()
        self.pyramid = FeaturePyramid(body, min_stride=8, levels=3, extra="p6p7")
        self.num_classes = num_classes
        self.strides = list(self.pyramid.level_strides)

    @property
    def backbone(self) -> nn.Module:  # the FeatureBackbone under the pyramid: what freezing acts on
        return self.pyramid.body

    def anchors(self, maps: list[torch.Tensor]) -> list[torch.Tensor]:
        """Per level, [H*W, 4] xyxy squares centred on the cells (input pixels)."""
        out = []
        for m, stride in zip(maps, self.strides):
            h, w = m.shape[-2:]
            ys, xs = torch.meshgrid(
                torch.arange(h, device=m.device, dtype=torch.float32),
                torch.arange(w, device=m.device, dtype=torch.float32),
                indexing="ij",
            )
            cx, cy = (xs.flatten() + 0.5) * stride, (ys.flatten() + 0.5) * stride
            half = self.anchor_scale * stride / 2
            out.append(torch.stack([cx - half, cy - half, cx + half, cy + half], 1))
        return out

    @abc.abstractmethod
    def loss(
        self,
        outputs: Any,
        anchors: torch.Tensor,
        assignment: list[tuple[torch.Tensor, torch.Tensor]],
        targets: list[dict[str, torch.Tensor]],
    ) -> torch.Tensor:
        """The training loss of a batch; `anchors` [A, 4] of all levels, `assignment` per image from atss_assign."""

    @abc.abstractmethod
    def scores_and_boxes(self, outputs: Any, anchors: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per cell class scores [B, A, K] (0..1) and boxes [B, A, 4] (xyxy input pixels)."""

    def run(self, images: torch.Tensor) -> tuple[Any, list[torch.Tensor]]:
        maps = list(self.pyramid(images).values())
        return self.head(maps), self.anchors(maps)

    def losses(self, images: torch.Tensor, targets: list[dict[str, torch.Tensor]]) -> torch.Tensor:
        outputs, anchors = self.run(images)
        assignment = [atss_assign(anchors, t["boxes"].float(), t["labels"]) for t in targets]
        return self.loss(outputs, torch.cat(anchors), assignment, targets)

    def detect(self, images: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        outputs, anchors = self.run(images)
        return self._detections(outputs, anchors, images.shape[-2:])

    def losses_and_detections(
        self, images: torch.Tensor, targets: list[dict[str, torch.Tensor]]
    ) -> tuple[torch.Tensor, list[dict[str, torch.Tensor]]]:
        """Validation: GroupNorm heads and a BatchNorm backbone in eval give one forward for both."""
        outputs, anchors = self.run(images)
        assignment = [atss_assign(anchors, t["boxes"].float(), t["labels"]) for t in targets]
        loss = self.loss(outputs, torch.cat(anchors), assignment, targets)
        return loss, self._detections(outputs, anchors, images.shape[-2:])

    def _detections(self, outputs: Any, anchors: list[torch.Tensor], size: Any) -> list[dict[str, torch.Tensor]]:
        boxes, scores, labels = self._candidates(outputs, anchors, size)
        found = []
        for b, s, lab in zip(boxes, scores, labels):
            keep = s > SCORE_THRESH
            b, s, lab = b[keep], s[keep], lab[keep] + 1
            kept = batched_nms(b, s, lab, NMS_THRESH)[:MAX_DETECTIONS]
            found.append({"boxes": b[kept], "scores": s[kept], "labels": lab[kept]})
        return found

    def _candidates(
        self, outputs: Any, anchors: list[torch.Tensor], size: Any
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per level the TOP_K best (cell, class) scores, before the score threshold and NMS: boxes [B, N, 4]
        clipped to the image, scores [B, N], labels [B, N] 0..K-1 (top-k first: k depends on shapes only, so
        a traced network keeps it right)."""
        scores, boxes = self.scores_and_boxes(outputs, torch.cat(anchors))
        h, w = int(size[0]), int(size[1])
        kept_boxes, kept_scores, kept_labels, start = [], [], [], 0
        for level in anchors:
            n = level.shape[0]
            level_scores, level_boxes = (
                scores[:, start : start + n],
                boxes[:, start : start + n],
            )  # [B, n, K], [B, n, 4]
            start += n
            k = level_scores.shape[2]
            top, index = level_scores.flatten(1).topk(min(TOP_K, n * k), dim=1)
            cell = torch.div(index, k, rounding_mode="floor")
            kept_boxes.append(torch.gather(level_boxes, 1, cell[..., None].expand(-1, -1, 4)))
            kept_scores.append(top)
            kept_labels.append(index % k)
        picked = torch.cat(kept_boxes, 1)
        clipped = torch.stack(
            [
                picked[..., 0].clamp(0, w),
                picked[..., 1].clamp(0, h),
                picked[..., 2].clamp(0, w),
                picked[..., 3].clamp(0, h),
            ],
            -1,
        )
        return clipped, torch.cat(kept_scores, 1), torch.cat(kept_labels, 1)

    def forward(self, images: torch.Tensor):
        """Train mode: the head's outputs. Eval: the batch's candidates (`_candidates`), what the package's
        traced network gives its PRF."""
        outputs, anchors = self.run(images)
        if self.training:
            return outputs
        return self._candidates(outputs, anchors, images.shape[-2:])


# what the PRF's dense decoder does after the candidates, as _detections does
DECODER_SPEC = {
    "decoder": "dense",
    "score_thresh": SCORE_THRESH,
    "nms_thresh": NMS_THRESH,
    "max_detections": MAX_DETECTIONS,
}
