"""Object tracking: SIAMMASK on ObjectTracking data (sequences of frames with object masks).

The network and the tracking step are in siammask_net.py, the pair sampling in training/data/tracking.py.
arcgis.learn trains SiamMask on ResNet-50 only; here any ResNet of the catalog works (RESNET18 keeps the
tests small), RESNET50 is the default. Crop sizes are arguments (`exemplar_size` 128 and `instance_size`
256, SiamMask's 127 and 255 rounded to the trunk's stride 8).

Validation tracks every object of every validation sequence from the box of its first annotated frame
through the later annotated frames, as `gpjobs predict` does: `mIOU` is the mean over objects of the mean
mask IoU per frame (DAVIS' J), `f_measure` the same for the contour F-measure (DAVIS' F: boundary pixels
matched within 0.8% of the frame diagonal). The validation loss is the training loss over (first frame,
later frame) pairs with a fixed jitter.

Tracking is no raster function in ArcGIS (it runs on motion imagery): the package's GpjobsObjectTracker.py
is used from Python the way arcgis.learn's SiamMask is, `init(frame, [[x, y, w, h], ...])` then
`update(frame)` per later frame, with the traced tracking step.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from gpjobs.catalog import ArgumentError
from gpjobs.training.backbones import build_backbone
from gpjobs.training.models.base import ModelFamily
from gpjobs.training.models.siammask_net import RATIOS, STRIDE, SiamMaskNet, stride8_layer3

BOUNDARY_TOLERANCE = 0.008  # DAVIS: of the image diagonal


def _boundary(mask: torch.Tensor) -> torch.Tensor:
    m = mask.float()[None, None]
    eroded = -F.max_pool2d(-m, 3, 1, 1)
    return (m - eroded)[0, 0] > 0


def boundary_f_measure(pred: torch.Tensor, truth: torch.Tensor) -> float:
    """DAVIS' contour F-measure of two boolean (H, W) masks."""
    pb, tb = _boundary(pred), _boundary(truth)
    if not pb.any() and not tb.any():
        return 1.0
    if not pb.any() or not tb.any():
        return 0.0
    r = max(1, math.ceil(BOUNDARY_TOLERANCE * math.hypot(*pred.shape)))

    def dilate(b: torch.Tensor) -> torch.Tensor:
        return F.max_pool2d(b.float()[None, None], 2 * r + 1, 1, r)[0, 0] > 0

    precision = float((pb & dilate(tb)).sum()) / float(pb.sum())
    recall = float((tb & dilate(pb)).sum()) / float(tb.sum())
    return 2 * precision * recall / (precision + recall) if precision + recall else 0.0


def mask_iou(pred: torch.Tensor, truth: torch.Tensor) -> float:
    union = float((pred | truth).sum())
    return float((pred & truth).sum()) / union if union else 1.0


