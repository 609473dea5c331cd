"""Cascade R-CNN (Cai & Vasconcelos 2018), MMDETECTION's `cascade_rcnn`: torchvision's Faster R-CNN whose RoI
head is a cascade of three box heads trained at rising IoU thresholds (0.5, 0.6, 0.7).

Each stage pools the previous stage's refined boxes, samples them against the truth at its own IoU threshold
and regresses class-agnostic deltas with tighter coder weights ((10,10,5,5), (20,20,10,10), (30,30,15,15));
stage losses weigh 1, 0.5, 0.25 (mmdetection's config). At inference the class probabilities of the three
stages are averaged and the boxes are the last stage's.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection._utils import BoxCoder, Matcher
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import TwoMLPHead
from torchvision.models.detection.roi_heads import RoIHeads
from torchvision.ops import batched_nms, clip_boxes_to_image, remove_small_boxes

from gpjobs.training.backbones import build_backbone
from gpjobs.training.models.detection.fpn_adapter import FeaturePyramid, level_anchor_sizes
from gpjobs.training.models.detection.rcnn import FasterRCNNFamily
from gpjobs.training.models.detection.torchvision_detectors import (
    TorchvisionDetector,
    rcnn_kwargs,
    resized_sizes,
    transform_kwargs,
)

STAGE_IOUS = (0.5, 0.6, 0.7)
STAGE_CODER_WEIGHTS = ((10.0, 10.0, 5.0, 5.0), (20.0, 20.0, 10.0, 10.0), (30.0, 30.0, 15.0, 15.0))
STAGE_LOSS_WEIGHTS = (1.0, 0.5, 0.25)
REPRESENTATION = 1024


class StagePredictor(nn.Module):
    """Class logits (K + background) and class-agnostic box deltas of one cascade stage."""

    def __init__(self, cin: int, num_classes: int) -> None:
        super().__init__()
        self.cls_score = nn.Linear(cin, num_classes)
        self.bbox_pred = nn.Linear(cin, 4)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.cls_score(x), self.bbox_pred(x)


class CascadeRoIHeads(RoIHeads):
    """torchvision's RoIHeads (pooling, sampling, box head 0) with two more stages after it."""

    def __init__(self, base: RoIHeads, pooled: int, num_classes: int) -> None:
        super().__init__(
            base.box_roi_pool,
            TwoMLPHead(pooled, REPRESENTATION),
            StagePredictor(REPRESENTATION, num_classes),
            STAGE_IOUS[0],
            STAGE_IOUS[0],
            base.fg_bg_sampler.batch_size_per_image,
            base.fg_bg_sampler.positive_fraction,
            STAGE_CODER_WEIGHTS[0],
            base.score_thresh,
            base.nms_thresh,
            base.detections_per_img,
        )
        self.stage_heads = nn.ModuleList([self.box_head] + [TwoMLPHead(pooled, REPRESENTATION) for _ in range(2)])
        self.stage_predictors = nn.ModuleList(
            [self.box_predictor] + [StagePredictor(REPRESENTATION, num_classes) for _ in range(2)]
        )
        self.matchers = [Matcher(t, t, allow_low_quality_matches=False) for t in STAGE_IOUS]
        self.coders = [BoxCoder(w) for w in STAGE_CODER_WEIGHTS]

    def _sample(self, stage: int, proposals: list[torch.Tensor], targets: list[dict[str, torch.Tensor]]):
        # torchvision's sampling reads the matcher and coder from the module: point them at this stage's
        self.proposal_matcher, self.box_coder = self.matchers[stage], self.coders[stage]
        return self.select_training_samples(proposals, targets)

    def _stage(
        self, stage: int, features: Any, proposals: list[torch.Tensor], image_shapes: list[tuple[int, int]]
    ) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        """(logits, deltas, refined boxes per image) of one stage on `proposals`."""
        x = self.stage_heads[stage](self.box_roi_pool(features, proposals, image_shapes))
        logits, deltas = self.stage_predictors[stage](x)
        boxes = self.coders[stage].decode(deltas, proposals)[:, 0]
        refined = [clip_boxes_to_image(b, s) for b, s in zip(boxes.split([len(p) for p in proposals]), image_shapes)]
        return logits, deltas, refined

    def forward(self, features, proposals, image_shapes, targets=None):
        """Training: ([], the three stages' losses); eval: (detections per image, {})."""
        if self.training:
            losses: dict[str, torch.Tensor] = {}
            for stage, weight in enumerate(STAGE_LOSS_WEIGHTS):
                proposals, _, labels, regression = self._sample(stage, [p.detach() for p in proposals], targets)
                logits, deltas, proposals = self._stage(stage, features, proposals, image_shapes)
                labels, regression = torch.cat(labels), torch.cat(regression)
                positive = torch.where(labels > 0)[0]
                box_loss = (
                    F.smooth_l1_loss(deltas[positive], regression[positive], beta=1 / 9, reduction="sum")
                    / labels.numel()
                )
                losses[f"loss_classifier_{stage}"] = weight * F.cross_entropy(logits, labels)
                losses[f"loss_box_reg_{stage}"] = weight * box_loss
            return [], losses
        probabilities = []
        for stage in range(len(STAGE_IOUS)):
            logits, _, refined = self._stage(stage, features, proposals, image_shapes)
            probabilities.append(F.softmax(logits, -1))
            if stage < len(STAGE_IOUS) - 1:
                proposals = refined
        scores = torch.stack(probabilities).mean(0)
        out = []
        for boxes, probs, shape in zip(refined, scores.split([len(p) for p in refined]), image_shapes):
            out.append(self._detections(boxes, probs, shape))
        return out, {}

    def _detections(self, boxes: torch.Tensor, probs: torch.Tensor, shape: tuple[int, int]) -> dict[str, torch.Tensor]:
        k = probs.shape[1] - 1
        scores = probs[:, 1:].reshape(-1)
        labels = torch.arange(1, k + 1, device=probs.device).repeat(boxes.shape[0])
        boxes = boxes[:, None].expand(-1, k, -1).reshape(-1, 4)
        keep = torch.where(scores > self.score_thresh)[0]
        boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
        keep = remove_small_boxes(boxes, min_size=1e-2)
        boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
        keep = batched_nms(boxes, scores, labels, self.nms_thresh)[: self.detections_per_img]
        return {"boxes": boxes[keep], "scores": scores[keep], "labels": labels[keep]}


