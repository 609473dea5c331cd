"""ATSS (Zhang et al. 2020, "Bridging the Gap Between Anchor-based and Anchor-free Detection"), MMDETECTION's
`atss`: one square anchor per cell on P3-P7, positives chosen by adaptive training-sample selection
(dense.py `atss_assign`), a RetinaNet-style head with a centre-ness branch.

Losses as mmdetection's ATSS config: sigmoid focal loss (alpha 0.25, gamma 2) over all cells / positives,
GIoU (weight 2) between decoded and true boxes weighted by the centre-ness targets, BCE on centre-ness.
Boxes are (dx, dy, dw, dh) deltas of the anchor with standard deviations 0.1 / 0.2 (BoxCoder 10, 10, 5, 5).
The score of a detection is class probability x centre-ness.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.detection._utils import BoxCoder
from torchvision.ops import generalized_box_iou_loss, sigmoid_focal_loss

from gpjobs.training.backbones import build_backbone
from gpjobs.training.models.detection.common import DetectionFamily
from gpjobs.training.models.detection.dense import DECODER_SPEC, PRIOR, DenseDetector, flatten_levels, tower

BOX_CODER = BoxCoder(weights=(10.0, 10.0, 5.0, 5.0))


def centreness(anchors: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """FCOS centre-ness of each anchor centre inside its box: sqrt(min(l,r)/max(l,r) * min(t,b)/max(t,b))."""
    cx, cy = (anchors[:, 0] + anchors[:, 2]) / 2, (anchors[:, 1] + anchors[:, 3]) / 2
    lr = torch.stack([cx - boxes[:, 0], boxes[:, 2] - cx], 1).clamp(min=1e-6)
    tb = torch.stack([cy - boxes[:, 1], boxes[:, 3] - cy], 1).clamp(min=1e-6)
    return torch.sqrt(lr.min(1)[0] / lr.max(1)[0] * tb.min(1)[0] / tb.max(1)[0])


class ATSSHead(nn.Module):
    def __init__(self, channels: int, num_classes: int, levels: int, convs: int = 4) -> None:
        super().__init__()
        self.cls_tower, self.reg_tower = tower(channels, convs), tower(channels, convs)
        self.cls_logits = nn.Conv2d(channels, num_classes, 3, padding=1)
        self.bbox_pred = nn.Conv2d(channels, 4, 3, padding=1)
        self.centreness = nn.Conv2d(channels, 1, 3, padding=1)
        self.scales = nn.Parameter(torch.ones(levels))  # learnable per-level scale of the box deltas
        for conv in (self.cls_logits, self.bbox_pred, self.centreness):
            nn.init.normal_(conv.weight, std=0.01)
            nn.init.zeros_(conv.bias)
        nn.init.constant_(self.cls_logits.bias, -math.log((1 - PRIOR) / PRIOR))

    def forward(self, maps: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        cls, deltas, ctr = [], [], []
        for i, m in enumerate(maps):
            c, r = self.cls_tower(m), self.reg_tower(m)
            cls.append(self.cls_logits(c))
            deltas.append(self.bbox_pred(r) * self.scales[i])
            ctr.append(self.centreness(r))
        return flatten_levels(cls), flatten_levels(deltas), flatten_levels(ctr)[..., 0]


class ATSS(DenseDetector):
    def __init__(self, body: nn.Module, num_classes: int) -> None:
        super().__init__(body, num_classes)
        self.head = ATSSHead(self.pyramid.out_channels, num_classes, self.pyramid.num_levels)

    def loss(
        self,
        outputs: Any,
        anchors: torch.Tensor,
        assignment: list[tuple[torch.Tensor, torch.Tensor]],
        targets: list[dict[str, torch.Tensor]],
    ) -> torch.Tensor:
        logits, deltas, ctr = outputs
        labels = torch.stack([a[0] for a in assignment])  # [B, A]
        positive = labels > 0
        num_pos = max(float(positive.sum()), 1.0)
        onehot = F.one_hot(labels, self.num_classes + 1)[..., 1:].to(logits.dtype)
        loss = sigmoid_focal_loss(logits.float(), onehot.float(), reduction="sum") / num_pos
        if not positive.any():
            return loss + 0.0 * (deltas.sum() + ctr.sum())  # every parameter stays in the graph
        truth = torch.cat([t["boxes"].float()[m[p]] for t, (_, m), p in zip(targets, assignment, positive)])
        pos_anchors = anchors[None].expand(labels.shape[0], -1, -1)[positive]
        decoded = BOX_CODER.decode_single(deltas[positive].float(), pos_anchors)
        ctr_target = centreness(pos_anchors, truth)
        weight = ctr_target.sum().clamp(min=1e-6)
        loss = loss + 2.0 * (generalized_box_iou_loss(decoded, truth, reduction="none") * ctr_target).sum() / weight
        return loss + F.binary_cross_entropy_with_logits(ctr[positive].float(), ctr_target, reduction="sum") / num_pos

    def scores_and_boxes(self, outputs: Any, anchors: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits, deltas, ctr = outputs
        scores = logits.float().sigmoid() * ctr.float().sigmoid()[..., None]
        # one decode over the batch (no python loop over images: the traced network takes any batch size)
        boxes = BOX_CODER.decode_single(deltas.float().reshape(-1, 4), anchors[None].expand_as(deltas).reshape(-1, 4))
        return scores, boxes.reshape(deltas.shape)


class ATSSFamily(DetectionFamily):
    """Only reachable as MMDETECTION model=atss (mmdet.py gives it MMDetection's `.emd` identity)."""

    emd_model_configuration = "_model_extension_inferencing"
    detect_thresh = 0.2

    def deployable(self, model: nn.Module) -> nn.Module:
        from gpjobs.training.models.detection.deploy import CandidateDetections

        return CandidateDetections(model, DECODER_SPEC)

    def build(self) -> nn.Module:
        body = build_backbone(self.backbone, self.in_channels, weights=self.weights, say=self.say)
        return ATSS(body, self.num_classes)