class SiamMaskFamily(ModelFamily):
    emd_model_type = "ObjectTracking"
    emd_model_configuration = "_siammask_inferencing"
    inference_function = "GpjobsObjectTracker.py"  # not a raster function: init(frame, boxes), update(frame)
    sequence_input = True  # predict takes the frames of one sequence and the first box

    def __init__(self, *a: Any, **kw: Any) -> None:
        super().__init__(*a, **kw)
        self.exemplar = int(self.args.get("exemplar_size") or 128)
        self.instance = int(self.args.get("instance_size") or 256)
        if self.exemplar % STRIDE or self.instance % STRIDE or self.instance <= self.exemplar or self.exemplar < 24:
            # the template's stride-8 features must outlive a 3x3 valid convolution: at least 3 x 3 of them
            raise ArgumentError(
                f"exemplar_size ({self.exemplar}) and instance_size ({self.instance}) must be "
                f"multiples of {STRIDE}, exemplar_size at least 24 and instance_size larger "
                "(e.g. 128 and 256)"
            )
        if self.backbone != "RESNET50":
            self.say("info", f"SIAMMASK on {self.backbone}: arcgis.learn's SiamMask uses ResNet-50 (the default here)")
        self.seg_thr = float(self.args.get("seg_thr") if self.args.get("seg_thr") is not None else 0.35)

    def attach_data(self, data: Any) -> None:
        data.train.configure(self.exemplar, self.instance)

    def build(self) -> nn.Module:
        trunk = build_backbone(self.backbone, self.in_channels, weights=self.weights, say=self.say)
        del trunk.stages["layer4"]  # SiamMask's trunk ends with layer 3
        stride8_layer3(trunk.stages["layer3"])
        trunk.out_channels, trunk.strides = trunk.probe()
        return SiamMaskNet(
            trunk,
            self.exemplar,
            self.instance,
            seg_thr=self.seg_thr,
            penalty_k=float(self.args.get("penalty_k", 0.04)),
            window_influence=float(self.args.get("window_influence", 0.4)),
        )

    def training_loss(self, model: nn.Module, batch: Any, device: torch.device) -> torch.Tensor:
        z, x, boxes, masks = (t.to(device, non_blocking=True) for t in batch)
        return model.loss(z, x, boxes, masks)[0]

    def track(
        self, model: nn.Module, frames: Sequence[torch.Tensor], first_box: torch.Tensor
    ) -> list[tuple[torch.Tensor, float, torch.Tensor]]:
        """(box, score, mask probability) for every frame after the first (frames (C, H, W) at chip size)."""
        device = next(model.parameters()).device
        first = frames[0][None].to(device)
        box0 = first_box.float().to(device)
        box, out = box0, []
        for frame in frames[1:]:
            box, score, mask = model(first, box0, frame[None].to(device), box)
            out.append((box.detach().cpu(), float(score), mask.detach().cpu()))
        return out

    @torch.no_grad()
    def validate(self, model: nn.Module, loader: Iterable, device: torch.device) -> tuple[float, dict[str, Any]]:
        total, n, ious, fs = 0.0, 0, [], []
        for tracks in loader:
            for track in tracks:
                pairs = list(track.pairs(self.exemplar, self.instance))
                for start in range(0, len(pairs), 16):
                    batch = [torch.stack(p).to(device) for p in zip(*pairs[start : start + 16])]
                    total += float(model.loss(*batch)[0]) * len(batch[0])
                    n += len(batch[0])
                frames = [track.frame(t) for t in range(len(track))]
                results = self.track(model, frames, track.first_box())
                scored = [(mask > self.seg_thr, track.mask(t + 1)) for t, (_, _, mask) in enumerate(results)]
                scored = [(p, m) for p, m in scored if m.any()]  # frames the object has left are not scored
                if scored:
                    ious.append(sum(mask_iou(p, m) for p, m in scored) / len(scored))
                    fs.append(sum(boundary_f_measure(p, m) for p, m in scored) / len(scored))
        return total / max(n, 1), {"mIOU": sum(ious) / max(len(ious), 1), "f_measure": sum(fs) / max(len(fs), 1)}

    @torch.no_grad()
    def predict(
        self, model: nn.Module, images: torch.Tensor, first_box: Sequence[float] | None = None
    ) -> list[dict[str, Any]]:
        """`images` (T, C, H, W) = the frames of one sequence; the target is `first_box` in the first frame.

        One dict per frame: box (x0, y0, x1, y1), score, mask pixels; `_mask` = the boolean mask."""
        if first_box is None:
            raise ArgumentError("SIAMMASK tracks one object: give its box in the first frame")
        box = torch.tensor([float(v) for v in first_box])
        h, w = images.shape[-2:]
        first_mask = torch.zeros(h, w, dtype=torch.bool)
        x0, y0, x1, y1 = (round(float(v)) for v in box)
        first_mask[max(y0, 0) : max(y1, 0), max(x0, 0) : max(x1, 0)] = True
        out = [
            {
                "box": [round(float(v), 2) for v in box],
                "score": 1.0,
                "mask_pixels": int(first_mask.sum()),
                "_mask": first_mask.numpy(),
            }
        ]
        for b, score, mask in self.track(model, list(images), box):
            pred = mask > self.seg_thr
            out.append(
                {
                    "box": [round(float(v), 2) for v in b],
                    "score": round(score, 6),
                    "mask_pixels": int(pred.sum()),
                    "_mask": pred.numpy(),
                }
            )
        return out

    def example_input(self) -> Any:
        h, w = (int(s) for s in self.info.chip_size)
        frame = torch.zeros(1, self.in_channels, h, w)
        box = torch.tensor([w / 4, h / 4, 3 * w / 4, 3 * h / 4])
        return frame, box, frame, box

    def inference_spec(self, network: nn.Module) -> dict[str, Any]:
        """The traced network is one tracking step (`SiamMaskNet.forward`); its mask is cut at `seg_thr`."""
        return {"output": "tracks", "seg_thr": self.seg_thr}

    def model_parameters(self) -> dict[str, Any]:
        return {
            **super().model_parameters(),
            "hp": {
                "exemplar_size": self.exemplar,
                "instance_size": self.instance,
                "seg_thr": self.seg_thr,
                "penalty_k": float(self.args.get("penalty_k", 0.04)),
                "window_influence": float(self.args.get("window_influence", 0.4)),
                "lr": 1.0,
            },
            "anchors": {"stride": STRIDE, "ratios": list(RATIOS), "scales": [self.exemplar / 2 / STRIDE]},
        }

    def emd_fields(self, metrics: dict[str, Any]) -> dict[str, Any]:
        fields = super().emd_fields(metrics)
        for key in ("mIOU", "f_measure"):
            if key in metrics:
                fields[key] = f"{metrics[key]:.4e}"
        return fields

    def show_results(self, model: nn.Module, batch: Any, path: Path) -> None:
        """The first validation track: frames with the true (green) and tracked (red) outline."""
        from gpjobs.training.model_card import display_rgb
        from gpjobs.training.models.binary import save_panels

        if not batch:
            return
        track = batch[0]
        model.eval()
        frames = [track.frame(t) for t in range(min(len(track), 5))]
        with torch.no_grad():
            results = self.track(model, frames, track.first_box())
        row = []
        for t, frame in enumerate(frames):
            picture = display_rgb(frame).copy()
            truth = _boundary(track.mask(t)).numpy()
            picture[truth] = (0.0, 1.0, 0.0)
            if t:
                pred = _boundary(results[t - 1][2] > self.seg_thr).numpy()
                picture[pred] = (1.0, 0.0, 0.0)
            row.append((f"frame {t}" + (" (template)" if t == 0 else ""), picture))
        save_panels([row], path)


FAMILIES: dict[str, type[ModelFamily]] = {"SIAMMASK": SiamMaskFamily}
