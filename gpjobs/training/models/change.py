"""Change detection: CHANGEDETECTOR on ChangeDetection exports (images/ before, images2/ after, labels/).

A simplified STANet (Chen & Shi 2020):
  - Siamese encoder: one ResNet (shared weights) runs on the before and the after chip; its stride 4..32
    taps are reduced to 64 channels, upsampled to stride 4, concatenated and fused to one 64-channel map;
  - spatial-temporal attention over both dates' feature maps together: BAM (one self-attention over all
    positions of both dates) or PAM (the same inside 1x1, 2x2 and 4x4 sub-regions, concatenated:
    the pyramid). Simplification: attention runs on the maps pooled to 16x16 and its output is upsampled
    and added back through a learned gate (initialised 0), which bounds memory for any chip size;
  - metric head: per-pixel Euclidean distance of the two dates' embeddings, upsampled to the chip;
    change where the distance exceeds margin / 2 (margin 2.0). Unlike STANet the embeddings are
    L2-normalised (distance 0..2, a cosine metric): the distance no longer depends on the feature scale,
    which BatchNorm's running statistics get wrong early in training (measured on tiny runs: eval-mode
    loss 4x the train-mode loss without it, equal with it);
  - loss: STANet's batch-balanced contrastive loss: mean d^2 over unchanged pixels plus mean
    max(0, margin - d)^2 over changed pixels (each term averaged over its own pixels).
Every labelled class counts as change; predictions carry the first class's value. Metrics: precision,
recall, f1 of the change class (and pixel accuracy).

The model's single input is the before and after chips stacked on the channel axis (B, 2C, H, W), so the
package's TorchScript module takes one tensor. `gpjobs predict` pairs chips through `paired_chips`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from gpjobs.training.backbones import build_backbone
from gpjobs.training.models.base import ModelFamily
from gpjobs.training.models.binary import BinaryCounts, binary_picture, save_panels

MARGIN = 2.0
ATTENTION_SIZE = 16  # attention runs on feature maps pooled to this many cells per side
PAM_SCALES = (1, 2, 4)


def _cbr(cin: int, cout: int, k: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, k, padding=k // 2, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)
    )


class SpatialTemporalAttention(nn.Module):
    """Self-attention over the positions of both dates, within s x s sub-regions for each scale s."""

    def __init__(self, channels: int, scales: Sequence[int]) -> None:
        super().__init__()
        self.scales = tuple(scales)
        self.key_dim = max(8, channels // 8)
        self.query = nn.Conv2d(channels, self.key_dim, 1)
        self.key = nn.Conv2d(channels, self.key_dim, 1)
        self.value = nn.Conv2d(channels, channels, 1)
        self.merge = nn.Conv2d(channels * len(self.scales), channels, 1)
        self.gate = nn.Parameter(torch.zeros(1))  # starts as the identity (DANet/STANet gamma)

    def _attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, s: int) -> tuple[torch.Tensor, ...]:
        # q, k, v: (2, B, c, P, P) for (before, after); regions: (2, B, c, s, P/s, s, P/s)
        _, b, _, p, _ = q.shape
        r = p // s

        def tokens(t: torch.Tensor) -> torch.Tensor:  # -> (B * s * s, 2 * r * r, c)
            c = t.shape[2]
            t = t.reshape(2, b, c, s, r, s, r).permute(1, 3, 5, 0, 4, 6, 2)
            return t.reshape(b * s * s, 2 * r * r, c)

        attn = torch.softmax(tokens(q) @ tokens(k).transpose(1, 2) / math.sqrt(self.key_dim), dim=-1)
        out = attn @ tokens(v)  # (B s s, 2 r r, C)
        c = v.shape[2]
        out = out.reshape(b, s, s, 2, r, r, c).permute(3, 0, 6, 1, 4, 2, 5).reshape(2, b, c, p, p)
        return out[0], out[1]

    def forward(self, before: torch.Tensor, after: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        size = before.shape[-2:]
        pooled = [F.adaptive_avg_pool2d(t, ATTENTION_SIZE) for t in (before, after)]
        q = torch.stack([self.query(t) for t in pooled])
        k = torch.stack([self.key(t) for t in pooled])
        v = torch.stack([self.value(t) for t in pooled])
        outs = [self._attend(q, k, v, s) for s in self.scales]
        result = []
        for date, feature in enumerate((before, after)):
            merged = self.merge(torch.cat([o[date] for o in outs], 1))
            merged = F.interpolate(merged, size=size, mode="bilinear", align_corners=False)
            result.append(feature + self.gate * merged)
        return result[0], result[1]


class SiameseChangeNet(nn.Module):
    """(B, 2C, H, W) before|after -> change scores (B, 2, H, W): channel 1 > channel 0 where d > margin/2."""

    def __init__(self, backbone: nn.Module, attention: str, width: int = 64) -> None:
        super().__init__()
        self.backbone = backbone
        channels = list(backbone.out_channels)[1:]  # stride 4..32 taps
        self.reduce = nn.ModuleList(_cbr(c, width, 1) for c in channels)
        self.fuse = _cbr(width * len(channels), width, 3)
        self.attention = SpatialTemporalAttention(width, (1,) if attention == "BAM" else PAM_SCALES)
        self.embed = nn.Conv2d(width, width, 1)

    def distance(self, x: torch.Tensor) -> torch.Tensor:
        """Per-pixel distance (B, H, W) of the two dates' embeddings, at the chip size."""
        half = x.shape[1] // 2
        batch = x.shape[0]
        feats = list(self.backbone(torch.cat([x[:, :half], x[:, half:]], 0)).values())[1:]
        size = feats[0].shape[-2:]
        maps = [
            F.interpolate(r(f), size=size, mode="bilinear", align_corners=False) if f.shape[-2:] != size else r(f)
            for r, f in zip(self.reduce, feats)
        ]
        fused = self.fuse(torch.cat(maps, 1))
        before, after = self.attention(fused[:batch], fused[batch:])
        d = torch.linalg.vector_norm(
            F.normalize(self.embed(before), dim=1) - F.normalize(self.embed(after), dim=1), dim=1, keepdim=True
        )
        return F.interpolate(d, size=x.shape[-2:], mode="bilinear", align_corners=False)[:, 0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        d = self.distance(x)[:, None]
        threshold = MARGIN / 2
        return torch.cat([threshold - d, d - threshold], 1)


def contrastive_loss(distance: torch.Tensor, changed: torch.Tensor, margin: float = MARGIN) -> torch.Tensor:
    """STANet's batch-balanced contrastive loss."""
    changed = changed.float()
    unchanged = 1.0 - changed
    d = distance.float()
    same = (unchanged * d.pow(2)).sum() / unchanged.sum().clamp_min(1.0)
    differ = (changed * torch.clamp(margin - d, min=0.0).pow(2)).sum() / changed.sum().clamp_min(1.0)
    return same + differ


class ChangeDetectorFamily(ModelFamily):
    emd_model_type = "ImageClassification"
    emd_model_configuration = "change_detection"
    inference_function = "GpjobsChangeDetector.py"
    paired_input = True  # predict input = before and after chips stacked on the channel axis

    def __init__(self, *a: Any, **kw: Any) -> None:
        super().__init__(*a, **kw)
        self.attention = str(self.args.get("attention_type") or "PAM").upper()
        if len(self.info.classes) > 1:
            self.say(
                "info",
                f"change detection: all {len(self.info.classes)} classes count as change; "
                f"predictions use class {self.info.classes[0].name} (value {self.info.classes[0].value})",
            )
        self.change_class = self.info.classes[0] if self.info.classes else None

    def build(self) -> nn.Module:
        backbone = build_backbone(self.backbone, self.in_channels, weights=self.weights, say=self.say)
        return SiameseChangeNet(backbone, self.attention)

    @staticmethod
    def _inputs(batch: Any, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        before, after, mask = batch
        x = torch.cat([before, after], 1).to(device, non_blocking=True)
        return x, mask.to(device, non_blocking=True) > 0

    def training_loss(self, model: nn.Module, batch: Any, device: torch.device) -> torch.Tensor:
        x, changed = self._inputs(batch, device)
        return contrastive_loss(model.distance(x), changed)

    @torch.no_grad()
    def validate(self, model: nn.Module, loader: Iterable, device: torch.device) -> tuple[float, dict[str, Any]]:
        counts = BinaryCounts()
        total, n = 0.0, 0
        for batch in loader:
            x, changed = self._inputs(batch, device)
            d = model.distance(x)
            total += float(contrastive_loss(d, changed)) * x.shape[0]
            n += x.shape[0]
            counts.update(changed, d > MARGIN / 2)
        scores = counts.scores()
        return total / max(n, 1), {
            "precision": scores["precision"],
            "recall": scores["recall"],
            "f1": scores["f1"],
            "accuracy": scores["accuracy"],
        }

    @torch.no_grad()
    def predict(self, model: nn.Module, images: torch.Tensor) -> list[dict[str, Any]]:
        """`images` = before|after stacked (B, 2C, H, W). Per chip: changed pixels; `_mask` = class value."""
        d = model.distance(images).cpu()
        value = self.change_class.value if self.change_class else 1
        name = self.change_class.name if self.change_class else "change"
        results = []
        for chip in d:
            changed = chip > MARGIN / 2
            n = int(changed.sum())
            results.append(
                {
                    "class_pixels": {k: v for k, v in (("NoData", changed.numel() - n), (name, n)) if v},
                    "change_fraction": round(n / changed.numel(), 6),
                    "_mask": (changed.long() * value).numpy(),
                }
            )
        return results

    def paired_chips(self, chip: str | Path) -> tuple[Path, Path]:
        """(before, after) for a `gpjobs predict` CHIP: "BEFORE,AFTER", or a chip in an export's images/
        whose partner of the same name is in images2/."""
        text = str(chip)
        if "," in text:
            before, after = (Path(p.strip()) for p in text.split(",", 1))
            return before, after
        path = Path(text)
        partner = path.parent.parent / "images2" / path.name
        if path.parent.name == "images" and partner.is_file():
            return path, partner
        from gpjobs.export import ChipReadError  # what gpjobs predict reports as a usage error

        raise ChipReadError(
            f"{path.name}: a change detection model needs a before and an after chip; give "
            "BEFORE,AFTER or a chip in an export's images/ folder with its partner in images2/"
        )

    def example_input(self) -> torch.Tensor | None:
        h, w = self.info.chip_size
        return torch.zeros(1, 2 * self.in_channels, int(h), int(w))

    def inference_spec(self, network: nn.Module) -> dict[str, Any]:
        """forward() of the stacked before|after chips gives [unchanged, changed] scores (argmax: d > margin/2)."""
        value = int(self.change_class.value) if self.change_class else 1
        return {"output": "change", "index_values": [0, value], "inputs": 2}

    def model_parameters(self) -> dict[str, Any]:
        return {
            **super().model_parameters(),
            "attention_type": self.attention,
            "margin": MARGIN,
            "input": "before and after chips stacked on the channel axis",
        }

    def emd_fields(self, metrics: dict[str, Any]) -> dict[str, Any]:
        fields = super().emd_fields(metrics)
        for key in ("precision", "recall", "f1", "accuracy"):
            if key in metrics:
                fields[key] = f"{metrics[key]:.4e}"
        return fields

    def show_results(self, model: nn.Module, batch: Any, path: Path) -> None:
        from gpjobs.training.model_card import display_rgb

        before, after, mask = batch
        model.eval()
        with torch.no_grad():
            d = model.distance(torch.cat([before, after], 1))
        rows = [
            [
                ("before", display_rgb(before[i])),
                ("after", display_rgb(after[i])),
                ("ground truth change", binary_picture(mask[i] > 0)),
                ("predicted change", binary_picture(d[i] > MARGIN / 2)),
            ]
            for i in range(min(4, before.shape[0]))
        ]
        save_panels(rows, path)


FAMILIES: dict[str, type[ModelFamily]] = {"CHANGEDETECTOR": ChangeDetectorFamily}
