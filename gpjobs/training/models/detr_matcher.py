"""DETR's set matching: the class / L1 / GIoU matching cost of Deformable DETR, solved by the shared Hungarian
method (matching.py)."""

from __future__ import annotations

import torch
from torch import nn
from torchvision.ops import box_convert, generalized_box_iou

from gpjobs.training.models.matching import linear_sum_assignment

FOCAL_ALPHA = 0.25
FOCAL_GAMMA = 2.0


def box_cxcywh_to_xyxy(boxes: torch.Tensor) -> torch.Tensor:
    return box_convert(boxes, "cxcywh", "xyxy")


def box_xyxy_to_cxcywh(boxes: torch.Tensor) -> torch.Tensor:
    return box_convert(boxes, "xyxy", "cxcywh")


class HungarianMatcher(nn.Module):
    """One-to-one assignment of predictions (queries) to targets minimising

        cost_class * focal class cost + cost_bbox * L1(cx, cy, w, h) + cost_giou * (-GIoU)

    with Deformable DETR's weights 2 / 5 / 2 (arcgis.learn's DETReg uses the same). Boxes are normalised
    cxcywh; class indices 0..K-1.
    """

    def __init__(self, cost_class: float = 2.0, cost_bbox: float = 5.0, cost_giou: float = 2.0) -> None:
        super().__init__()
        self.cost_class, self.cost_bbox, self.cost_giou = cost_class, cost_bbox, cost_giou

    @torch.no_grad()
    def forward(
        self, logits: torch.Tensor, boxes: torch.Tensor, targets: list[dict[str, torch.Tensor]]
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per image (query indices, target indices) of logits [B, Q, K] and boxes [B, Q, 4]."""
        matches = []
        prob = logits.float().sigmoid()
        for b, target in enumerate(targets):
            labels, tboxes = target["labels"], target["boxes"].float()
            if labels.numel() == 0:
                empty = torch.zeros(0, dtype=torch.int64)
                matches.append((empty, empty))
                continue
            p = prob[b][:, labels]
            neg = (1 - FOCAL_ALPHA) * p**FOCAL_GAMMA * -(1 - p + 1e-8).log()
            pos = FOCAL_ALPHA * (1 - p) ** FOCAL_GAMMA * -(p + 1e-8).log()
            pred = boxes[b].float()
            cost = (
                self.cost_class * (pos - neg)
                + self.cost_bbox * torch.cdist(pred, tboxes, p=1)
                - self.cost_giou * generalized_box_iou(box_cxcywh_to_xyxy(pred), box_cxcywh_to_xyxy(tboxes))
            )
            queries, found = linear_sum_assignment(cost.cpu().numpy())
            matches.append((torch.as_tensor(queries, dtype=torch.int64), torch.as_tensor(found, dtype=torch.int64)))
        return matches