def build_cascade_rcnn(body: nn.Module, num_classes: int, chip: int, bands: int, args: dict[str, Any]) -> nn.Module:
    """Cascade R-CNN with `num_classes` + background over an FPN on `body` (RPN as FASTERRCNN's)."""
    pyramid = FeaturePyramid(body, min_stride=4, levels=4, extra="maxpool")
    sizes = level_anchor_sizes(resized_sizes(chip)[0], pyramid.level_strides)
    anchors = AnchorGenerator(sizes, ((0.5, 1.0, 2.0),) * len(sizes))
    net = FasterRCNN(
        pyramid,
        num_classes=num_classes + 1,
        rpn_anchor_generator=anchors,
        **transform_kwargs(chip, bands),
        **rcnn_kwargs(args),
    )
    pool = net.roi_heads.box_roi_pool
    pooled = pyramid.out_channels * pool.output_size[0] * pool.output_size[1]
    net.roi_heads = CascadeRoIHeads(net.roi_heads, pooled, num_classes + 1)
    return TorchvisionDetector(net)


class CascadeRCNNFamily(FasterRCNNFamily):
    """Only reachable as MMDETECTION model=cascade_rcnn (mmdet.py gives it MMDetection's `.emd` identity)."""

    def deployable(self, model: nn.Module) -> nn.Module:
        from gpjobs.training.models.detection.deploy import CascadeNetwork

        return CascadeNetwork(model, tuple(int(v) for v in self.info.chip_size))

    def build(self) -> nn.Module:
        body = build_backbone(self.backbone, self.in_channels, weights=self.weights, say=self.say)
        return build_cascade_rcnn(body, self.num_classes, self.chip, self.in_channels, self.args)
