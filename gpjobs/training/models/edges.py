"""Edge detection: HED_EDGEDETECTOR and BDCN_EDGEDETECTOR on Classified_Tiles (models.md §1A/1B/1E).

Targets are binary edge maps derived from the label rasters (`edge_targets`):
  - "labels": the labelled pixels are the edges (arcgis' binary edge exports: class 1 = edge line);
  - "boundaries": pixels whose 3x3 neighbourhood holds more than one class (incl. background), i.e. the
    class boundaries of an ordinary segmentation export, two pixels wide;
  - "auto" (default): per chip, "labels" when the labelled pixels are thin (at least 60% of them touch
    another class: lines up to ~3 px wide), else "boundaries" (filled areas).
The model is one edge class: `.emd` Classes keep the export's class when it has exactly one, else a single
class "edge" (value 1) replaces them (said in a job message).

HED (Xie & Tu 2015): a side output (3x3 conv, 1x1 score) on every backbone stage, upsampled to the chip, fused by a 1x1 conv;
class-balanced BCE on every side output and on the fuse.
BDCN (He et al. 2019), simplified: each stage has a scale-enhancement module (3x3 conv + dilated 3x3 convs,
rates 4/8/12, summed) and two side outputs, accumulated shallow-to-deep and deep-to-shallow (the
bi-directional cascade, 2 x stages side outputs); loss 0.5 x balanced BCE per side + 1.1 x on the fuse,
negatives weighted x1.1. The reference's per-layer SEMs inside a stage are one SEM per backbone tap here.
`forward(x)` returns 2-channel scores (no-edge 0, edge logit) so argmax consumers (the shipped inference
script, ArcGIS-style classifiers) see class index 1 = edge.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from gpjobs.training.backbones import build_backbone
from gpjobs.training.models.base import ModelFamily
from gpjobs.training.models.binary import BinaryCounts, balanced_bce, binary_picture, morph_range, save_panels

EDGE_TARGETS = ("auto", "labels", "boundaries")


def edge_targets(mask: torch.Tensor, mode: str = "auto") -> torch.Tensor:
    """Binary edge map (B, H, W) bool from model-index masks (B, H, W) (0 = NoData/background)."""
    foreground = mask > 0
    if mode == "labels":
        return foreground
    hi, lo = morph_range(mask)
    boundary = hi != lo
    if mode == "boundaries":
        return boundary
    fg_count = foreground.flatten(1).sum(1)
    touching = (boundary & foreground).flatten(1).sum(1)
    thin = (fg_count > 0) & (5 * touching >= 3 * fg_count)  # lines up to ~3 px wide
    return torch.where(thin[:, None, None], foreground, boundary)


class SEM(nn.Module):
    """BDCN scale-enhancement module: a 3x3 conv, then dilated 3x3 convs whose outputs are summed."""

    def __init__(self, cin: int, width: int = 32, rates: tuple[int, ...] = (4, 8, 12)) -> None:
        super().__init__()
        # BatchNorm (not in the reference, trained with SGD at lr 1e-6): keeps the summed branches and the
        # cascaded side sums in range at the engine's AdamW learning rates.
        self.reduce = nn.Sequential(
            nn.Conv2d(cin, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True)
        )
        self.dilated = nn.ModuleList(nn.Conv2d(width, width, 3, padding=r, dilation=r) for r in rates)
        self.norm = nn.BatchNorm2d(width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.reduce(x)
        return self.norm(x + sum(conv(x) for conv in self.dilated))


class EdgeNet(nn.Module):
    """Backbone taps -> side outputs (HED: one per tap; BDCN: two per tap, cascaded) -> fuse."""

    def __init__(self, backbone: nn.Module, kind: str) -> None:
        super().__init__()
        self.backbone = backbone
        self.kind = kind
        channels = list(backbone.out_channels)
        n = len(channels)
        if kind == "hed":
            # A 3x3 conv before each 1x1 score (the reference scores the VGG convs directly): without
            # ImageNet weights the raw stage features are too weak for a linear edge read-out.
            self.sides = nn.ModuleList(
                nn.Sequential(nn.Conv2d(c, 32, 3, padding=1), nn.ReLU(inplace=True), nn.Conv2d(32, 1, 1))
                for c in channels
            )
            n_sides = n
        else:
            self.sems = nn.ModuleList(SEM(c) for c in channels)
            self.s2d = nn.ModuleList(nn.Conv2d(32, 1, 1) for _ in channels)
            self.d2s = nn.ModuleList(nn.Conv2d(32, 1, 1) for _ in channels)
            n_sides = 2 * n
        self.fuse = nn.Conv2d(n_sides, 1, 1)
        with torch.no_grad():  # start the fuse as the mean of the sides (HED initialisation)
            self.fuse.weight.fill_(1.0 / n_sides)
            self.fuse.bias.zero_()

    def forward_train(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        size = x.shape[-2:]
        feats = list(self.backbone(x).values())

        def up(t: torch.Tensor) -> torch.Tensor:
            return F.interpolate(t, size=size, mode="bilinear", align_corners=False)

        if self.kind == "hed":
            sides = [up(conv(f)) for conv, f in zip(self.sides, feats)]
        else:
            enhanced = [sem(f) for sem, f in zip(self.sems, feats)]
            down = [up(conv(e)) for conv, e in zip(self.s2d, enhanced)]
            upward = [up(conv(e)) for conv, e in zip(self.d2s, enhanced)]
            s2d, d2s = [], []
            for i in range(len(down)):  # shallow -> deep: each stage adds what the shallower ones found
                s2d.append(down[i] if i == 0 else down[i] + s2d[-1])
            for i in reversed(range(len(upward))):  # deep -> shallow
                d2s.insert(0, upward[i] if not d2s else upward[i] + d2s[0])
            sides = s2d + d2s
        fuse = self.fuse(torch.cat(sides, 1))
        return sides, fuse

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fuse = self.forward_train(x)[1]
        return torch.cat([torch.zeros_like(fuse), fuse], 1)


class EdgeFamily(ModelFamily):
    emd_model_type = "ImageClassification"
    emd_model_configuration = "_model_extension_inferencing"
    supports_variable_tile_size = True
    kind = "hed"
    side_weight = 1.0
    fuse_weight = 1.0
    neg_factor = 1.0

    def __init__(self, *a: Any, **kw: Any) -> None:
        super().__init__(*a, **kw)
        self.mode = str(self.args.get("edge_targets") or "auto")
        classes = list(self.info.classes)
        if len(classes) != 1:
            from gpjobs.export.info import ClassInfo

            self.say(
                "info",
                f"edge detection: the {len(classes)} classes of the export "
                f"({', '.join(c.name for c in classes)}) become one class 'edge' "
                f"(edge_targets={self.mode})",
            )
            color = classes[0].color if classes else None
            self.info = dataclasses.replace(self.info, classes=[ClassInfo(1, "edge", color)])
        self.edge_class = self.info.classes[0]

    def build(self) -> nn.Module:
        backbone = build_backbone(self.backbone, self.in_channels, weights=self.weights, say=self.say)
        return EdgeNet(backbone, self.kind)

    def _loss(self, model: nn.Module, images: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        target = edge_targets(masks, self.mode)[:, None].float()
        sides, fuse = model.forward_train(images)
        loss = self.fuse_weight * balanced_bce(fuse, target, self.neg_factor)
        for side in sides:
            loss = loss + self.side_weight * balanced_bce(side, target, self.neg_factor)
        return loss

    def training_loss(self, model: nn.Module, batch: Any, device: torch.device) -> torch.Tensor:
        images, masks = batch
        return self._loss(model, images.to(device, non_blocking=True), masks.to(device, non_blocking=True))

    @torch.no_grad()
    def validate(self, model: nn.Module, loader: Iterable, device: torch.device) -> tuple[float, dict[str, Any]]:
        counts = BinaryCounts()
        total, batches = 0.0, 0
        for images, masks in loader:
            images, masks = images.to(device, non_blocking=True), masks.to(device, non_blocking=True)
            target = edge_targets(masks, self.mode)
            sides, fuse = model.forward_train(images)
            t = target[:, None].float()
            loss = self.fuse_weight * balanced_bce(fuse, t, self.neg_factor)
            for side in sides:
                loss = loss + self.side_weight * balanced_bce(side, t, self.neg_factor)
            total += float(loss) * images.shape[0]
            batches += images.shape[0]
            counts.update(target, fuse[:, 0] > 0)
        scores = counts.scores()
        metrics = {
            "accuracy": scores["accuracy"],
            "f1_score": scores["f1"],
            "precision": scores["precision"],
            "recall": scores["recall"],
        }
        return total / max(batches, 1), metrics

    @torch.no_grad()
    def predict(self, model: nn.Module, images: torch.Tensor) -> list[dict[str, Any]]:
        """Per chip: edge / no-edge pixel counts; `_mask` holds the edge class value on edge pixels (else 0)."""
        _, fuse = model.forward_train(images)
        prob = torch.sigmoid(fuse[:, 0]).cpu()
        results = []
        for chip in prob:
            edge = chip > 0.5
            n_edge = int(edge.sum())
            results.append(
                {
                    "class_pixels": {
                        k: v for k, v in (("NoData", edge.numel() - n_edge), (self.edge_class.name, n_edge)) if v
                    },
                    "edge_fraction": round(n_edge / edge.numel(), 6),
                    "_mask": (edge.long() * self.edge_class.value).numpy(),
                }
            )
        return results

    def model_parameters(self) -> dict[str, Any]:
        return {**super().model_parameters(), "edge_targets": self.mode}

    def inference_spec(self, network: nn.Module) -> dict[str, Any]:
        """forward() gives [0, fuse logit]: its argmax is "edge probability > 0.5", as predict() decides."""
        return {"output": "pixel_classes", "index_values": [0, int(self.edge_class.value)]}

    def emd_fields(self, metrics: dict[str, Any]) -> dict[str, Any]:
        fields = super().emd_fields(metrics)
        for key in ("accuracy", "f1_score", "precision", "recall"):
            if key in metrics:
                fields[key] = f"{metrics[key]:.4e}"
        return fields

    def show_results(self, model: nn.Module, batch: Any, path: Path) -> None:
        from gpjobs.training.model_card import display_rgb

        images, masks = batch
        model.eval()
        with torch.no_grad():
            _, fuse = model.forward_train(images)
        target = edge_targets(masks, self.mode)
        rows = [
            [
                ("image", display_rgb(images[i])),
                ("ground truth edges", binary_picture(target[i])),
                ("edge probability", binary_picture(torch.sigmoid(fuse[i, 0]))),
            ]
            for i in range(min(4, images.shape[0]))
        ]
        save_panels(rows, path)


class HEDFamily(EdgeFamily):
    kind = "hed"


class BDCNFamily(EdgeFamily):
    kind = "bdcn"
    side_weight = 0.5
    fuse_weight = 1.1
    neg_factor = 1.1


FAMILIES: dict[str, type[ModelFamily]] = {"HED_EDGEDETECTOR": HEDFamily, "BDCN_EDGEDETECTOR": BDCNFamily}
