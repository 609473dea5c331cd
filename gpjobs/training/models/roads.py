"""Road extraction: MULTITASK_ROADEXTRACTOR and CONNECTNET (its alias) on Classified_Tiles.

Network: LinkNet (Chaurasia & Culurciello 2017) over a ResNet encoder with two decoders, one for the
road classes (model index 0 = background) and one for road orientation (Batra et al. 2019, "Improved
road connectivity by joint learning of orientation and segmentation"). `mtl_model=hourglass` (arcgis'
default, a stacked hourglass without a backbone) is trained as this LinkNet; the job says so.

Orientation labels are made on the fly from the road mask (every labelled class counts as road), on
the device, with torch ops only:
  - centre line: the ridge of the road's erosion depth (pixels at least as deep as their 3x3
    neighbours), widened to a band `orient_theta` pixels wide and clipped to the road;
  - direction: the structure tensor of the smoothed erosion depth gives the across-road direction; the
    road runs perpendicular to it. Directions are undirected (0..180 degrees) and binned by
    `orient_bin_size`; every pixel outside the band is the extra "no orientation" bin.
(arcgis/Batra draw directed 0..360 degree angles along skeleton graph edges; a road has no direction
in a single mask, so the undirected angle carries the same information in half the bins.)
Loss = loss_weights[0] x segmentation CE (+ class_balancing / ignore_classes) + loss_weights[1] x
orientation CE. Metrics: accuracy, miou, dice (mean foreground F1), orientation accuracy; monitor miou.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from gpjobs.training.metrics import Confusion, segmentation_metrics
from gpjobs.training.models.base import ModelFamily
from gpjobs.training.models.segmentation import SegmentationFamily


def _odd(n: int) -> int:
    n = max(1, int(n))
    return n if n % 2 else n + 1


def _gaussian_kernel(sigma: float, device: torch.device) -> torch.Tensor:
    radius = max(1, int(math.ceil(2.5 * sigma)))
    x = torch.arange(-radius, radius + 1, device=device, dtype=torch.float32)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    return k / k.sum()


def _blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    k = _gaussian_kernel(sigma, x.device)
    r = k.numel() // 2
    x = F.conv2d(F.pad(x, (r, r, 0, 0), mode="replicate"), k.view(1, 1, 1, -1))
    return F.conv2d(F.pad(x, (0, 0, r, r), mode="replicate"), k.view(1, 1, -1, 1))


def orientation_bins(bin_size: int) -> int:
    """Number of direction bins over 0..180 degrees (the "no orientation" label is this number)."""
    return int(math.ceil(180.0 / max(1, int(bin_size))))


@torch.no_grad()
def orientation_targets(road: torch.Tensor, bin_size: int = 20, theta: int = 8) -> torch.Tensor:
    """Orientation labels (B, H, W) int64 from road masks (B, H, W) bool: bin of the road direction on a
    band `theta` px wide along the road centre, `orientation_bins(bin_size)` elsewhere."""
    n_bins = orientation_bins(bin_size)
    m = road.float()[:, None]
    # centre line: ridge of the erosion depth (number of 3x3 erosions a pixel survives)
    depth, current = torch.zeros_like(m), m
    for _ in range(max(m.shape[-2:]) // 2 + 1):
        if not bool(current.any()):
            break
        depth = depth + current
        current = -F.max_pool2d(-current, 3, 1, 1)
    ridge = (depth > 0) & (depth >= F.max_pool2d(depth, 3, 1, 1))
    k = _odd(theta)
    band = (F.max_pool2d(ridge.float(), k, 1, k // 2) > 0) & (m > 0)
    # direction: structure tensor of the smoothed erosion depth (its gradient points across the road at
    # every road pixel, also in the middle of wide roads, where the mask itself is flat)
    smooth = _blur(depth, 1.5)
    gy = smooth[..., 2:, 1:-1] - smooth[..., :-2, 1:-1]
    gx = smooth[..., 1:-1, 2:] - smooth[..., 1:-1, :-2]
    gx, gy = F.pad(gx, (1, 1, 1, 1)), F.pad(gy, (1, 1, 1, 1))
    w = _odd(max(5, theta))
    jxx = F.avg_pool2d(gx * gx, w, 1, w // 2, count_include_pad=False)
    jyy = F.avg_pool2d(gy * gy, w, 1, w // 2, count_include_pad=False)
    jxy = F.avg_pool2d(gx * gy, w, 1, w // 2, count_include_pad=False)
    across = 0.5 * torch.atan2(2 * jxy, jxx - jyy)  # dominant gradient direction, radians
    # image rows grow downwards: negate y so that 0 deg = east, 90 deg = north (map convention)
    along = torch.remainder(-torch.rad2deg(across) + 90.0, 180.0)
    bins = torch.clamp((along / bin_size).long(), max=n_bins - 1)
    known = band & ((jxx + jyy) > 1e-6)
    return torch.where(known, bins, torch.full_like(bins, n_bins))[:, 0]


class LinkNetBlock(nn.Module):
    """LinkNet decoder block: 1x1 reduce, 3x3 transposed conv (x2), 1x1 expand; then the skip is added."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        mid = max(16, cin // 4)
        self.reduce = nn.Sequential(nn.Conv2d(cin, mid, 1, bias=False), nn.BatchNorm2d(mid), nn.ReLU(inplace=True))
        self.up = nn.Sequential(
            nn.ConvTranspose2d(mid, mid, 3, stride=2, padding=1, output_padding=1, bias=False),
            nn.BatchNorm2d(mid),
            nn.ReLU(inplace=True),
        )
        self.expand = nn.Sequential(nn.Conv2d(mid, cout, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))

    def forward(self, x: torch.Tensor, size: torch.Size) -> torch.Tensor:
        x = self.up(self.reduce(x))
        if x.shape[-2:] != size:  # odd feature sizes
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        return self.expand(x)


