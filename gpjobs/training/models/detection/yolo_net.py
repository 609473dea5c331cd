"""YOLOv3 network (three-scale heads over a feature backbone), its loss and its box decoding.

The network is YOLOv3's, as arcgis.learn's DeNA port builds it: 9 anchors, 3 per scale (strides 8, 16, 32,
smallest anchors on the finest scale), five-convolution sets and upsampling laterals; the head normalises with
GroupNorm (BatchNorm statistics over the few cells of a small chip's stride-32 map, batch after batch of a
handful of chips, made the original head's training diverge), and each scale's output is decoupled as in
YOLOX (boxes and objectness from one branch, classes from another: DecoupledOutput).
Training targets and loss are YOLOv5's, which learn from random weights within a few dozen steps where the
YOLOv3 paper's (one anchor of 9 per truth, exp-decoded sizes, MSE/BCE coordinates) did not learn at all in
the same budget (measured: Esri AP 0.0 -> 0.6-0.8 on the tiny detection test; issue #17):
- every anchor whose shape is within 4x of a truth's takes it, in the truth's cell and its two nearest cells;
- centres decode to (2 sigmoid - 0.5 + cell) x stride, sizes to (2 sigmoid)^2 x anchor (bounded);
- loss = 0.05 (1 - CIoU) + 1.0 BCE(objectness, per-level weights 4, 1, 0.4) + 0.5 BCE(classes), each a mean;
- a positive's objectness target is its box's CIoU (clamped at 0), not 1: scores then rank boxes by their fit,
  so NMS keeps the best-placed of a truth's several positives. bench/quality.py yolov3 on full palms (CPU,
  seeds 42-44), held-out Esri AP 0.533 -> 0.620 (every seed up) and COCO mAP@0.5 0.307 -> 0.429.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import batched_nms, box_iou

BASE_STRIDES = (8, 16, 32)  # of the network's input; in chip pixels they are divided by the input scale
ANCHOR_RATIO = 4.0  # an anchor takes a box when neither side differs from it by this factor or more
LEVEL_BALANCE = (4.0, 1.0, 0.4)  # objectness weight of strides 8, 16, 32 (fine levels have most negatives)
GAINS = (0.05, 1.0, 0.5)  # box, objectness, class
# Boxes of a class overlapping a better one by more than this are dropped: arcgis.learn's and ArcGIS's detection
# tools default to 0.1 (our raster function too), so the job's validation AP, `gpjobs predict` and the bench
# score what ArcGIS users get. Decoupled outputs give a few boxes per palm across the scales that 0.45 kept:
# full palms, held-out Esri AP / COCO mAP@0.5, seeds 42 / 43: 0.698 / 0.542 and 0.715 / 0.685 at 0.45, 0.722 /
# 0.560 and 0.765 / 0.717 at 0.1 (0.2 to 0.35 scored within 0.02 of 0.1).
NMS_OVERLAP = 0.1
# After NMS each kept box moves to the score-weighted mean of the candidates of its class that overlap it by more
# than this (box voting, YOLOv5's merge NMS): the decoupled outputs give a palm a few boxes across scales and
# anchors, and their mean fits it better than the best-scored one alone. Full palms (CPU, 5 epochs, batch 4),
# held-out COCO mAP@0.5 of the last epoch's weights, seeds 42 / 43 / 44: 0.619 / 0.618 / 0.646 -> 0.698 / 0.649 /
# 0.588 (and of the fourth epoch's 0.610 / 0.370 / 0.627 -> 0.645 / 0.547 / 0.638); Esri AP@0.1 is unchanged.
VOTE_OVERLAP = 0.5
OBJECTNESS_PRIOR = -4.0  # initial objectness logit: few confident boxes at first, a stable early loss


def conv_gn(in_ch: int, out_ch: int, kernel: int) -> nn.Sequential:
    """The head's unit: conv (no bias) + GroupNorm (up to 32 groups) + LeakyReLU(0.1)."""
    return nn.Sequential(
        OrderedDict(
            conv=nn.Conv2d(in_ch, out_ch, kernel, 1, kernel // 2, bias=False),
            norm=nn.GroupNorm(math.gcd(32, out_ch), out_ch),
            act=nn.LeakyReLU(0.1, inplace=True),
        )
    )


def _conv_set(in_ch: int, mid: int) -> nn.Sequential:
    """The five alternating 1x1 / 3x3 convolutions before each YOLO output."""
    return nn.Sequential(
        conv_gn(in_ch, mid, 1),
        conv_gn(mid, mid * 2, 3),
        conv_gn(mid * 2, mid, 1),
        conv_gn(mid, mid * 2, 3),
        conv_gn(mid * 2, mid, 1),
    )


class DecoupledOutput(nn.Module):
    """One scale's output as YOLOX's decoupled head: a box branch (x, y, w, h and the objectness, whose target is
    the box's CIoU) and a class branch, each a 3x3 conv_gn at the level's width and a 1x1 conv. Same compute as
    YOLOv3's coupled output (one 3x3 conv to twice the width), same [B, 3 (5 + C), H, W] layout. From random
    weights it converges faster: bench/quality.py yolov3 on full palms (CPU, 5 epochs, batch 4), held-out Esri
    AP / COCO mAP@0.5, both at the former NMS overlap 0.45, seeds 42 / 43: 0.696 / 0.438 and 0.710 / 0.640
    coupled, 0.698 / 0.542 and 0.715 / 0.685 decoupled (a second draw of its initial weights: 0.738 / 0.585 and
    0.706 / 0.646; seed 44 0.633 / 0.486 coupled, 0.697 / 0.559 decoupled)."""

    def __init__(self, width: int, num_classes: int) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.box = nn.Sequential(conv_gn(width, width, 3), nn.Conv2d(width, 3 * 5, 1))
        self.cls = nn.Sequential(conv_gn(width, width, 3), nn.Conv2d(width, 3 * num_classes, 1))
        nn.init.constant_(self.box[-1].bias, 0.0)
        nn.init.constant_(self.cls[-1].bias, 0.0)
        self.box[-1].bias.data.view(3, 5)[:, 4] = OBJECTNESS_PRIOR

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        box = self.box(x).view(b, 3, 5, h, w)
        cls = self.cls(x).view(b, 3, self.num_classes, h, w)
        return torch.cat([box, cls], 2).view(b, 3 * (5 + self.num_classes), h, w)


def coupled_output(width: int, num_classes: int) -> nn.Sequential:
    """YOLOv3's own output (boxes, objectness and classes from one branch): packages from before the decoupled
    head hold it, and load into it."""
    n_out = 3 * (5 + num_classes)
    head = nn.Sequential(conv_gn(width, width * 2, 3), nn.Conv2d(width * 2, n_out, 1))
    nn.init.constant_(head[-1].bias, 0.0)
    head[-1].bias.data.view(3, 5 + num_classes)[:, 4] = OBJECTNESS_PRIOR
    return head


def resized_side(chip: int) -> int:
    """The side chips are resized to inside the network: about 1.5x (the R-CNNs' resize), a multiple of 32.

    Palms are 13-30 px in 160 px chips, 1.6-4 cells of stride 8 and under one of stride 32; at 256 px each level
    sees them 1.6x larger. bench/quality.py yolov3 on full palms (CPU, 5 epochs, batch 4), seeds 42 / 43, held-out
    Esri AP / COCO mAP@0.5: 0.599 / 0.288 and 0.691 / 0.618 at 160 px, 0.696 / 0.438 and 0.710 / 0.640 at 256 px,
    for 2.2x the time per epoch."""
    return max(32, math.floor(1.5 * chip / 32 + 0.5) * 32)


class YOLOv3Net(nn.Module):
    """`raw(images)` -> 3 raw maps [B, 3, 5 + C, H/s, W/s] for strides 8, 16, 32 of the input resized by
    `input_scale` (bilinear, inside the network, so every caller gives chips as they are); `strides` are in chip
    pixels. `losses`, `detect` and `forward` as common.py describes. The anchors (chip pixels) and the input
    scale are buffers, so they travel in the state dict. The outputs are decoupled (DecoupledOutput) unless
    `decoupled=False` or a loaded state dict holds YOLOv3's coupled ones."""

    def __init__(
        self,
        backbone: nn.Module,
        num_classes: int,
        anchors: list[list[float]],
        width: int = 512,
        input_scale: float = 1.0,
        decoupled: bool = True,
    ) -> None:
        super().__init__()
        if len(anchors) != 9:
            raise ValueError(f"YOLOv3 needs 9 anchors, got {len(anchors)}")
        self.backbone = backbone
        self.num_classes = num_classes
        c3, c4, c5 = list(backbone.out_channels)[-3:]
        self.widths = (width // 4, width // 2, width)  # of the strides 8, 16, 32
        w3, w4, w5 = self.widths
        output = DecoupledOutput if decoupled else coupled_output
        self.set5 = _conv_set(c5, w5)
        self.out5 = output(w5, num_classes)
        self.lat5 = conv_gn(w5, w4, 1)
        self.set4 = _conv_set(c4 + w4, w4)
        self.out4 = output(w4, num_classes)
        self.lat4 = conv_gn(w4, w3, 1)
        self.set3 = _conv_set(c3 + w3, w3)
        self.out3 = output(w3, num_classes)
        ordered = sorted((float(w), float(h)) for w, h in anchors)
        ordered.sort(key=lambda wh: wh[0] * wh[1])
        self.register_buffer("anchors", torch.tensor(ordered, dtype=torch.float32))  # [9, 2] pixels
        self.register_buffer("input_scale", torch.tensor(float(input_scale)))
        self._set_scale(float(input_scale))

    def _set_scale(self, scale: float) -> None:
        self.scale = scale
        self.strides = tuple(s / scale for s in BASE_STRIDES)

    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args: Any, **kwargs: Any) -> None:
        # packages from before the resize hold no input_scale: their networks ran chips as they are
        state_dict.setdefault(prefix + "input_scale", torch.tensor(1.0))
        # and those from before the decoupled head hold YOLOv3's coupled outputs: rebuilt as such, before the
        # children load
        if prefix + "out3.0.conv.weight" in state_dict and isinstance(self.out3, DecoupledOutput):
            for name, width in zip(("out3", "out4", "out5"), self.widths):
                setattr(self, name, coupled_output(width, self.num_classes).to(self.anchors.device))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self._set_scale(float(self.input_scale))

    def losses(self, images: torch.Tensor, targets: list[dict]) -> torch.Tensor:
        return yolo_loss(self.raw(images), targets, self.anchors, self.strides)

    def detect(self, images: torch.Tensor) -> list[dict]:
        return yolo_detect(self.raw(images), self.anchors, self.strides)

    def forward(self, images: torch.Tensor):
        """Train: raw outputs. Eval: (boxes, scores, labels) of the batch (the TorchScript interface)."""
        if self.training:
            return self.raw(images)
        found = self.detect(images)
        return (
            torch.cat([d["boxes"] for d in found]),
            torch.cat([d["scores"] for d in found]),
            torch.cat([d["labels"] for d in found]),
        )

    def raw(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if self.scale != 1.0:
            # exact for sides that are multiples of 32 (floor(side * scale) == resized_side), and traceable
            images = F.interpolate(images, scale_factor=self.scale, mode="bilinear", align_corners=False)
        feats = list(self.backbone(images).values())
        f3, f4, f5 = feats[-3], feats[-2], feats[-1]
        x5 = self.set5(f5)
        x4 = self.set4(torch.cat([F.interpolate(self.lat5(x5), size=f4.shape[-2:], mode="nearest"), f4], 1))
        x3 = self.set3(torch.cat([F.interpolate(self.lat4(x4), size=f3.shape[-2:], mode="nearest"), f3], 1))
        # float32 outputs whatever the autocast: decoding and the CIoU loss in bfloat16 would be off by pixels
        outs = (self.out3(x3).float(), self.out4(x4).float(), self.out5(x5).float())
        return tuple(o.view(o.shape[0], 3, 5 + self.num_classes, o.shape[-2], o.shape[-1]) for o in outs)


def _grid(h: int, w: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    gy, gx = torch.meshgrid(torch.arange(h, device=device), torch.arange(w, device=device), indexing="ij")
    return gx.float(), gy.float()


def decode_boxes(raw: torch.Tensor, anchors: torch.Tensor, stride: float) -> torch.Tensor:
    """Boxes [B, 3, H, W, 4] xyxy in pixels from one scale's raw output and its 3 anchors: the centre lies
    within half a cell around its own cell, the size within 0..4x its anchor (bounded, unlike exp)."""
    gx, gy = _grid(raw.shape[-2], raw.shape[-1], raw.device)
    cx = (torch.sigmoid(raw[:, :, 0]) * 2 - 0.5 + gx) * stride
    cy = (torch.sigmoid(raw[:, :, 1]) * 2 - 0.5 + gy) * stride
    bw = (torch.sigmoid(raw[:, :, 2]) * 2) ** 2 * anchors[:, 0].view(1, 3, 1, 1)
    bh = (torch.sigmoid(raw[:, :, 3]) * 2) ** 2 * anchors[:, 1].view(1, 3, 1, 1)
    return torch.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], dim=-1)


def _ciou(pred: torch.Tensor, truth: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """Complete IoU of matched xyxy box pairs [N, 4]: IoU minus the centre-distance and aspect-ratio penalties."""
    iw = (torch.min(pred[:, 2], truth[:, 2]) - torch.max(pred[:, 0], truth[:, 0])).clamp(min=0)
    ih = (torch.min(pred[:, 3], truth[:, 3]) - torch.max(pred[:, 1], truth[:, 1])).clamp(min=0)
    inter = iw * ih
    w1, h1 = pred[:, 2] - pred[:, 0], pred[:, 3] - pred[:, 1] + eps
    w2, h2 = truth[:, 2] - truth[:, 0], truth[:, 3] - truth[:, 1] + eps
    iou = inter / (w1 * h1 + w2 * h2 - inter + eps)
    hull_w = torch.max(pred[:, 2], truth[:, 2]) - torch.min(pred[:, 0], truth[:, 0])
    hull_h = torch.max(pred[:, 3], truth[:, 3]) - torch.min(pred[:, 1], truth[:, 1])
    centre = (
        (truth[:, 0] + truth[:, 2] - pred[:, 0] - pred[:, 2]) ** 2
        + (truth[:, 1] + truth[:, 3] - pred[:, 1] - pred[:, 3]) ** 2
    ) / 4
    v = (4 / math.pi**2) * (torch.atan(w2 / h2) - torch.atan(w1 / h1)) ** 2
    with torch.no_grad():
        alpha = v / (v - iou + 1 + eps)
    return iou - centre / (hull_w**2 + hull_h**2 + eps) - alpha * v


def assign_targets(
    gt: torch.Tensor, level_anchors: torch.Tensor, stride: float, h: int, w: int
) -> tuple[torch.Tensor, ...]:
    """Positives of one level: (truth row, anchor 0..2, cell y, cell x) for every anchor whose shape fits the
    box (neither side off by ANCHOR_RATIO or more), in the cell of the box centre and its two nearest
    neighbour cells (the decoded centre reaches half a cell beyond its own). gt: [G, 6] (image, class, xyxy)."""
    wh = torch.stack([gt[:, 4] - gt[:, 2], gt[:, 5] - gt[:, 3]], 1).clamp(min=1e-3)
    ratio = wh[:, None, :] / level_anchors[None]
    truth, anchor = (torch.max(ratio, 1 / ratio).max(2).values < ANCHOR_RATIO).nonzero(as_tuple=True)
    centre = torch.stack([gt[truth, 2] + gt[truth, 4], gt[truth, 3] + gt[truth, 5]], 1) / (2 * stride)
    frac = centre % 1
    shifts = [
        (torch.ones_like(frac[:, 0], dtype=torch.bool), 0, 0),
        ((frac[:, 0] < 0.5) & (centre[:, 0] > 1), -1, 0),
        ((frac[:, 0] > 0.5) & (centre[:, 0] < w - 1), 1, 0),
        ((frac[:, 1] < 0.5) & (centre[:, 1] > 1), 0, -1),
        ((frac[:, 1] > 0.5) & (centre[:, 1] < h - 1), 0, 1),
    ]
    rows, anchors, cy, cx = [], [], [], []
    for keep, dx, dy in shifts:
        rows.append(truth[keep])
        anchors.append(anchor[keep])
        cx.append((centre[keep, 0].floor().long() + dx).clamp(0, w - 1))
        cy.append((centre[keep, 1].floor().long() + dy).clamp(0, h - 1))
    return torch.cat(rows), torch.cat(anchors), torch.cat(cy), torch.cat(cx)


def yolo_loss(
    outputs: tuple[torch.Tensor, ...], targets: list[dict], anchors: torch.Tensor, strides: tuple[float, ...]
) -> torch.Tensor:
    """The loss of a batch (labels in targets are 1..C): per level, 1 - CIoU of the positives' decoded boxes,
    BCE of objectness over every prediction (target: the positives' CIoU, else 0) weighted by LEVEL_BALANCE, BCE of the
    positives' classes; each a mean, weighted by the GAINS and scaled by the batch size."""
    device = outputs[0].device
    batch = outputs[0].shape[0]
    rows = [
        torch.cat(
            [
                torch.full((len(t["boxes"]), 1), float(b), device=device),
                t["labels"].to(device, torch.float32).view(-1, 1) - 1,
                t["boxes"].to(device, torch.float32).view(-1, 4),
            ],
            1,
        )
        for b, t in enumerate(targets)
    ]
    gt = torch.cat(rows) if rows else torch.zeros(0, 6, device=device)
    box_loss, obj_loss, cls_loss = (outputs[0].new_zeros(()) for _ in range(3))
    for level, (raw, stride) in enumerate(zip(outputs, strides)):
        level_anchors = anchors[3 * level : 3 * level + 3]
        _, _, n_attr, h, w = raw.shape
        obj_target = torch.zeros_like(raw[:, :, 4])
        truth, a, gy, gx = assign_targets(gt, level_anchors, stride, h, w)
        if len(truth):
            image = gt[truth, 0].long()
            picked = raw[image, a, :, gy, gx]  # [N, 5 + C]
            xy = (torch.sigmoid(picked[:, :2]) * 2 - 0.5 + torch.stack([gx, gy], 1).to(raw.dtype)) * stride
            wh = (torch.sigmoid(picked[:, 2:4]) * 2) ** 2 * level_anchors[a]
            ciou = _ciou(torch.cat([xy - wh / 2, xy + wh / 2], 1), gt[truth, 2:])
            box_loss = box_loss + (1.0 - ciou).mean()
            obj_target[image, a, gy, gx] = ciou.detach().clamp(min=0).to(obj_target.dtype)
            classes = torch.zeros_like(picked[:, 5:])
            classes[torch.arange(len(truth), device=device), gt[truth, 1].long().clamp(0, n_attr - 6)] = 1.0
            cls_loss = cls_loss + F.binary_cross_entropy_with_logits(picked[:, 5:], classes)
        obj_loss = obj_loss + LEVEL_BALANCE[level] * F.binary_cross_entropy_with_logits(raw[:, :, 4], obj_target)
    box_gain, obj_gain, cls_gain = GAINS
    return (box_gain * box_loss + obj_gain * obj_loss + cls_gain * cls_loss) * batch


def yolo_detect(
    outputs: tuple[torch.Tensor, ...],
    anchors: torch.Tensor,
    strides: tuple[float, ...],
    *,
    score_thresh: float = 0.01,
    nms_thresh: float = NMS_OVERLAP,
    vote_thresh: float | None = VOTE_OVERLAP,
    max_detections: int = 100,
) -> list[dict]:
    """Per image {boxes xyxy px, scores, labels 1..C} after class-wise NMS and box voting (None: no voting)."""
    per_level = []
    for level, (raw, stride) in enumerate(zip(outputs, strides)):
        boxes = decode_boxes(raw, anchors[3 * level : 3 * level + 3], stride)
        obj = torch.sigmoid(raw[:, :, 4])
        cls = torch.sigmoid(raw[:, :, 5:])  # [B, 3, C, H, W]
        conf, label = (obj.unsqueeze(2) * cls).max(2)
        per_level.append((boxes.flatten(1, 3), conf.flatten(1), label.flatten(1)))
    boxes = torch.cat([p[0] for p in per_level], 1)
    scores = torch.cat([p[1] for p in per_level], 1)
    labels = torch.cat([p[2] for p in per_level], 1)
    results = []
    for b in range(boxes.shape[0]):
        keep = scores[b] >= score_thresh
        bx, sc, lb = boxes[b][keep], scores[b][keep], labels[b][keep]
        kept = batched_nms(bx, sc, lb, nms_thresh)[:max_detections]
        voted = bx[kept] if vote_thresh is None else vote_boxes(bx, sc, lb, kept, vote_thresh)
        results.append({"boxes": voted, "scores": sc[kept], "labels": lb[kept] + 1})
    return results


def vote_boxes(
    boxes: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor, kept: torch.Tensor, overlap: float
) -> torch.Tensor:
    """The kept boxes, each the score-weighted mean of the candidates of its class overlapping it by more than
    `overlap` (itself included). The packages' raster function does the same (gpjobs_prf_core.vote_boxes)."""
    near = (box_iou(boxes[kept], boxes) > overlap) & (labels[kept, None] == labels[None])
    weights = near.to(scores.dtype) * scores[None]
    return weights @ boxes / weights.sum(1, keepdim=True)


def check_chip_multiple(chip: int) -> None:
    """YOLOv3 needs chips that are a multiple of 32 (its coarsest stride)."""
    if chip % 32:
        raise ValueError(
            f"YOLOV3 needs a chip size that is a multiple of 32, got {chip}; "
            f"pass chip_size {max(32, math.floor(chip / 32) * 32)} or "
            f"{math.ceil(chip / 32) * 32} in arguments"
        )
