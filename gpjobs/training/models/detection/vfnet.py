"""VarifocalNet (Zhang et al. 2021), MMDETECTION's `vfnet`: an FCOS-style head whose class score is an
IoU-aware classification score (IACS), trained with the varifocal loss, with a star-shaped deformable
convolution that refines the boxes.

Per cell: an initial box (distances to its four sides, exp-parameterised, 4 strides at start); nine sampling
points on that box (centre, side midpoints, corners) steer a 3x3 deformable convolution
(`torchvision.ops.DeformConv2d`) in both branches; the refined box is the initial one scaled per side.
Positives: ATSS assignment (mmdetection's vfnet config). Losses as that config: varifocal (alpha 0.75,
gamma 2, IoU-weighted positives) whose target is the IoU of the refined box with the truth, GIoU on the
initial (weight 1.5) and refined (weight 2.0) boxes, each weighted by its IoU with the truth.
"""

from __future__ import annotations

import math
from copy import deepcopy
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import DeformConv2d, box_area, generalized_box_iou_loss

from gpjobs.training.backbones import build_backbone
from gpjobs.training.models.detection.common import DetectionFamily
from gpjobs.training.models.detection.dense import DECODER_SPEC, PRIOR, DenseDetector, flatten_levels, tower
from gpjobs.training.models.detection.fpn_adapter import group_norm

GRADIENT_MUL = 0.1  # share of the offsets' gradient that flows back into the initial boxes
_BASE_Y = torch.tensor([-1.0, -1, -1, 0, 0, 0, 1, 1, 1])
_BASE_X = torch.tensor([-1.0, 0, 1, -1, 0, 1, -1, 0, 1])


def varifocal_loss(logits: torch.Tensor, target: torch.Tensor, alpha: float = 0.75, gamma: float = 2.0) -> torch.Tensor:
    """Summed varifocal loss: positives (target q > 0) weighted by q, negatives by alpha * p^gamma."""
    p = logits.sigmoid()
    weight = torch.where(target > 0, target, alpha * (p - target).abs().pow(gamma))
    return (F.binary_cross_entropy_with_logits(logits, target, reduction="none") * weight.detach()).sum()


def star_offsets(ltrb: torch.Tensor, stride: int) -> torch.Tensor:
    """[B, 4, H, W] distances (pixels) -> [B, 18, H, W] (dy, dx) offsets of a 3x3 kernel onto the box's
    centre, side midpoints and corners (in feature cells, relative to the regular kernel grid)."""
    left, top, right, bottom = (ltrb / stride).unbind(1)
    zero = torch.zeros_like(left)
    ys = torch.stack([-top, -top, -top, zero, zero, zero, bottom, bottom, bottom], 1)
    xs = torch.stack([-left, zero, right, -left, zero, right, -left, zero, right], 1)
    base_y = _BASE_Y.to(ltrb)[None, :, None, None]
    base_x = _BASE_X.to(ltrb)[None, :, None, None]
    return torch.stack([ys - base_y, xs - base_x], 2).flatten(1, 2)


