"""DETReg's self-supervised pre-training (Bar et al. 2022): the detector learns to find *regions* before it
learns classes.

Labels are not used. For every training chip, unsupervised region proposals stand in for objects; the
detector (one class, "object") is trained to localise them with the usual set loss, and an extra head to
predict each matched region's embedding taken from a frozen copy of the starting backbone. The detection
model then starts from the pre-trained transformer, box head and backbone; its class head starts fresh.

Proposals: a selective-search-like hierarchical grouping. The chip is cut into a grid of cells (16 x 16 at
most); adjacent regions are merged greedily by similarity of mean colour and texture, preferring small
regions and regions that fill their bounding box (Uijlings et al. 2013); every merged region's box is a
proposal. Boxes are ranked as selective search does (hierarchy level from the top times a seeded random
number) and the top-k distinct ones are kept (DETReg uses 30).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.ops import box_iou, roi_align

from gpjobs.training.models.detr_model import DeformableDETR, normalised_targets, set_loss

GRID = 16


def region_proposals(image: torch.Tensor, k: int = 30, *, seed: int = 0) -> torch.Tensor:
    """Up to `k` proposal boxes (xyxy pixels, float32 [k', 4]) of one normalised chip [C, H, W]."""
    _, h, w = image.shape
    gh, gw = min(GRID, h), min(GRID, w)
    x = image.float()[None]
    colour = F.adaptive_avg_pool2d(x, (gh, gw))[0]
    dy, dx = x[..., 1:, :] - x[..., :-1, :], x[..., :, 1:] - x[..., :, :-1]
    edges = F.pad(dy.abs(), (0, 0, 0, 1)) + F.pad(dx.abs(), (0, 1, 0, 0))
    texture = F.adaptive_avg_pool2d(edges, (gh, gw))[0]
    feats = torch.cat([colour, texture]).flatten(1).T.numpy().astype(np.float64)  # [cells, 2C]
    scale = float(feats.std()) or 1.0
    cells = gh * gw
    # region state: feature sum, size (cells), box in cells (x0, y0, x1, y1), neighbours
    fsum = {i: feats[i].copy() for i in range(cells)}
    size = {i: 1 for i in range(cells)}
    box = {i: (i % gw, i // gw, i % gw + 1, i // gw + 1) for i in range(cells)}
    neighbours: dict[int, set[int]] = {i: set() for i in range(cells)}
    for i in range(cells):
        if i % gw + 1 < gw:
            neighbours[i].add(i + 1)
            neighbours[i + 1].add(i)
        if i + gw < cells:
            neighbours[i].add(i + gw)
            neighbours[i + gw].add(i)

    def similarity(a: int, b: int) -> float:
        diff = np.abs(fsum[a] / size[a] - fsum[b] / size[b]).mean() / scale
        union = (max(box[a][2], box[b][2]) - min(box[a][0], box[b][0])) * (
            max(box[a][3], box[b][3]) - min(box[a][1], box[b][1])
        )
        fill = 1.0 - (union - size[a] - size[b]) / cells
        return math.exp(-diff) + (1.0 - (size[a] + size[b]) / cells) + fill

    pairs = {(a, b): similarity(a, b) for a in range(cells) for b in neighbours[a] if a < b}
    levels: list[tuple[int, tuple[int, int, int, int]]] = []
    nxt = cells
    while pairs:
        a, b = max(pairs, key=pairs.get)
        new = nxt
        nxt += 1
        fsum[new], size[new] = fsum[a] + fsum[b], size[a] + size[b]
        box[new] = (
            min(box[a][0], box[b][0]),
            min(box[a][1], box[b][1]),
            max(box[a][2], box[b][2]),
            max(box[a][3], box[b][3]),
        )
        neighbours[new] = (neighbours[a] | neighbours[b]) - {a, b}
        for old in (a, b):
            for n in neighbours.pop(old):
                neighbours.get(n, set()).discard(old)
        pairs = {p: s for p, s in pairs.items() if a not in p and b not in p}
        for n in neighbours[new]:
            neighbours[n].add(new)
            pairs[(n, new)] = similarity(n, new)
        levels.append((size[new], box[new]))
    # selective search's ranking: the hierarchy level counted from the top (the last merge is 1), times a
    # seeded random factor; the lowest ranks are kept, so large regions lead and finer ones follow
    rng = np.random.default_rng(seed)
    ranks = np.arange(len(levels), 0, -1) * rng.random(len(levels))
    sx, sy = w / gw, h / gh
    kept: list[list[float]] = []
    for i in np.argsort(ranks):
        region_cells, (x0, y0, x1, y1) = levels[i]
        if region_cells >= cells:  # the whole chip is no proposal
            continue
        candidate = [x0 * sx, y0 * sy, x1 * sx, y1 * sy]
        if kept and float(box_iou(torch.tensor([candidate]), torch.tensor(kept)).max()) > 0.9:
            continue
        kept.append(candidate)
        if len(kept) >= k:
            break
    return torch.tensor(kept, dtype=torch.float32).reshape(-1, 4)


@torch.no_grad()
def embedding_targets(teacher: torch.nn.Module, images: torch.Tensor, boxes: list[torch.Tensor]) -> list[torch.Tensor]:
    """Per image, the frozen backbone's deepest features pooled over each box, standardised per vector."""
    feats = list(teacher(images).values())[-1]
    stride = images.shape[-1] / feats.shape[-1]
    pooled = roi_align(
        feats.float(), [b.to(feats.device) for b in boxes], output_size=(2, 2), spatial_scale=1.0 / stride, aligned=True
    ).mean((2, 3))
    pooled = (pooled - pooled.mean(1, keepdim=True)) / (pooled.std(1, keepdim=True) + 1e-6)
    return list(pooled.split([len(b) for b in boxes]))


def pretrain(
    model: DeformableDETR,
    batches: Callable[[], Iterable[Any]],
    *,
    epochs: int,
    lr: float,
    proposals: int,
    device: torch.device,
    say: Callable[[str, str], None],
    check_stop: Callable[[], None] = lambda: None,
) -> list[float]:
    """Train `model` (one class, an object-embedding head) on proposals of the chips `batches()` yields;
    returns the mean loss of each epoch."""
    if model.object_embed is None or model.num_classes != 1:
        raise ValueError("DETReg pre-training needs a one-class model with an object-embedding head")
    model.to(device).train()
    teacher = copy.deepcopy(model.backbone).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    backbone_ids = {id(p) for p in model.backbone.parameters()}
    others = [p for p in model.parameters() if id(p) not in backbone_ids]
    optimizer = torch.optim.AdamW(
        [{"params": list(model.backbone.parameters()), "lr": lr / 10}, {"params": others, "lr": lr}], weight_decay=1e-4
    )
    history, step = [], 0
    for epoch in range(1, epochs + 1):
        losses = []
        for images, _ in batches():  # the labels are not used: that is the point
            check_stop()
            images = images.to(device)
            h, w = images.shape[-2:]
            boxes = [region_proposals(img, proposals, seed=step * 1000 + i) for i, img in enumerate(images.cpu())]
            step += 1
            targets = normalised_targets(
                [
                    {"boxes": b.to(device), "labels": torch.ones(len(b), dtype=torch.int64, device=device)}
                    for b in boxes
                ],
                h,
                w,
            )
            wanted = embedding_targets(teacher, images, boxes)
            out = model.forward_raw(images)
            loss = set_loss(
                out["logits"], out["boxes"], targets, embeds=model.object_embed(out["hidden"]), embed_targets=wanted
            )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 0.1)
            optimizer.step()
            losses.append(float(loss.detach()))
        history.append(float(np.mean(losses)) if losses else math.nan)
        say(
            "info",
            f"DETReg pre-training epoch {epoch}/{epochs}: loss {history[-1]:.4f} "
            f"(up to {proposals} region proposals per chip, labels unused)",
        )
    model.eval()
    return history
