"""What a detector's package holds for its Python raster function: the dense layers, traced, and the numbers
the PRF needs to finish the job in plain torch (GpjobsObjectDetector.py mirrors `detect()` step by step).

Tracing records only the tensor operations that ran, so a traced network never carries torchvision's
compiled operators (nms, roi_align) nor python control flow: those are data-dependent and live in the PRF.

  - "dense" (SSD, YOLOv3): per image every candidate box (xyxy px), its best class score and label, before
    the score threshold and the class-wise NMS of ssd_detect / yolo_detect;
  - "retinanet": torchvision's head outputs over all anchors, plus the anchors;
  - "rcnn" (Faster / Mask R-CNN): stage 1 (resize, FPN, RPN head) gives objectness, box deltas, anchors and
    the FPN maps; the PRF picks proposals and pools them (RoIAlign); `box_stage` and `mask_stage` are the
    traced heads that run on pooled features.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.detection.image_list import ImageList


class DenseDetections(nn.Module):
    """SSD / YOLOv3: (boxes [B, N, 4] px, scores [B, N], labels [B, N] 0-based) before threshold and NMS."""

    def __init__(self, model: nn.Module, kind: str) -> None:
        super().__init__()
        self.model = model
        self.kind = kind

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if self.kind == "ssd":
            from gpjobs.training.models.detection.ssd_net import decode

            offsets, logits = self.model.raw(images)
            h, w = images.shape[-2:]
            scale = offsets.new_tensor([w, h, w, h])
            boxes = decode(offsets, self.model.anchors, self.model.cell_sizes).clamp(0, 1) * scale
            scores, labels = torch.sigmoid(logits).max(2)
            return boxes, scores, labels
        from gpjobs.training.models.detection.yolo_net import decode_boxes

        per_level = []
        outputs = self.model.raw(images)
        for level, (raw, stride) in enumerate(zip(outputs, self.model.strides)):
            boxes = decode_boxes(raw, self.model.anchors[3 * level : 3 * level + 3], stride)
            conf, label = (torch.sigmoid(raw[:, :, 4]).unsqueeze(2) * torch.sigmoid(raw[:, :, 5:])).max(2)
            per_level.append((boxes.flatten(1, 3), conf.flatten(1), label.flatten(1)))
        return tuple(torch.cat([p[i] for p in per_level], 1) for i in range(3))  # type: ignore[return-value]


def dense_spec(kind: str) -> dict[str, Any]:
    """The thresholds ssd_detect / yolo_detect apply (their defaults, as detect() calls them)."""
    if kind == "ssd":
        return {"decoder": "dense", "score_thresh": 0.05, "nms_thresh": 0.1, "max_detections": 100}
    from gpjobs.training.models.detection.yolo_net import NMS_OVERLAP, VOTE_OVERLAP

    return {
        "decoder": "dense",
        "score_thresh": 0.01,
        "nms_thresh": NMS_OVERLAP,
        "vote_thresh": VOTE_OVERLAP,
        "max_detections": 100,
    }


class _Resized(nn.Module):
    """torchvision's GeneralizedRCNNTransform for a fixed chip size, batched: normalise, resize, pad to 32."""

    def __init__(self, net: nn.Module, chip: tuple[int, int]) -> None:
        super().__init__()
        t = net.transform
        self.register_buffer("mean", torch.tensor(t.image_mean, dtype=torch.float32)[:, None, None])
        self.register_buffer("std", torch.tensor(t.image_std, dtype=torch.float32)[:, None, None])
        self_min, self_max = t.min_size[-1], t.max_size  # torchvision's eager arithmetic (python floats)
        self.scale = min(self_min / min(chip), self_max / max(chip))
        self.resized = tuple(int(math.floor(s * self.scale)) for s in chip)
        self.padded = tuple(int(math.ceil(s / 32.0) * 32) for s in self.resized)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = (images - self.mean) / self.std
        x = F.interpolate(x, scale_factor=self.scale, mode="bilinear", recompute_scale_factor=True, align_corners=False)
        return F.pad(x, (0, self.padded[1] - x.shape[-1], 0, self.padded[0] - x.shape[-2]))


def _flatten_level(t: torch.Tensor, per_anchor: int) -> torch.Tensor:
    """torchvision's permute_and_flatten: [B, A*C, H, W] -> [B, H*W*A, C], any batch size."""
    _, ac, h, w = t.shape
    a = ac // per_anchor
    return t.reshape(-1, a, per_anchor, h, w).permute(0, 3, 4, 1, 2).reshape(-1, h * w * a, per_anchor)