class LinkNetDecoder(nn.Module):
    """Blocks from the deepest tap up through every shallower tap (skip added), then to the input size."""

    def __init__(self, channels: list[int], num_outputs: int) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(LinkNetBlock(cin, cout) for cin, cout in zip(channels[:0:-1], channels[-2::-1]))
        c0 = channels[0]
        self.final = nn.Sequential(
            nn.ConvTranspose2d(c0, 32, 4, stride=2, padding=1),
            nn.BatchNorm2d(32),
            nn.ReLU(inplace=True),
            nn.Conv2d(32, 32, 3, padding=1, bias=False),
            nn.BatchNorm2d(32),
            nn.ReLU(inplace=True),
            nn.Conv2d(32, num_outputs, 1),
        )

    def forward(self, feats: list[torch.Tensor], size: torch.Size) -> torch.Tensor:
        x = feats[-1]
        for block, skip in zip(self.blocks, reversed(feats[:-1])):
            x = block(x, skip.shape[-2:]) + skip
        x = self.final(x)
        if x.shape[-2:] != size:
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        return x


class MultiTaskLinkNet(nn.Module):
    """Shared ResNet encoder, a segmentation decoder and an orientation decoder."""

    def __init__(self, backbone: nn.Module, num_outputs: int, num_orientations: int) -> None:
        super().__init__()
        self.backbone = backbone
        channels = list(backbone.out_channels)
        self.segmentation = LinkNetDecoder(channels, num_outputs)
        self.orientation = LinkNetDecoder(channels, num_orientations)

    def forward_train(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feats = list(self.backbone(x).values())
        return self.segmentation(feats, x.shape[-2:]), self.orientation(feats, x.shape[-2:])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = list(self.backbone(x).values())
        return self.segmentation(feats, x.shape[-2:])


class RoadExtractorFamily(SegmentationFamily):
    emd_model_configuration = "_road_infrencing"
    default_monitor = "miou"

    def __init__(self, *a: Any, **kw: Any) -> None:
        super().__init__(*a, **kw)
        self.bin_size = max(1, int(self.args.get("orient_bin_size") or 20))
        self.theta = max(1, int(self.args.get("orient_theta") or 8))
        self.n_bins = orientation_bins(self.bin_size)
        weights = [float(w) for w in (self.args.get("loss_weights") or [1.0, 1.0])]
        if len(weights) != 2 or min(weights) < 0:
            from gpjobs.catalog import ArgumentError

            raise ArgumentError(
                f"loss_weights must be two non-negative numbers [segmentation, orientation], got {weights}"
            )
        self.loss_weights = weights

    def build(self) -> nn.Module:
        if str(self.args.get("mtl_model") or "hourglass") == "hourglass":
            self.say(
                "info",
                "mtl_model=hourglass is trained as LinkNet over the "
                f"{self.backbone} encoder (same two heads: road segmentation and orientation)",
            )
        return MultiTaskLinkNet(self._backbone(), self.num_outputs, self.n_bins + 1)

    def _parts(
        self, model: nn.Module, images: torch.Tensor, masks: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        seg, orient = model.forward_train(images)
        road = masks > 0
        for index in self.ignore_indices:  # an ignored class is not road either
            road &= masks != index
        target = orientation_targets(road, self.bin_size, self.theta)
        seg_loss = self.loss.per_sample(seg, masks)
        orient_loss = F.cross_entropy(orient.float(), target, reduction="none").flatten(1).mean(1)
        return self.loss_weights[0] * seg_loss + self.loss_weights[1] * orient_loss, seg, orient, target

    def training_loss(self, model: nn.Module, batch: Any, device: torch.device) -> torch.Tensor:
        images, masks = batch
        images, masks = images.to(device, non_blocking=True), masks.to(device, non_blocking=True)
        return self._parts(model, images, masks)[0].mean()

    @torch.no_grad()
    def validate(self, model: nn.Module, loader: Iterable, device: torch.device) -> tuple[float, dict[str, Any]]:
        confusion = Confusion(self.num_outputs, device)
        total, count = torch.zeros((), device=device), 0
        orient_hits = torch.zeros((), device=device)
        orient_total = torch.zeros((), device=device)
        for images, masks in loader:
            images, masks = images.to(device, non_blocking=True), masks.to(device, non_blocking=True)
            loss, seg, orient, target = self._parts(model, images, masks)
            total += loss.sum()
            count += images.shape[0]
            keep = torch.ones_like(masks, dtype=torch.bool)
            for index in self.ignore_indices:
                keep &= masks != index
            confusion.update(masks, seg.argmax(1), keep)
            on_band = target < self.n_bins
            orient_hits += (orient.argmax(1)[on_band] == target[on_band]).sum()
            orient_total += on_band.sum()
        metrics = segmentation_metrics(confusion.result(), self.class_names)
        per_class = metrics["per_class_metrics"]
        foreground = [per_class[name]["f1"] for name in self.class_names[1:]]
        metrics = {
            "miou": metrics["miou"],
            "accuracy": metrics["accuracy"],
            "dice": sum(foreground) / len(foreground) if foreground else 0.0,
            "orientation_accuracy": float(orient_hits / orient_total.clamp_min(1)),
            "per_class_metrics": per_class,
        }
        return float(total) / max(count, 1), metrics

    def model_parameters(self) -> dict[str, Any]:
        return {
            **super().model_parameters(),
            "mtl_model": "linknet",
            "requested_mtl_model": str(self.args.get("mtl_model") or "hourglass"),
            "orient_bin_size": self.bin_size,
            "orient_theta": self.theta,
            "gaussian_thresh": float(self.args.get("gaussian_thresh") or 0.76),
            "loss_weights": self.loss_weights,
        }

    def emd_fields(self, metrics: dict[str, Any]) -> dict[str, Any]:
        fields = super().emd_fields(metrics)
        if "dice" in metrics:
            fields["dice"] = f"{metrics['dice']:.4e}"
        return fields


FAMILIES: dict[str, type[ModelFamily]] = {
    "MULTITASK_ROADEXTRACTOR": RoadExtractorFamily,
    "CONNECTNET": RoadExtractorFamily,
}
