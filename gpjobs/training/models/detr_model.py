"""Deformable DETR (Zhu et al. 2021), the detector DETReg trains: backbone taps -> deformable encoder ->
decoder with learned queries -> class and box per query, matched one-to-one to the targets.

Single-stage, no box refinement (arcgis.learn's DETReg configuration): 4 feature levels (backbone strides
8/16/32 plus a strided conv for 64), 6 encoder and 6 decoder layers of width 256, 8 heads, 4 sampling points,
100 queries, auxiliary losses on every decoder layer. The chip is upsampled 1.5x inside the model, as
arcgis.learn does for DETReg. Boxes are normalised (cx, cy, w, h) inside; `detect` returns pixels.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import generalized_box_iou_loss, sigmoid_focal_loss

from gpjobs.training.models.detection.fpn_adapter import group_norm
from gpjobs.training.models.detr_attention import MSDeformAttn
from gpjobs.training.models.detr_matcher import (
    FOCAL_ALPHA,
    FOCAL_GAMMA,
    HungarianMatcher,
    box_cxcywh_to_xyxy,
    box_xyxy_to_cxcywh,
)

SCORE_THRESH = 0.05  # detections below this score are dropped (torchvision's box_score_thresh)
LOSS_WEIGHTS = {"class": 2.0, "bbox": 5.0, "giou": 2.0}  # Deformable DETR / arcgis.learn DETReg


def inverse_sigmoid(x: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    x = x.clamp(0, 1)
    return torch.log(x.clamp(min=eps) / (1 - x).clamp(min=eps))


def sine_position(h: int, w: int, dim: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """DETR's normalised sine/cosine position encoding of an h x w map: [h*w, dim]."""
    half = dim // 2
    y = (torch.arange(h, device=device, dtype=torch.float32) + 0.5) / h * 2 * math.pi
    x = (torch.arange(w, device=device, dtype=torch.float32) + 0.5) / w * 2 * math.pi
    freq = 10000 ** (2 * (torch.arange(half, device=device) // 2).float() / half)
    py, px = y[:, None] / freq, x[:, None] / freq
    py = torch.stack([py[:, 0::2].sin(), py[:, 1::2].cos()], 2).flatten(1)
    px = torch.stack([px[:, 0::2].sin(), px[:, 1::2].cos()], 2).flatten(1)
    pos = torch.cat([py[:, None, :].expand(h, w, half), px[None, :, :].expand(h, w, half)], -1)
    return pos.reshape(h * w, dim).to(dtype)


class MLP(nn.Sequential):
    def __init__(self, cin: int, hidden: int, cout: int, layers: int) -> None:
        dims = [cin] + [hidden] * (layers - 1)
        mods: list[nn.Module] = []
        for a, b in zip(dims, dims[1:]):
            mods += [nn.Linear(a, b), nn.ReLU(inplace=True)]
        super().__init__(*mods, nn.Linear(dims[-1], cout))


class EncoderLayer(nn.Module):
    def __init__(self, d: int, ffn: int, dropout: float, levels: int, heads: int, points: int) -> None:
        super().__init__()
        self.attn = MSDeformAttn(d, levels, heads, points)
        self.norm1, self.norm2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.ffn = nn.Sequential(nn.Linear(d, ffn), nn.ReLU(inplace=True), nn.Dropout(dropout), nn.Linear(ffn, d))
        self.drop1, self.drop2 = nn.Dropout(dropout), nn.Dropout(dropout)

    def forward(
        self, src: torch.Tensor, pos: torch.Tensor, reference: torch.Tensor, shapes: Sequence[tuple[int, int]]
    ) -> torch.Tensor:
        src = self.norm1(src + self.drop1(self.attn(src + pos, reference, src, shapes)))
        return self.norm2(src + self.drop2(self.ffn(src)))


class DecoderLayer(nn.Module):
    def __init__(self, d: int, ffn: int, dropout: float, levels: int, heads: int, points: int) -> None:
        super().__init__()
        # no dropout inside the attention weights: nn.MultiheadAttention's is not an nn.Dropout module, so the
        # validation loss mode (Dropout modules in eval) could not switch it off; its output is dropped out below
        self.self_attn = nn.MultiheadAttention(d, heads, batch_first=True)
        self.cross_attn = MSDeformAttn(d, levels, heads, points)
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(d), nn.LayerNorm(d), nn.LayerNorm(d)
        self.ffn = nn.Sequential(nn.Linear(d, ffn), nn.ReLU(inplace=True), nn.Dropout(dropout), nn.Linear(ffn, d))
        self.drop1, self.drop2, self.drop3 = nn.Dropout(dropout), nn.Dropout(dropout), nn.Dropout(dropout)

    def forward(
        self,
        tgt: torch.Tensor,
        query_pos: torch.Tensor,
        reference: torch.Tensor,
        memory: torch.Tensor,
        shapes: Sequence[tuple[int, int]],
    ) -> torch.Tensor:
        q = tgt + query_pos
        tgt = self.norm2(tgt + self.drop2(self.self_attn(q, q, tgt, need_weights=False)[0]))
        tgt = self.norm1(tgt + self.drop1(self.cross_attn(tgt + query_pos, reference, memory, shapes)))
        return self.norm3(tgt + self.drop3(self.ffn(tgt)))


class DeformableDETR(nn.Module):
    """The detector; `num_classes` sigmoid outputs (no background class), `embed_dim` > 0 adds DETReg's
    object-embedding head (used by the self-supervised pre-training only)."""

    def __init__(
        self,
        backbone: nn.Module,
        num_classes: int,
        *,
        d_model: int = 256,
        heads: int = 8,
        enc_layers: int = 6,
        dec_layers: int = 6,
        ffn: int = 1024,
        dropout: float = 0.1,
        num_queries: int = 100,
        levels: int = 4,
        points: int = 4,
        input_scale: float = 1.5,
        embed_dim: int = 0,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.num_classes, self.num_queries, self.input_scale = num_classes, num_queries, input_scale
        strides = list(backbone.strides)
        usable = [i for i, s in enumerate(strides) if s >= 8] or [len(strides) - 1]
        self.taps = usable[-(levels - 1) :] if levels > 1 else usable[-1:]
        proj = [
            nn.Sequential(nn.Conv2d(int(backbone.out_channels[i]), d_model, 1), group_norm(d_model)) for i in self.taps
        ]
        cin = int(backbone.out_channels[self.taps[-1]])
        for _ in range(levels - len(self.taps)):  # extra coarser levels: strided 3x3 convs
            proj.append(nn.Sequential(nn.Conv2d(cin, d_model, 3, stride=2, padding=1), group_norm(d_model)))
            cin = d_model
        self.input_proj = nn.ModuleList(proj)
        self.level_embed = nn.Parameter(torch.empty(levels, d_model).normal_())
        self.encoder = nn.ModuleList(
            EncoderLayer(d_model, ffn, dropout, levels, heads, points) for _ in range(enc_layers)
        )
        self.decoder = nn.ModuleList(
            DecoderLayer(d_model, ffn, dropout, levels, heads, points) for _ in range(dec_layers)
        )
        self.query_embed = nn.Embedding(num_queries, 2 * d_model)
        self.reference_points = nn.Linear(d_model, 2)
        self.class_embed = nn.Linear(d_model, num_classes)
        self.bbox_embed = MLP(d_model, d_model, 4, 3)
        self.object_embed = MLP(d_model, d_model, embed_dim, 2) if embed_dim else None
        self.d_model = d_model
        self._init_heads()

    def _init_heads(self) -> None:
        for conv in self.input_proj:
            nn.init.xavier_uniform_(conv[0].weight, gain=1)
            nn.init.zeros_(conv[0].bias)
        nn.init.xavier_uniform_(self.reference_points.weight)
        nn.init.zeros_(self.reference_points.bias)
        nn.init.constant_(self.class_embed.bias, -math.log((1 - 0.01) / 0.01))  # prior 0.01 for focal loss
        nn.init.zeros_(self.bbox_embed[-1].weight)
        nn.init.zeros_(self.bbox_embed[-1].bias)

    def levels(self, images: torch.Tensor) -> list[torch.Tensor]:
        feats = list(self.backbone(images).values())
        maps = [proj(feats[i]) for proj, i in zip(self.input_proj, self.taps)]
        x = feats[self.taps[-1]]
        for proj in self.input_proj[len(self.taps) :]:
            x = proj(x)
            maps.append(x)
        return maps

    def forward_raw(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per decoder layer: logits [L, B, Q, K], boxes [L, B, Q, 4] (normalised cxcywh), hidden [L, B, Q, C]."""
        if self.input_scale != 1.0:
            images = F.interpolate(images, scale_factor=self.input_scale, mode="bilinear", align_corners=False)
        maps = self.levels(images)
        shapes = [(int(m.shape[-2]), int(m.shape[-1])) for m in maps]
        src = torch.cat([m.flatten(2).transpose(1, 2) for m in maps], 1)
        pos = torch.cat(
            [
                sine_position(h, w, self.d_model, src.device, src.dtype) + self.level_embed[i]
                for i, (h, w) in enumerate(shapes)
            ],
            0,
        )[None]
        centres = []
        for h, w in shapes:  # each encoder query refers to its own pixel centre, on every level
            ys, xs = torch.meshgrid(
                (torch.arange(h, device=src.device, dtype=src.dtype) + 0.5) / h,
                (torch.arange(w, device=src.device, dtype=src.dtype) + 0.5) / w,
                indexing="ij",
            )
            centres.append(torch.stack([xs.flatten(), ys.flatten()], -1))
        reference = torch.cat(centres, 0)[None, :, None, :].expand(src.shape[0], -1, len(shapes), -1)
        memory = src
        for layer in self.encoder:
            memory = layer(memory, pos, reference, shapes)
        query_pos, tgt = self.query_embed.weight.split(self.d_model, dim=1)
        query_pos = query_pos[None].expand(src.shape[0], -1, -1)
        tgt = tgt[None].expand(src.shape[0], -1, -1)
        ref = self.reference_points(query_pos).sigmoid()
        ref_levels = ref[:, :, None, :].expand(-1, -1, len(shapes), -1)
        hidden = []
        for layer in self.decoder:
            tgt = layer(tgt, query_pos, ref_levels, memory, shapes)
            hidden.append(tgt)
        hs = torch.stack(hidden)
        offsets = self.bbox_embed(hs)
        centre = offsets[..., :2] + inverse_sigmoid(ref)[None]
        boxes = torch.cat([centre, offsets[..., 2:]], -1).sigmoid()
        return {"logits": self.class_embed(hs), "boxes": boxes, "hidden": hs}

    # --- the detection interface (detection/common.py) ---

    def losses(self, images: torch.Tensor, targets: list[dict[str, torch.Tensor]]) -> torch.Tensor:
        out = self.forward_raw(images)
        h, w = images.shape[-2:]
        return set_loss(out["logits"], out["boxes"], normalised_targets(targets, h, w))

    def detect(self, images: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        out = self.forward_raw(images)
        return postprocess(out["logits"][-1], out["boxes"][-1], images.shape[-2:])

    def losses_and_detections(
        self, images: torch.Tensor, targets: list[dict[str, torch.Tensor]]
    ) -> tuple[torch.Tensor, list[dict[str, torch.Tensor]]]:
        """Validation: with Dropout off the forward is the same for both, so it runs once."""
        out = self.forward_raw(images)
        h, w = images.shape[-2:]
        loss = set_loss(out["logits"], out["boxes"], normalised_targets(targets, h, w))
        return loss, postprocess(out["logits"][-1], out["boxes"][-1], images.shape[-2:])

    def forward(self, images: torch.Tensor):
        """Train mode: forward_raw's outputs. Eval: the batch's top-k candidates (`candidates`)."""
        if self.training:
            return self.forward_raw(images)
        out = self.forward_raw(images)
        return candidates(out["logits"][-1], out["boxes"][-1], images.shape[-2:])


def normalised_targets(targets: list[dict[str, torch.Tensor]], h: int, w: int) -> list[dict[str, torch.Tensor]]:
    """Pixel xyxy boxes / labels 1..K -> normalised cxcywh / class indices 0..K-1 (degenerate boxes dropped)."""
    out = []
    for t in targets:
        boxes = t["boxes"].float()
        keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        scale = torch.tensor([w, h, w, h], dtype=boxes.dtype, device=boxes.device)
        out.append({"boxes": box_xyxy_to_cxcywh(boxes[keep] / scale).clamp(0, 1), "labels": t["labels"][keep] - 1})
    return out


def set_loss(
    logits: torch.Tensor,
    boxes: torch.Tensor,
    targets: list[dict[str, torch.Tensor]],
    *,
    matcher: HungarianMatcher | None = None,
    embeds: torch.Tensor | None = None,
    embed_targets: list[torch.Tensor] | None = None,
    embed_weight: float = 1.0,
) -> torch.Tensor:
    """Sum over decoder layers (auxiliary losses) of 2 * focal + 5 * L1 + 2 * GIoU on matched pairs, each
    normalised by the number of target boxes; with `embeds`, DETReg's L1 object-embedding loss too."""
    matcher = matcher or HungarianMatcher()
    num_boxes = max(sum(int(t["labels"].numel()) for t in targets), 1)
    total = logits.new_zeros(())
    for layer in range(logits.shape[0]):
        layer_logits, layer_boxes = logits[layer], boxes[layer]
        matches = matcher(layer_logits, layer_boxes, targets)
        batch_idx = torch.cat([torch.full_like(q, b) for b, (q, _) in enumerate(matches)]).to(logits.device)
        query_idx = torch.cat([q for q, _ in matches]).to(logits.device)
        onehot = torch.zeros_like(layer_logits)
        if query_idx.numel():
            classes = torch.cat([t["labels"][j.to(t["labels"].device)] for t, (_, j) in zip(targets, matches)])
            onehot[batch_idx, query_idx, classes.to(logits.device)] = 1.0
        loss_class = (
            sigmoid_focal_loss(
                layer_logits.float(), onehot.float(), alpha=FOCAL_ALPHA, gamma=FOCAL_GAMMA, reduction="sum"
            )
            / num_boxes
        )
        total = total + LOSS_WEIGHTS["class"] * loss_class
        if not query_idx.numel():
            continue
        pred = layer_boxes[batch_idx, query_idx].float()
        truth = torch.cat([t["boxes"][j.to(t["boxes"].device)] for t, (_, j) in zip(targets, matches)]).float()
        total = total + LOSS_WEIGHTS["bbox"] * F.l1_loss(pred, truth, reduction="sum") / num_boxes
        total = (
            total
            + LOSS_WEIGHTS["giou"]
            * generalized_box_iou_loss(box_cxcywh_to_xyxy(pred), box_cxcywh_to_xyxy(truth), reduction="sum")
            / num_boxes
        )
        if embeds is not None and embed_targets is not None:
            wanted = torch.cat([e[j.to(e.device)] for e, (_, j) in zip(embed_targets, matches)]).float()
            got = embeds[layer][batch_idx, query_idx].float()
            total = total + embed_weight * (got - wanted).abs().mean(-1).sum() / num_boxes
    return total


def candidates(
    logits: torch.Tensor, boxes: torch.Tensor, size: Any, top_k: int = 100
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Deformable DETR's top-k over (query, class) scores before the score threshold: boxes [B, k, 4] in pixels
    of the input, scores [B, k], labels [B, k] 0..K-1. What the package's traced network gives its PRF."""
    h, w = int(size[0]), int(size[1])
    prob = logits.float().sigmoid()
    _, q, k = prob.shape
    scores, index = prob.flatten(1).topk(min(top_k, q * k), dim=1)
    picked = torch.gather(boxes.float(), 1, torch.div(index, k, rounding_mode="floor")[..., None].expand(-1, -1, 4))
    scale = torch.tensor([w, h, w, h], dtype=picked.dtype, device=picked.device)
    return box_cxcywh_to_xyxy(picked) * scale, scores, index % k


# what the PRF's dense decoder does after `candidates` (no NMS: DETR's set loss makes duplicates rare)
DECODER_SPEC = {"decoder": "dense", "score_thresh": SCORE_THRESH, "nms_thresh": 1.0, "max_detections": 100}


def postprocess(logits: torch.Tensor, boxes: torch.Tensor, size: Any) -> list[dict[str, torch.Tensor]]:
    """The candidates above the score threshold, per image; labels 1..K."""
    pixels, scores, labels = candidates(logits, boxes, size)
    out = []
    for i in range(pixels.shape[0]):
        keep = scores[i] > SCORE_THRESH
        out.append({"boxes": pixels[i][keep], "scores": scores[i][keep], "labels": labels[i][keep] + 1})
    return out