class TwoStageNetwork(nn.Module):
    """Faster / Mask R-CNN split where the data-dependent steps start (see the module docstring)."""

    def __init__(self, detector: nn.Module, chip: tuple[int, int]) -> None:
        super().__init__()
        net = detector.net
        self.net = net
        self.resize = _Resized(net, chip)
        self.has_masks = getattr(net.roi_heads, "mask_head", None) is not None
        with torch.no_grad():
            x = self.resize(torch.zeros(1, len(net.transform.image_mean), *chip))
            features = net.backbone(x)
            images = ImageList(x, [self.resize.resized])
            anchors = net.rpn.anchor_generator(images, list(features.values()))[0]
        self.register_buffer("anchors", anchors)
        self.level_sizes = [
            int(f.shape[-2] * f.shape[-1]) * net.rpn.anchor_generator.num_anchors_per_location()[0]
            for f in features.values()
        ]
        self.feature_names = list(features.keys())
        self.feature_sizes = [list(f.shape[-2:]) for f in features.values()]

    def forward(self, images: torch.Tensor):
        features = self.net.backbone(self.resize(images))
        maps = list(features.values())
        objectness, deltas = self.net.rpn.head(maps)
        objectness = torch.cat([_flatten_level(o, 1) for o in objectness], 1)[..., 0]
        deltas = torch.cat([_flatten_level(d, 4) for d in deltas], 1)
        return (objectness, deltas, self.anchors, *maps)

    def box_stage(self, pooled: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        heads = self.net.roi_heads
        return heads.box_predictor(heads.box_head(pooled))

    def mask_stage(self, pooled: torch.Tensor) -> torch.Tensor:
        heads = self.net.roi_heads
        return heads.mask_predictor(heads.mask_head(pooled))

    def spec(self) -> dict[str, Any]:
        rpn, heads = self.net.rpn, self.net.roi_heads
        pool = heads.box_roi_pool
        pooled = [i for i, name in enumerate(self.feature_names) if name in pool.featmap_names]
        resized = self.resize.resized
        scales = []
        for i in pooled:  # torchvision's _infer_scale: the nearest power of two of feature / image size
            scales.append(2 ** float(torch.tensor(float(self.feature_sizes[i][0]) / resized[0]).log2().round()))
        spec = {
            "decoder": "rcnn",
            "resized": list(resized),
            "level_sizes": self.level_sizes,
            "rpn": {
                "pre_nms_top_n": int(rpn._pre_nms_top_n["testing"]),
                "post_nms_top_n": int(rpn._post_nms_top_n["testing"]),
                "nms_thresh": float(rpn.nms_thresh),
                "score_thresh": float(rpn.score_thresh),
                "min_size": float(rpn.min_size),
                "weights": list(rpn.box_coder.weights),
                "clip": float(rpn.box_coder.bbox_xform_clip),
            },
            "pooled_levels": pooled,
            "pool_scales": scales,
            "box_pool": {"size": int(pool.output_size[0]), "sampling_ratio": int(pool.sampling_ratio)},
            "box": {
                "score_thresh": float(heads.score_thresh),
                "nms_thresh": float(heads.nms_thresh),
                "detections_per_img": int(heads.detections_per_img),
                "weights": list(heads.box_coder.weights),
                "clip": float(heads.box_coder.bbox_xform_clip),
            },
        }
        if self.has_masks:
            spec["mask_pool"] = {
                "size": int(heads.mask_roi_pool.output_size[0]),
                "sampling_ratio": int(heads.mask_roi_pool.sampling_ratio),
            }
        return spec

    def trace(self, example: torch.Tensor) -> torch.jit.ScriptModule:
        channels = self.net.backbone.out_channels
        pool = self.net.roi_heads.box_roi_pool.output_size[0]
        methods = {"forward": (example,), "box_stage": (torch.zeros(2, channels, pool, pool),)}
        if self.has_masks:
            size = self.net.roi_heads.mask_roi_pool.output_size[0]
            methods["mask_stage"] = (torch.zeros(2, channels, size, size),)
        return torch.jit.trace_module(self, methods, check_trace=False, strict=False)


class RetinaNetNetwork(nn.Module):
    """torchvision RetinaNet up to its head: (class logits [B, N, K], box deltas [B, N, 4], anchors [N, 4])."""

    def __init__(self, detector: nn.Module, chip: tuple[int, int]) -> None:
        super().__init__()
        net = detector.net
        self.net = net
        self.resize = _Resized(net, chip)
        with torch.no_grad():
            x = self.resize(torch.zeros(1, len(net.transform.image_mean), *chip))
            features = list(net.backbone(x).values())
            anchors = net.anchor_generator(ImageList(x, [self.resize.resized]), features)[0]
        self.register_buffer("anchors", anchors)
        per_location = net.anchor_generator.num_anchors_per_location()[0]
        self.level_sizes = [int(f.shape[-2] * f.shape[-1]) * per_location for f in features]

    def forward(self, images: torch.Tensor):
        features = list(self.net.backbone(self.resize(images)).values())
        head = self.net.head
        k = head.classification_head.num_classes
        logits = torch.cat(
            [
                _flatten_level(head.classification_head.cls_logits(head.classification_head.conv(f)), k)
                for f in features
            ],
            1,
        )
        deltas = torch.cat(
            [_flatten_level(head.regression_head.bbox_reg(head.regression_head.conv(f)), 4) for f in features], 1
        )
        return logits, deltas, self.anchors

    def spec(self) -> dict[str, Any]:
        net = self.net
        return {
            "decoder": "retinanet",
            "resized": list(self.resize.resized),
            "level_sizes": self.level_sizes,
            "score_thresh": float(net.score_thresh),
            "nms_thresh": float(net.nms_thresh),
            "topk_candidates": int(net.topk_candidates),
            "detections_per_img": int(net.detections_per_img),
            "weights": list(net.box_coder.weights),
            "clip": float(net.box_coder.bbox_xform_clip),
        }


class CandidateDetections(nn.Module):
    """DETREG, ATSS, VFNet: networks whose eval forward already gives the batch's candidates, (boxes [B, N, 4]
    px, scores [B, N], labels [B, N] 0-based) before the score threshold and NMS; `decoder` is the "dense"
    spec that finishes them as the model's detect() does."""

    def __init__(self, model: nn.Module, decoder: dict[str, Any]) -> None:
        super().__init__()
        self.model = model
        self.decoder = dict(decoder)

    def forward(self, images: torch.Tensor):
        return self.model(images)

    def spec(self) -> dict[str, Any]:
        return dict(self.decoder)


class FCOSNetwork(nn.Module):
    """torchvision FCOS up to its per-level top-k: the "dense" candidates in the tile's pixels (resize, head,
    sqrt(class x centre-ness) scores, box decoding and clipping as its postprocess_detections does)."""

    def __init__(self, detector: nn.Module, chip: tuple[int, int]) -> None:
        super().__init__()
        net = detector.net
        self.net = net
        self.resize = _Resized(net, chip)
        with torch.no_grad():
            x = self.resize(torch.zeros(1, len(net.transform.image_mean), *chip))
            features = list(net.backbone(x).values())
            anchors = net.anchor_generator(ImageList(x, [self.resize.resized]), features)[0]
        self.register_buffer("anchors", anchors)
        self.level_sizes = [int(f.shape[-2] * f.shape[-1]) for f in features]  # one point per cell
        self.register_buffer(
            "scale",
            torch.tensor([chip[1] / self.resize.resized[1], chip[0] / self.resize.resized[0]] * 2, dtype=torch.float32),
        )

    def forward(self, images: torch.Tensor):
        net = self.net
        head = net.head(list(net.backbone(self.resize(images)).values()))
        scores = torch.sqrt(torch.sigmoid(head["cls_logits"]) * torch.sigmoid(head["bbox_ctrness"]))  # [B, N, K]
        boxes_all, scores_all, labels_all, start = [], [], [], 0
        for n in self.level_sizes:
            level = scores[:, start : start + n]
            k = level.shape[2]
            top, index = level.flatten(1).topk(min(int(net.topk_candidates), n * k), dim=1)
            cell = torch.div(index, k, rounding_mode="floor") + start
            start += n
            deltas = torch.gather(head["bbox_regression"], 1, cell[..., None].expand(-1, -1, 4))
            boxes = net.box_coder.decode(deltas.reshape(-1, 4), self.anchors[cell.reshape(-1)]).reshape(deltas.shape)
            h, w = self.resize.resized
            boxes = torch.stack(
                [
                    boxes[..., 0].clamp(0, w),
                    boxes[..., 1].clamp(0, h),
                    boxes[..., 2].clamp(0, w),
                    boxes[..., 3].clamp(0, h),
                ],
                -1,
            )
            boxes_all.append(boxes * self.scale)
            scores_all.append(top)
            labels_all.append(index % k - 1)  # class outputs are 1..K (index 0 is never a class)
        return torch.cat(boxes_all, 1), torch.cat(scores_all, 1), torch.cat(labels_all, 1)

    def spec(self) -> dict[str, Any]:
        net = self.net
        return {
            "decoder": "dense",
            "score_thresh": float(net.score_thresh),
            "nms_thresh": float(net.nms_thresh),
            "max_detections": int(net.detections_per_img),
        }


class CascadeNetwork(TwoStageNetwork):
    """Cascade R-CNN: Faster R-CNN's stage 1, then one traced box stage per cascade stage (`box_stage0`..), each
    pooling the boxes the previous one refined; the PRF averages the stages' class probabilities and keeps the
    last stage's class-agnostic boxes (cascade.py's CascadeRoIHeads)."""

    def box_stage0(self, pooled: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self._stage(0, pooled)

    def box_stage1(self, pooled: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self._stage(1, pooled)

    def box_stage2(self, pooled: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self._stage(2, pooled)

    def _stage(self, stage: int, pooled: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        heads = self.net.roi_heads
        return heads.stage_predictors[stage](heads.stage_heads[stage](pooled))

    def spec(self) -> dict[str, Any]:
        spec = super().spec()
        spec["cascade"] = [list(coder.weights) for coder in self.net.roi_heads.coders]
        return spec

    def trace(self, example: torch.Tensor) -> torch.jit.ScriptModule:
        channels = self.net.backbone.out_channels
        pool = self.net.roi_heads.box_roi_pool.output_size[0]
        pooled = (torch.zeros(2, channels, pool, pool),)
        methods = {"forward": (example,), **{f"box_stage{i}": pooled for i in range(len(self.net.roi_heads.coders))}}
        return torch.jit.trace_module(self, methods, check_trace=False, strict=False)
