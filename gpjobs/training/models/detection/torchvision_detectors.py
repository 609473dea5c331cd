"""Faster R-CNN, Mask R-CNN and RetinaNet from torchvision, over our feature pyramid.

Our data layer already normalises chips (ImageNet or band statistics), so torchvision's own normalisation is
turned into the identity (mean 0, std 1, one entry per band: any band count works). Chips are resized inside
the model to 1.5x (min side) / 2x (max side) the chip, as arcgis.learn configures its R-CNNs.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torchvision.models.detection import FCOS, FasterRCNN, MaskRCNN, RetinaNet
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.retinanet import RetinaNetHead

from gpjobs.training.models.detection.fpn_adapter import FeaturePyramid, group_norm, level_anchor_sizes

RCNN_KWARGS = (
    "rpn_pre_nms_top_n_train",
    "rpn_pre_nms_top_n_test",
    "rpn_post_nms_top_n_train",
    "rpn_post_nms_top_n_test",
    "rpn_nms_thresh",
    "rpn_fg_iou_thresh",
    "rpn_bg_iou_thresh",
    "rpn_batch_size_per_image",
    "box_batch_size_per_image",
    "box_bg_iou_thresh",
    "box_fg_iou_thresh",
    "box_detections_per_img",
    "box_score_thresh",
    "box_nms_thresh",
)


def resized_sizes(chip: int) -> tuple[int, int]:
    """(min_size, max_size) of torchvision's transform: 1.5x and 2x the chip (arcgis' MaskRCNN setting).

    Worth its 2.25x pixels: bench/quality.py fasterrcnn on full palms (160 px chips, 5 epochs, batch 4, an H200),
    seeds 42-44, held-out Esri AP / COCO mAP@0.5 0.912 / 0.884 at 1.5x (a second run: 0.874 / 0.822; cuDNN runs
    are not bit-reproducible) against 0.829 / 0.812 without resizing (the torchvision peer: 0.750 / 0.653)."""
    return int(round(1.5 * chip)), int(round(2 * chip))


def transform_kwargs(chip: int, bands: int) -> dict[str, Any]:
    min_size, max_size = resized_sizes(chip)
    return {"min_size": min_size, "max_size": max_size, "image_mean": [0.0] * bands, "image_std": [1.0] * bands}


def rcnn_kwargs(args: dict[str, Any]) -> dict[str, Any]:
    """The torchvision R-CNN keyword arguments present in the parsed job arguments."""
    return {k: args[k] for k in RCNN_KWARGS if args.get(k) is not None}


def build_rcnn(
    body: nn.Module, num_classes: int, chip: int, bands: int, args: dict[str, Any], *, masks: bool = False
) -> nn.Module:
    """Faster R-CNN (or Mask R-CNN) with `num_classes` + background over an FPN on `body`."""
    pyramid = FeaturePyramid(body, min_stride=4, levels=4, extra="maxpool")
    sizes = level_anchor_sizes(resized_sizes(chip)[0], pyramid.level_strides)
    anchors = AnchorGenerator(sizes, ((0.5, 1.0, 2.0),) * len(sizes))
    cls = MaskRCNN if masks else FasterRCNN
    return TorchvisionDetector(
        cls(
            pyramid,
            num_classes=num_classes + 1,
            rpn_anchor_generator=anchors,
            **transform_kwargs(chip, bands),
            **rcnn_kwargs(args),
        )
    )


def build_retinanet(
    body: nn.Module, num_classes: int, chip: int, bands: int, *, scales: list[float], ratios: list[float]
) -> nn.Module:
    """RetinaNet over P3-P7; arcgis' `scales` x `ratios` become the anchors of every pyramid level."""
    pyramid = FeaturePyramid(body, min_stride=8, levels=3, extra="p6p7")
    sizes = level_anchor_sizes(resized_sizes(chip)[0], pyramid.level_strides, scales)
    anchors = AnchorGenerator(sizes, (tuple(float(r) for r in ratios),) * len(sizes))
    # num_classes + 1 keeps label indices 1..K as they are (index 0 simply never fires), as torchvision's
    # own COCO RetinaNet does with its 91 classes.
    head = RetinaNetHead(
        pyramid.out_channels, anchors.num_anchors_per_location()[0], num_classes + 1, norm_layer=group_norm
    )  # torchvision's RetinaNet v2 head: stable from random weights
    return OneStageDetector(
        RetinaNet(
            pyramid, num_classes=num_classes + 1, anchor_generator=anchors, head=head, **transform_kwargs(chip, bands)
        )
    )


def loss_total(loss_dict: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.stack([v.float() for v in loss_dict.values()]).sum()


class TorchvisionDetector(nn.Module):
    """A torchvision detector behind the interface the detection families share (see common.py)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    @property
    def backbone(self) -> nn.Module:  # the FeatureBackbone under the FPN: what freezing acts on
        return self.net.backbone.body

    def losses(self, images: torch.Tensor, targets: list[dict[str, torch.Tensor]]) -> torch.Tensor:
        return loss_total(self.net(list(images), targets))

    def detect(self, images: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        return self.net(list(images))

    def forward(self, images: torch.Tensor):
        """Eval: (boxes, scores, labels) of the batch's detections, for TorchScript export."""
        found = self.net(list(images))
        if self.training:
            return found
        return (
            torch.cat([d["boxes"] for d in found]),
            torch.cat([d["scores"] for d in found]),
            torch.cat([d["labels"] for d in found]),
        )


class OneStageDetector(TorchvisionDetector):
    """torchvision's RetinaNet or FCOS: no proposal sampling, GroupNorm heads, one transform size, so the loss-mode
    forward (BatchNorm in eval) equals the eval forward and validation takes loss and detections from one pass."""

    def losses_and_detections(
        self, images: torch.Tensor, targets: list[dict[str, torch.Tensor]]
    ) -> tuple[torch.Tensor, list[dict[str, torch.Tensor]]]:
        """What `losses` then `detect` give, from one backbone + head pass (torchvision's forward, both branches)."""
        self.eval()  # the transform rescales the detections back to the chip in eval mode only
        net = self.net
        original = [(int(img.shape[-2]), int(img.shape[-1])) for img in images]
        batch, scaled = net.transform(list(images), [dict(t) for t in targets])
        features = list(net.backbone(batch.tensors).values())
        head_outputs = net.head(features)
        anchors = net.anchor_generator(batch, features)
        cells = [f.size(2) * f.size(3) for f in features]
        if isinstance(net, FCOS):
            loss = loss_total(net.compute_loss(scaled, head_outputs, anchors, cells))
        else:
            loss = loss_total(net.compute_loss(scaled, head_outputs, anchors))
        per_cell = head_outputs["cls_logits"].size(1) // sum(cells)  # anchors per feature cell
        per_level = [n * per_cell for n in cells]
        split = {k: list(v.split(per_level, dim=1)) for k, v in head_outputs.items()}
        found = net.postprocess_detections(split, [list(a.split(per_level)) for a in anchors], batch.image_sizes)
        return loss, net.transform.postprocess(found, batch.image_sizes, original)
