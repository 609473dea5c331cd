"""SSD with arcgis.learn's anchor semantics: grids x zooms x ratios, tanh box offsets, one-vs-all classes.

The head works over any feature backbone: for each grid size it takes the deepest feature map that still has
at least that many cells, applies a 3x3 conv block + dropout, pools to exactly g x g and predicts, per cell
and anchor, 4 box offsets and C class logits (background is "no class fires", as in arcgis' BCE loss).
Matching: every truth takes its best anchor, and anchors overlapping a truth by IoU > 0.4 are positive too.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import batched_nms, box_iou, sigmoid_focal_loss

from gpjobs.training.models.detection.anchors import ssd_anchors

MATCH_IOU = 0.4


def _pick_tap(strides: list[int], chip: int, grid: int) -> int:
    """Index of the deepest tap whose map (chip / stride cells) still has >= grid cells; else the shallowest."""
    for i in range(len(strides) - 1, -1, -1):
        if chip // strides[i] >= grid:
            return i
    return 0


class SSDNet(nn.Module):
    """SSD over a feature backbone. `raw(images)` -> (box offsets [B, N, 4], class logits [B, N, C]) for the N
    anchors of `ssd_anchors(grids, zooms, ratios)`; `losses`, `detect` and `forward` as common.py describes.

    The grids and anchor shapes are buffers: a state dict rebuilds the head it belongs to on load, so a
    package restores a model whose grids were chosen from the training data.
    """

    def __init__(
        self,
        backbone: nn.Module,
        num_classes: int,
        chip: int,
        grids: list[int],
        zooms: list[float],
        ratios: list[list[float]],
        *,
        drop: float = 0.3,
        bias: float = -4.0,
        width: int = 256,
        focal: bool = False,
        location_factor: float | None = None,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.num_classes = num_classes
        self.chip, self.drop, self.bias, self.width = chip, drop, bias, width
        self.focal, self.location_factor = focal, location_factor
        self._build_head([int(g) for g in grids], [(z * float(r[0]), z * float(r[1])) for z in zooms for r in ratios])

    def _build_head(self, grids: list[int], shapes: list[tuple[float, float]]) -> None:
        self.grids, self.k = grids, len(shapes)
        strides, channels = list(self.backbone.strides), list(self.backbone.out_channels)
        self.taps = [_pick_tap(strides, self.chip, g) for g in grids]
        width = self.width
        self.blocks = nn.ModuleList(
            nn.Sequential(
                nn.Conv2d(channels[t], width, 3, padding=1, bias=False),
                nn.BatchNorm2d(width),
                nn.ReLU(inplace=True),
                nn.Dropout(self.drop),
            )
            for t in self.taps
        )
        self.box_out = nn.ModuleList(nn.Conv2d(width, self.k * 4, 3, padding=1) for _ in grids)
        self.cls_out = nn.ModuleList(nn.Conv2d(width, self.k * self.num_classes, 3, padding=1) for _ in grids)
        for conv in self.cls_out:  # arcgis' `bias`: classes start "off", so the early loss is not a flood of FPs
            nn.init.constant_(conv.bias, self.bias)
        anchors = torch.from_numpy(ssd_anchors(grids, [1.0], shapes))
        cell = torch.cat([torch.full((g * g * self.k,), 1.0 / g) for g in grids])
        self.register_buffer("anchors", anchors)  # [N, 4] cx, cy, w, h (chip fractions)
        self.register_buffer("cell_sizes", cell)  # [N]
        self.register_buffer("grid_sizes", torch.tensor(grids, dtype=torch.long))
        self.register_buffer("anchor_shapes", torch.tensor(shapes, dtype=torch.float32).reshape(-1, 2))

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        grids, shapes = state_dict.get("grid_sizes"), state_dict.get("anchor_shapes")
        if (
            grids is not None
            and shapes is not None
            and (
                grids.tolist() != self.grids
                or shapes.shape != self.anchor_shapes.shape
                or not torch.allclose(shapes.float(), self.anchor_shapes)
            )
        ):
            self._build_head([int(g) for g in grids.tolist()], [tuple(s) for s in shapes.tolist()])
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    def raw(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feats = list(self.backbone(images).values())
        boxes, logits = [], []
        for g, tap, block, box_out, cls_out in zip(self.grids, self.taps, self.blocks, self.box_out, self.cls_out):
            x = block(feats[tap])
            if x.shape[-1] != g or x.shape[-2] != g:
                x = F.adaptive_avg_pool2d(x, g) if x.shape[-1] >= g else F.interpolate(x, size=(g, g))
            boxes.append(box_out(x).permute(0, 2, 3, 1).reshape(x.shape[0], -1, 4))
            logits.append(cls_out(x).permute(0, 2, 3, 1).reshape(x.shape[0], -1, self.num_classes))
        return torch.cat(boxes, 1), torch.cat(logits, 1)

    def losses(self, images: torch.Tensor, targets: list[dict]) -> torch.Tensor:
        return ssd_loss(
            self.raw(images),
            targets,
            self.anchors,
            self.cell_sizes,
            tuple(images.shape[-2:]),
            focal=self.focal,
            location_factor=self.location_factor,
        )

    def detect(self, images: torch.Tensor) -> list[dict]:
        return ssd_detect(self.raw(images), self.anchors, self.cell_sizes, tuple(images.shape[-2:]))

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


def decode(offsets: torch.Tensor, anchors: torch.Tensor, cell_sizes: torch.Tensor) -> torch.Tensor:
    """Normalised xyxy boxes from raw offsets (arcgis' activ_to_bbox: tanh-bounded shifts and scalings)."""
    act = torch.tanh(offsets)
    centres = act[..., :2] / 2 * cell_sizes[:, None] + anchors[:, :2]
    sizes = (act[..., 2:] / 2 + 1) * anchors[:, 2:]
    return torch.cat([centres - sizes / 2, centres + sizes / 2], -1)


def _cxcywh_to_xyxy(a: torch.Tensor) -> torch.Tensor:
    return torch.cat([a[:, :2] - a[:, 2:] / 2, a[:, :2] + a[:, 2:] / 2], 1)


def match_anchors(gt_boxes: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
    """For each anchor, the index of its truth or -1 (IoU > 0.4, plus each truth's best anchor forced)."""
    n = anchors.shape[0]
    if gt_boxes.numel() == 0:
        return torch.full((n,), -1, dtype=torch.long, device=anchors.device)
    iou = box_iou(gt_boxes, _cxcywh_to_xyxy(anchors))  # [G, N]
    best_gt_iou, best_gt = iou.max(0)
    best_anchor = iou.argmax(1)
    best_gt[best_anchor] = torch.arange(len(gt_boxes), device=anchors.device)
    best_gt_iou[best_anchor] = 2.0
    return torch.where(best_gt_iou > MATCH_IOU, best_gt, torch.full_like(best_gt, -1))


def ssd_loss(
    outputs: tuple[torch.Tensor, torch.Tensor],
    targets: list[dict],
    anchors: torch.Tensor,
    cell_sizes: torch.Tensor,
    image_size: tuple[int, int],
    *,
    focal: bool = False,
    location_factor: float | None = None,
) -> torch.Tensor:
    """L1 box loss on positive anchors + one-vs-all BCE (or focal, alpha .25 gamma 1) classes, per positive."""
    offsets, logits = outputs
    h, w = image_size
    scale = offsets.new_tensor([w, h, w, h])
    loc_total = offsets.new_zeros(())
    cls_total = offsets.new_zeros(())
    for b, target in enumerate(targets):
        gt = target["boxes"].to(offsets.device, torch.float32) / scale
        labels = target["labels"].to(offsets.device)
        match = match_anchors(gt, anchors)
        positive = match >= 0
        cls_target = torch.zeros_like(logits[b])
        n_pos = int(positive.sum())
        if n_pos:
            cls_target[positive, (labels[match[positive]] - 1).clamp(0, logits.shape[-1] - 1)] = 1.0
            pred = decode(offsets[b][positive], anchors[positive], cell_sizes[positive])
            loc_total = loc_total + (pred - gt[match[positive]]).abs().mean()
        if focal:
            cls_loss = sigmoid_focal_loss(logits[b], cls_target, alpha=0.25, gamma=1.0, reduction="sum")
        else:
            cls_loss = F.binary_cross_entropy_with_logits(logits[b], cls_target, reduction="sum")
        cls_total = cls_total + cls_loss / max(n_pos, 1)
    if location_factor is not None:
        return (location_factor * loc_total + (1 - location_factor) * cls_total) / len(targets)
    return (loc_total + cls_total) / len(targets)


def ssd_detect(
    outputs: tuple[torch.Tensor, torch.Tensor],
    anchors: torch.Tensor,
    cell_sizes: torch.Tensor,
    image_size: tuple[int, int],
    *,
    score_thresh: float = 0.05,
    nms_thresh: float = 0.1,
    max_detections: int = 100,
) -> list[dict]:
    """Per image {boxes xyxy px, scores, labels 1..C}; NMS overlap 0.1 as arcgis' SSD uses at inference."""
    offsets, logits = outputs
    h, w = image_size
    scale = offsets.new_tensor([w, h, w, h])
    results = []
    for b in range(offsets.shape[0]):
        boxes = decode(offsets[b], anchors, cell_sizes).clamp(0, 1) * scale
        scores, labels = torch.sigmoid(logits[b]).max(1)
        keep = scores >= score_thresh
        boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
        kept = batched_nms(boxes, scores, labels, nms_thresh)[:max_detections]
        results.append({"boxes": boxes[kept], "scores": scores[kept], "labels": labels[kept] + 1})
    return results
