"""What the five detectors share: batches, validation (loss + AP), predictions, `.emd` keys, show_results.

Every detector model is an `nn.Module` with:
  - `model.backbone`: the FeatureBackbone (freezing and the discriminative LR act on it);
  - `model.losses(images, targets) -> Tensor` (train mode: BatchNorm learns; validation calls it with
    BatchNorm in eval so the validation loss does not move the running statistics);
  - `model.detect(images) -> list[{boxes xyxy px, scores, labels 1..K, (masks)}]`;
  - `forward(images)`: raw outputs in train mode; in eval mode `(boxes, scores, labels)` of the batch, which is
    what the TorchScript file holds and the package's standalone inference script reads;
  - optionally `losses_and_detections(images, targets)`: both from one forward pass, for networks whose forward
    is the same in loss mode (BatchNorm and Dropout in eval) and in eval mode; validation then runs it once.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from gpjobs.training.metrics_detection import DetectionEvaluator
from gpjobs.training.models.base import ModelFamily
from gpjobs.training.models.detection.anchors import boxes_wh


def set_loss_mode(model: nn.Module) -> None:
    """Train mode (torchvision detectors compute losses only there) with BatchNorm and Dropout in eval, so a
    validation loss neither moves the running statistics nor drops features at random."""
    model.train()
    for module in model.modules():
        if isinstance(module, (nn.modules.batchnorm._BatchNorm, nn.Dropout)):
            module.eval()


def training_box_sizes(data: Any) -> np.ndarray:
    """(w, h) in model pixels of every training box, read from the parsed labels (no chip decoding)."""
    dataset = data.train
    h, w = data.info.chip_size
    src = getattr(getattr(data, "report", None), "chip_size", None) or (h, w)
    sy, sx = h / float(src[0] or h), w / float(src[1] or w)
    sizes = []
    objects_of = getattr(dataset, "_objects", None)
    for record in getattr(dataset, "records", []):
        if record.objects is None and (record.label is None or objects_of is None):
            continue  # instance masks (RCNN_Masks): no text labels to read boxes from
        objects = record.objects if record.objects is not None else objects_of(record)
        for _, (x0, y0, x1, y1) in objects:
            sizes.append(((x1 - x0) * sx, (y1 - y0) * sy))
    if sizes:
        return np.asarray(sizes, dtype=np.float64)
    if getattr(dataset, "records", None) is None:  # a plain dataset: read the targets (slow, tests only)
        return boxes_wh(dataset[i][1] for i in range(len(dataset)))
    return np.zeros((0, 2))


class DetectionFamily(ModelFamily):
    """Base of the detector families; subclasses implement `build()` and set the `.emd` identity."""

    emd_model_type = "ObjectDetection"
    inference_function = "GpjobsObjectDetector.py"
    default_monitor = "valid_loss"
    detect_thresh = 0.2  # arcgis' per-model score threshold for its AP (models.md §1C)
    default_clip_grad_norm = 10.0  # the engine clips each step's gradient norm (see engine.schedule.clip_norm)
    uses_masks = False

    def __init__(self, *a: Any, **kw: Any) -> None:
        super().__init__(*a, **kw)
        self.class_names = [c.name for c in self.info.classes]
        self.box_sizes: np.ndarray | None = None

    # --- data ---

    def attach_data(self, data: Any) -> None:
        """Called with the training data before build(); SSD and YOLOv3 size their anchors from its boxes."""

    @property
    def chip(self) -> int:
        h, w = self.info.chip_size
        return int(max(h, w))

    @staticmethod
    def to_device(batch: Any, device: torch.device) -> tuple[torch.Tensor, list[dict[str, torch.Tensor]]]:
        images, targets = batch
        images = images.to(device, non_blocking=True)
        targets = [{k: v.to(device, non_blocking=True) for k, v in t.items()} for t in targets]
        return images, targets

    # --- training and evaluation ---

    def training_loss(self, model: nn.Module, batch: Any, device: torch.device) -> torch.Tensor:
        images, targets = self.to_device(batch, device)
        return model.losses(images, targets)

    def evaluator(self) -> DetectionEvaluator:
        return DetectionEvaluator(
            self.num_classes, iou_thresh=float(self.args.get("iou_thresh") or 0.1), detect_thresh=self.detect_thresh
        )

    @torch.no_grad()
    def validate(self, model: nn.Module, loader: Iterable, device: torch.device) -> tuple[float, dict[str, Any]]:
        boxes = self.evaluator()
        masks = (
            DetectionEvaluator(
                self.num_classes, iou_thresh=boxes.iou_thresh, detect_thresh=self.detect_thresh, use_masks=True
            )
            if self.uses_masks
            else None
        )
        total, count = 0.0, 0
        for batch in loader:
            images, targets = self.to_device(batch, device)
            set_loss_mode(model)
            if hasattr(model, "losses_and_detections"):  # one forward gives both (see the module docstring)
                loss, found = model.losses_and_detections(images, targets)
                model.eval()
            else:
                loss = model.losses(images, targets)
                model.eval()
                found = model.detect(images)
            total += float(loss) * images.shape[0]
            count += images.shape[0]
            for pred, target in zip(found, targets):
                boxes.add(pred, target)
                if masks is not None:
                    masks.add({**pred, "masks": pred["masks"].squeeze(1) > 0.5}, target)
        model.eval()
        result = boxes.compute(self.class_names)
        metrics: dict[str, Any] = {
            "average_precision": result["average_precision"],
            "map_50": result["map_50"],
            "map_50_95": result["map_50_95"],
        }
        if masks is not None:
            mask_result = masks.compute(self.class_names)
            metrics.update(
                {
                    "mask_average_precision": mask_result["average_precision"],
                    "mask_map_50": mask_result["map_50"],
                    "mask_map_50_95": mask_result["map_50_95"],
                    "mask_average_precision_score": mask_result["average_precision_score"],
                }
            )
        metrics.update(
            {
                "average_precision_score": result["average_precision_score"],
                "ap_iou_thresh": result["ap_iou_thresh"],
                "ap_detect_thresh": result["ap_detect_thresh"],
            }
        )
        return total / max(count, 1), metrics

    @torch.no_grad()
    def predict(self, model: nn.Module, images: torch.Tensor) -> list[dict[str, Any]]:
        """Per chip: boxes (xyxy px in the model's chip size), scores, labels (class names), class_values."""
        device = next(model.parameters()).device
        model.eval()
        out = []
        for det in model.detect(images.to(device)):
            labels = det["labels"].cpu().tolist()
            item = {
                "boxes": [[round(float(v), 3) for v in box] for box in det["boxes"].cpu().tolist()],
                "scores": [round(float(s), 5) for s in det["scores"].cpu().tolist()],
                "labels": [self.class_names[i - 1] if 0 < i <= self.num_classes else str(i) for i in labels],
                "class_values": [self.info.classes[i - 1].value if 0 < i <= self.num_classes else None for i in labels],
            }
            if "masks" in det:
                binary = (det["masks"].squeeze(1) > 0.5).cpu()
                item["mask_pixels"] = binary.flatten(1).sum(1).tolist()
                item["_masks"] = binary.numpy()
            out.append(item)
        return out

    # --- package ---

    def inference_spec(self, network: nn.Module) -> dict[str, Any]:
        """Boxes (or instance masks) from the deployable network's outputs: `network.spec()` or the dense decoder."""
        decoder = network.spec() if hasattr(network, "spec") else {}
        return {
            "output": "instances" if self.uses_masks else "boxes",
            "index_values": [int(c.value) for c in self.info.classes],
            **decoder,
        }

    def model_parameters(self) -> dict[str, Any]:
        return {**super().model_parameters(), **self.extra_parameters()}

    def extra_parameters(self) -> dict[str, Any]:
        """Model-specific ModelParameters (anchors, grids, ...) needed to rebuild the model."""
        return {}

    def emd_fields(self, metrics: dict[str, Any]) -> dict[str, Any]:
        fields = super().emd_fields(metrics)
        if "average_precision_score" in metrics:
            fields["average_precision_score"] = metrics["average_precision_score"]
        for key in (
            "average_precision",
            "map_50",
            "map_50_95",
            "mask_average_precision",
            "mask_map_50",
            "mask_map_50_95",
        ):
            if key in metrics:
                fields[key] = metrics[key]
        fields["MetricsNote"] = (
            f"average_precision_score: Esri-style AP per class (IoU >= {metrics.get('ap_iou_thresh', 0.1)}, "
            f"score >= {self.detect_thresh}, all-point interpolation), as arcgis.learn reports it; "
            "map_50 / map_50_95: COCO-style mean AP at IoU 0.5 and over IoU 0.50:0.95 (101-point)"
        )
        return fields

    def show_results(self, model: nn.Module, batch: Any, path: Path) -> None:
        """Ground-truth boxes next to predicted boxes (score >= detect_thresh) for up to 4 chips."""
        from gpjobs.training.model_card import _plt, class_colors, display_rgb

        images, targets = batch
        predictions = self.predict(model, images)
        colors = class_colors(self.info.classes)
        plt = _plt()
        n = min(4, images.shape[0])
        fig, axes = plt.subplots(n, 2, figsize=(6, 3 * n), squeeze=False)
        for i in range(n):
            picture = display_rgb(images[i])
            truth = [(b, lbl, None) for b, lbl in zip(targets[i]["boxes"].tolist(), targets[i]["labels"].tolist())]
            pred = [
                (b, self.class_names.index(lbl) + 1 if lbl in self.class_names else 0, s)
                for b, lbl, s in zip(predictions[i]["boxes"], predictions[i]["labels"], predictions[i]["scores"])
                if s >= self.detect_thresh
            ]
            for ax, title, shown in ((axes[i][0], "ground truth", truth), (axes[i][1], "prediction", pred)):
                ax.imshow(picture, interpolation="nearest")
                for (x0, y0, x1, y1), label, score in shown:
                    color = colors[int(label) % len(colors)] if label else (1.0, 1.0, 0.0)
                    ax.add_patch(plt.Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, edgecolor=color, lw=1.5))
                    if score is not None:
                        ax.text(x0, y0, f"{score:.2f}", color=color, fontsize=6, va="bottom")
                ax.set_title(title, fontsize=8)
                ax.axis("off")
        fig.tight_layout()
        fig.savefig(path, dpi=80)
        plt.close(fig)
