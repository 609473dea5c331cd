"""YOLOV3: Darknet-53 + three-scale YOLO heads (decoupled outputs) over chips resized about 1.5x inside the
network, anchors from k-means over the training boxes (yolo_net.py)."""

from __future__ import annotations

from typing import Any

from torch import nn

from gpjobs.catalog import ArgumentError
from gpjobs.training.backbones import build_backbone
from gpjobs.training.models.detection.anchors import yolo_anchors
from gpjobs.training.models.detection.common import DetectionFamily, training_box_sizes
from gpjobs.training.models.detection.yolo_net import YOLOv3Net, check_chip_multiple, resized_side


class YOLOv3Family(DetectionFamily):
    # Off unless the clip_grad_norm argument asks for it: YOLO learns without it (its early gradient norms are
    # 50-160 with the GroupNorm head, ~5e4 with the former BatchNorm one; the detectors' default clips at 10).
    default_clip_grad_norm = 0.0
    emd_model_configuration = "_yolov3_inference"
    detect_thresh = 0.1  # arcgis' YOLOv3 AP: average_precision_score(detect_thresh=0.1, iou_thresh=0.1)
    # AdamW's rate when the job gives none and is too short for the LR range test. bench/quality.py yolov3 on
    # full palms (120 chips, 5 epochs, batch 4, an H200 in bfloat16), seeds 42-44, held-out Esri AP / COCO
    # mAP@0.5: 0.555 / 0.227 at 1e-3, 0.410 / 0.117 at 3e-3, 0.409 / 0.175 at 6e-3, 0.319 / 0.108 at 1e-2.
    # (On the quick data, 1 seed, 3e-3 had led: 0.153 / 0.113 against 0.139 / 0.055.) SGD at 1e-2 (the Faster
    # R-CNN peer's recipe) did not train it: 0.078 / 0.002. With the CIoU objectness target (yolo_net.py), on
    # the CPU, seeds 42-43: 0.645 / 0.453 at 1e-3, 0.600 / 0.466 at 5e-4, 0.617 / 0.412 at 2e-3.
    default_learning_rate = 1e-3

    def __init__(self, *a: Any, **kw: Any) -> None:
        super().__init__(*a, **kw)
        h, w = self.info.chip_size
        for side in {int(h), int(w)}:
            try:
                check_chip_multiple(side)
            except ValueError as exc:
                raise ArgumentError(str(exc)) from None
        anchors = self.args.get("anchors")
        if anchors is not None and (len(anchors) != 9 or any(len(a) != 2 for a in anchors)):
            raise ArgumentError(f"anchors must be 9 [w, h] pairs in pixels, got {anchors}")

    def attach_data(self, data: Any) -> None:
        self.box_sizes = training_box_sizes(data)
        if not self.args.get("anchors"):
            self.args["anchors"] = [
                [round(w, 2), round(h, 2)]
                for w, h in yolo_anchors(self.box_sizes, seed=int(self.args.get("seed") or 0), fallback_chip=self.chip)
            ]
            self.say(
                "info", f"YOLOv3 anchors from k-means over {len(self.box_sizes)} training boxes: {self.args['anchors']}"
            )
        if self.input_scale != 1.0:
            self.say("info", f"YOLOv3 resizes {self.chip} px chips to {resized_side(self.chip)} px inside the network")

    @property
    def anchors(self) -> list[list[float]]:
        # Without data (rebuilding a package) any 9 anchors do: the saved state dict carries the real ones.
        return self.args.get("anchors") or yolo_anchors([], fallback_chip=self.chip)

    @property
    def input_scale(self) -> float:
        """resized_side's scale for square chips; others run as they are (both sides must stay multiples of 32)."""
        h, w = (int(s) for s in self.info.chip_size)
        return resized_side(h) / h if h == w else 1.0

    def deployable(self, model: nn.Module) -> nn.Module:
        from gpjobs.training.models.detection.deploy import DenseDetections

        return DenseDetections(model, "yolo")

    def inference_spec(self, network: nn.Module) -> dict[str, Any]:
        from gpjobs.training.models.detection.deploy import dense_spec

        return {**super().inference_spec(network), **dense_spec("yolo")}

    def build(self) -> nn.Module:
        if self.args.get("pretrained_backbone") is False and self.weights.skip_reason is None:
            self.weights.skip_reason = "pretrained_backbone=false"
        body = build_backbone("DARKNET53", self.in_channels, weights=self.weights, say=self.say)
        return YOLOv3Net(body, self.num_classes, self.anchors, input_scale=self.input_scale)

    def extra_parameters(self) -> dict[str, Any]:
        return {"anchors": self.anchors, "pretrained_backbone": bool(self.args.get("pretrained_backbone", True))}
