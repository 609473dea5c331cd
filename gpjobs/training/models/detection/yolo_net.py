"""YOLOv3 network (three-scale heads over a feature backbone), its loss and its box decoding.

Follows the YOLOv3 paper as arcgis.learn's DeNA port does: 9 anchors, 3 per scale (strides 8, 16, 32, smallest
anchors on the finest scale); each ground truth is assigned to the single anchor (of 9) whose shape fits it
best, in the cell holding its centre. Loss = BCE(x, y) + MSE(w, h)/2 (both weighted by 2 - relative box area)
+ BCE(objectness, ignoring predictions that already overlap a truth by IoU > 0.7) + BCE(classes).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import batched_nms, box_iou

from gpjobs.training.models.detection.darknet import conv_bn

IGNORE_IOU = 0.7


def _conv_set(in_ch: int, mid: int) -> nn.Sequential:
    """The five alternating 1x1 / 3x3 convolutions before each YOLO output."""
    return nn.Sequential(conv_bn(in_ch, mid, 1), conv_bn(mid, mid * 2, 3), conv_bn(mid * 2, mid, 1),
                         conv_bn(mid, mid * 2, 3), conv_bn(mid * 2, mid, 1))


class YOLOv3Net(nn.Module):
    """`raw(images)` -> 3 raw maps [B, 3, 5 + C, H/s, W/s] for strides 8, 16, 32; `losses`, `detect` and
    `forward` as common.py describes. The anchors are a buffer, so they travel in the state dict."""

    def __init__(self, backbone: nn.Module, num_classes: int, anchors: list[list[float]], width: int = 512) -> None:
        super().__init__()
        if len(anchors) != 9:
            raise ValueError(f"YOLOv3 needs 9 anchors, got {len(anchors)}")
        self.backbone = backbone
        self.num_classes = num_classes
        c3, c4, c5 = list(backbone.out_channels)[-3:]
        n_out = 3 * (5 + num_classes)
        w5, w4, w3 = width, width // 2, width // 4
        self.set5 = _conv_set(c5, w5)
        self.out5 = nn.Sequential(conv_bn(w5, w5 * 2, 3), nn.Conv2d(w5 * 2, n_out, 1))
        self.lat5 = conv_bn(w5, w4, 1)
        self.set4 = _conv_set(c4 + w4, w4)
        self.out4 = nn.Sequential(conv_bn(w4, w4 * 2, 3), nn.Conv2d(w4 * 2, n_out, 1))
        self.lat4 = conv_bn(w4, w3, 1)
        self.set3 = _conv_set(c3 + w3, w3)
        self.out3 = nn.Sequential(conv_bn(w3, w3 * 2, 3), nn.Conv2d(w3 * 2, n_out, 1))
        ordered = sorted((float(w), float(h)) for w, h in anchors)
        ordered.sort(key=lambda wh: wh[0] * wh[1])
        self.register_buffer("anchors", torch.tensor(ordered, dtype=torch.float32))  # [9, 2] pixels
        self.strides = (8, 16, 32)
        for head in (self.out3, self.out4, self.out5):  # start with few confident boxes: stable early loss
            nn.init.constant_(head[-1].bias, 0.0)
            head[-1].bias.data.view(3, 5 + num_classes)[:, 4] = -4.0

    def losses(self, images: torch.Tensor, targets: list[dict]) -> torch.Tensor:
        return yolo_loss(self.raw(images), targets, self.anchors, self.strides, tuple(images.shape[-2:]))

    def detect(self, images: torch.Tensor) -> list[dict]:
        return yolo_detect(self.raw(images), self.anchors, self.strides)

    def forward(self, images: torch.Tensor):
        """Train: raw outputs. Eval: (boxes, scores, labels) of the batch (the TorchScript interface)."""
        if self.training:
            return self.raw(images)
        found = self.detect(images)
        return (torch.cat([d["boxes"] for d in found]), torch.cat([d["scores"] for d in found]),
                torch.cat([d["labels"] for d in found]))

    def raw(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        feats = list(self.backbone(images).values())
        f3, f4, f5 = feats[-3], feats[-2], feats[-1]
        x5 = self.set5(f5)
        x4 = self.set4(torch.cat([F.interpolate(self.lat5(x5), size=f4.shape[-2:], mode="nearest"), f4], 1))
        x3 = self.set3(torch.cat([F.interpolate(self.lat4(x4), size=f3.shape[-2:], mode="nearest"), f3], 1))
        outs = (self.out3(x3), self.out4(x4), self.out5(x5))
        return tuple(o.view(o.shape[0], 3, 5 + self.num_classes, o.shape[-2], o.shape[-1]) for o in outs)


def _grid(h: int, w: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    gy, gx = torch.meshgrid(torch.arange(h, device=device), torch.arange(w, device=device), indexing="ij")
    return gx.float(), gy.float()


def decode_boxes(raw: torch.Tensor, anchors: torch.Tensor, stride: int) -> torch.Tensor:
    """Boxes [B, 3, H, W, 4] xyxy in pixels from one scale's raw output and its 3 anchors."""
    gx, gy = _grid(raw.shape[-2], raw.shape[-1], raw.device)
    cx = (torch.sigmoid(raw[:, :, 0]) + gx) * stride
    cy = (torch.sigmoid(raw[:, :, 1]) + gy) * stride
    bw = torch.exp(raw[:, :, 2].clamp(max=8.0)) * anchors[:, 0].view(1, 3, 1, 1)
    bh = torch.exp(raw[:, :, 3].clamp(max=8.0)) * anchors[:, 1].view(1, 3, 1, 1)
    return torch.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], dim=-1)