class VFNetHead(nn.Module):
    def __init__(self, channels: int, num_classes: int, strides: list[int], convs: int = 3) -> None:
        super().__init__()
        self.strides = strides
        self.cls_tower, self.reg_tower = tower(channels, convs), tower(channels, convs)
        self.reg_conv = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1), group_norm(channels), nn.ReLU(inplace=True)
        )
        self.reg_init = nn.Conv2d(channels, 4, 3, padding=1)
        self.star_reg = DeformConv2d(channels, channels, 3, padding=1)
        self.reg_refine = nn.Conv2d(channels, 4, 3, padding=1)
        self.star_cls = DeformConv2d(channels, channels, 3, padding=1)
        self.cls_logits = nn.Conv2d(channels, num_classes, 3, padding=1)
        self.scales = nn.Parameter(torch.ones(len(strides)))
        self.refine_scales = nn.Parameter(torch.ones(len(strides)))
        for conv in (self.reg_init, self.reg_refine, self.cls_logits, self.star_reg, self.star_cls):
            nn.init.normal_(conv.weight, std=0.01)
            nn.init.zeros_(conv.bias)
        nn.init.constant_(self.cls_logits.bias, -math.log((1 - PRIOR) / PRIOR))

    def forward(self, maps: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        cls, initial, refined = [], [], []
        for i, (m, stride) in enumerate(zip(maps, self.strides)):
            c, r = self.cls_tower(m), self.reg_tower(m)
            r = self.reg_conv(r)
            box = (self.scales[i] * self.reg_init(r)).float().exp() * (4.0 * stride)
            steer = (1 - GRADIENT_MUL) * box.detach() + GRADIENT_MUL * box
            offsets = star_offsets(steer, stride).to(m.dtype)
            refine = (self.refine_scales[i] * self.reg_refine(F.relu(self.star_reg(r, offsets)))).float().exp()
            cls.append(self.cls_logits(F.relu(self.star_cls(c, offsets))))
            initial.append(box)
            refined.append(refine * box.detach())
        return flatten_levels(cls), flatten_levels(initial), flatten_levels(refined)


class PlainDeformConv(nn.Module):
    """torchvision's deform_conv2d for the head's 3x3 kernels (stride 1, padding 1, one offset group, no mask) in
    plain torch: bilinear samples by grid_sample (zeros outside, as torchvision), then one weighted sum. The
    package's network uses it because the PRF host has torch but not torchvision's compiled operators; it
    shares the trained DeformConv2d's weight and bias."""

    def __init__(self, conv: DeformConv2d) -> None:
        super().__init__()
        self.weight, self.bias = conv.weight, conv.bias

    def forward(self, x: torch.Tensor, offset: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        off = offset.view(b, 9, 2, h, w)
        ki = torch.arange(3, device=x.device, dtype=x.dtype).repeat_interleave(3).view(1, 9, 1, 1)
        kj = torch.arange(3, device=x.device, dtype=x.dtype).repeat(3).view(1, 9, 1, 1)
        py = torch.arange(h, device=x.device, dtype=x.dtype).view(1, 1, h, 1) - 1 + ki + off[:, :, 0]
        px = torch.arange(w, device=x.device, dtype=x.dtype).view(1, 1, 1, w) - 1 + kj + off[:, :, 1]
        grid = torch.stack([(2 * px + 1) / w - 1, (2 * py + 1) / h - 1], -1)  # pixel centres, align_corners=False
        sampled = F.grid_sample(
            x, grid.view(b, 9 * h, w, 2), mode="bilinear", padding_mode="zeros", align_corners=False
        ).view(b, c, 9, h, w)
        out = torch.einsum("bckhw,ock->bohw", sampled, self.weight.reshape(self.weight.shape[0], c, 9))
        return out if self.bias is None else out + self.bias.view(1, -1, 1, 1)


def torch_only(model: nn.Module) -> nn.Module:
    """A copy of a VFNet whose deformable convolutions are PlainDeformConv (same weights)."""
    copy = deepcopy(model)
    copy.head.star_reg = PlainDeformConv(copy.head.star_reg)
    copy.head.star_cls = PlainDeformConv(copy.head.star_cls)
    return copy


def paired_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """IoU of a[i] with b[i] (xyxy)."""
    wh = (torch.min(a[:, 2:], b[:, 2:]) - torch.max(a[:, :2], b[:, :2])).clamp(min=0)
    inter = wh[:, 0] * wh[:, 1]
    return inter / (box_area(a) + box_area(b) - inter).clamp(min=1e-6)


def decode_ltrb(anchors: torch.Tensor, ltrb: torch.Tensor) -> torch.Tensor:
    cx, cy = (anchors[..., 0] + anchors[..., 2]) / 2, (anchors[..., 1] + anchors[..., 3]) / 2
    return torch.stack([cx - ltrb[..., 0], cy - ltrb[..., 1], cx + ltrb[..., 2], cy + ltrb[..., 3]], -1)


class VFNet(DenseDetector):
    def __init__(self, body: nn.Module, num_classes: int) -> None:
        super().__init__(body, num_classes)
        self.head = VFNetHead(self.pyramid.out_channels, num_classes, self.strides)

    def loss(
        self,
        outputs: Any,
        anchors: torch.Tensor,
        assignment: list[tuple[torch.Tensor, torch.Tensor]],
        targets: list[dict[str, torch.Tensor]],
    ) -> torch.Tensor:
        logits, initial, refined = outputs
        labels = torch.stack([a[0] for a in assignment])
        positive = labels > 0
        num_pos = max(float(positive.sum()), 1.0)
        target = torch.zeros_like(logits, dtype=torch.float32)
        if not positive.any():
            return varifocal_loss(logits.float(), target) / num_pos + 0.0 * (initial.sum() + refined.sum())
        truth = torch.cat([t["boxes"].float()[m[p]] for t, (_, m), p in zip(targets, assignment, positive)])
        pos_anchors = anchors[None].expand(labels.shape[0], -1, -1)[positive]
        box_initial = decode_ltrb(pos_anchors, initial[positive])
        box_refined = decode_ltrb(pos_anchors, refined[positive])
        iou_initial = paired_iou(box_initial, truth).detach().clamp(min=1e-6)
        iou_refined = paired_iou(box_refined, truth).detach().clamp(min=1e-6)
        target[positive, labels[positive] - 1] = iou_refined  # IACS target: the refined box's IoU
        loss = varifocal_loss(logits.float(), target) / num_pos
        loss = loss + 1.5 * (
            generalized_box_iou_loss(box_initial, truth, reduction="none") * iou_initial
        ).sum() / iou_initial.sum().clamp(min=1.0)
        return loss + 2.0 * (
            generalized_box_iou_loss(box_refined, truth, reduction="none") * iou_refined
        ).sum() / iou_refined.sum().clamp(min=1.0)

    def scores_and_boxes(self, outputs: Any, anchors: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits, _, refined = outputs
        return logits.float().sigmoid(), decode_ltrb(anchors[None], refined.float())


class VFNetFamily(DetectionFamily):
    """Only reachable as MMDETECTION model=vfnet (mmdet.py gives it MMDetection's `.emd` identity)."""

    emd_model_configuration = "_model_extension_inferencing"
    detect_thresh = 0.2

    def deployable(self, model: nn.Module) -> nn.Module:
        from gpjobs.training.models.detection.deploy import CandidateDetections

        return CandidateDetections(torch_only(model), DECODER_SPEC)

    def build(self) -> nn.Module:
        body = build_backbone(self.backbone, self.in_channels, weights=self.weights, say=self.say)
        return VFNet(body, self.num_classes)