def _wh_iou(wh: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
    inter = torch.min(wh[:, None, 0], anchors[None, :, 0]) * torch.min(wh[:, None, 1], anchors[None, :, 1])
    return inter / (wh[:, 0:1] * wh[:, 1:2] + (anchors[:, 0] * anchors[:, 1])[None] - inter).clamp(min=1e-9)


def yolo_loss(outputs: tuple[torch.Tensor, ...], targets: list[dict], anchors: torch.Tensor,
              strides: tuple[int, ...], image_size: tuple[int, int]) -> torch.Tensor:
    """YOLOv3 loss summed over scales and divided by the batch size. Labels in targets are 1..C."""
    batch = outputs[0].shape[0]
    img_h, img_w = image_size
    total = outputs[0].new_zeros(())
    gt_boxes = [t["boxes"].to(outputs[0].device, torch.float32) for t in targets]
    gt_labels = [t["labels"].to(outputs[0].device) for t in targets]
    best_anchor = [
        _wh_iou(torch.stack([b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]], 1).clamp(min=1e-3), anchors).argmax(1)
        if len(b) else b.new_zeros(0, dtype=torch.long) for b in gt_boxes]
    for level, (raw, stride) in enumerate(zip(outputs, strides)):
        level_anchors = anchors[3 * level:3 * level + 3]
        _, _, n_attr, h, w = raw.shape
        n_cls = n_attr - 5
        with torch.no_grad():
            pred_boxes = decode_boxes(raw.detach(), level_anchors, stride)
        obj_target = torch.zeros(batch, 3, h, w, device=raw.device)
        obj_weight = torch.ones(batch, 3, h, w, device=raw.device)
        xy_t, wh_t, scale_t, cls_t, index = [], [], [], [], []
        for b in range(batch):
            boxes = gt_boxes[b]
            if len(boxes) == 0:
                continue
            ious = box_iou(pred_boxes[b].reshape(-1, 4), boxes).max(1).values.view(3, h, w)
            obj_weight[b][ious > IGNORE_IOU] = 0.0  # already good predictions are not pushed to "no object"
            here = (best_anchor[b] >= 3 * level) & (best_anchor[b] < 3 * level + 3)
            if not bool(here.any()):
                continue
            sel = boxes[here]
            a = best_anchor[b][here] - 3 * level
            cx = (sel[:, 0] + sel[:, 2]) / 2 / stride
            cy = (sel[:, 1] + sel[:, 3]) / 2 / stride
            gi = cx.long().clamp(0, w - 1)
            gj = cy.long().clamp(0, h - 1)
            bw = (sel[:, 2] - sel[:, 0]).clamp(min=1e-3)
            bh = (sel[:, 3] - sel[:, 1]).clamp(min=1e-3)
            obj_target[b, a, gj, gi] = 1.0
            obj_weight[b, a, gj, gi] = 1.0
            index.append(torch.stack([torch.full_like(a, b), a, gj, gi], 1))
            xy_t.append(torch.stack([cx - gi.float(), cy - gj.float()], 1).clamp(0, 1))
            wh_t.append(torch.stack([torch.log(bw / level_anchors[a, 0]), torch.log(bh / level_anchors[a, 1])], 1))
            scale_t.append(2.0 - (bw * bh) / (img_w * img_h))
            one_hot = torch.zeros(len(sel), n_cls, device=raw.device)
            one_hot[torch.arange(len(sel)), (gt_labels[b][here] - 1).clamp(0, n_cls - 1)] = 1.0
            cls_t.append(one_hot)
        obj_logits = raw[:, :, 4]
        total = total + F.binary_cross_entropy_with_logits(obj_logits, obj_target, weight=obj_weight,
                                                           reduction="sum")
        if index:
            idx = torch.cat(index)
            picked = raw[idx[:, 0], idx[:, 1], :, idx[:, 2], idx[:, 3]]  # [N, 5 + C]
            scale = torch.cat(scale_t)[:, None]
            total = total + F.binary_cross_entropy_with_logits(
                picked[:, :2], torch.cat(xy_t), weight=scale * scale, reduction="sum")
            total = total + 0.5 * ((picked[:, 2:4] - torch.cat(wh_t)) ** 2 * scale * scale).sum()
            total = total + F.binary_cross_entropy_with_logits(picked[:, 5:], torch.cat(cls_t), reduction="sum")
    return total / batch


def yolo_detect(outputs: tuple[torch.Tensor, ...], anchors: torch.Tensor, strides: tuple[int, ...], *,
                score_thresh: float = 0.01, nms_thresh: float = 0.45, max_detections: int = 100) -> list[dict]:
    """Per image {boxes xyxy px, scores, labels 1..C} after class-wise NMS."""
    per_level = []
    for level, (raw, stride) in enumerate(zip(outputs, strides)):
        boxes = decode_boxes(raw, anchors[3 * level:3 * level + 3], stride)
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
        results.append({"boxes": bx[kept], "scores": sc[kept], "labels": lb[kept] + 1})
    return results


def check_chip_multiple(chip: int) -> None:
    """YOLOv3 needs chips that are a multiple of 32 (its coarsest stride)."""
    if chip % 32:
        raise ValueError(f"YOLOV3 needs a chip size that is a multiple of 32, got {chip}; "
                         f"pass chip_size {max(32, int(math.floor(chip / 32)) * 32)} or "
                         f"{int(math.ceil(chip / 32)) * 32} in arguments")
