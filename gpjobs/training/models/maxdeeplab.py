"""Panoptic segmentation: MAXDEEPLAB on Panoptic_Segmentation exports (labels/ semantic + labels2/ instances).

Network: maxdeeplab_net.py (a small MaX-DeepLab: dual-path pixel/memory transformer with axial
attention); targets, losses and panoptic quality: panoptic.py. As arcgis.learn's MaXDeepLab: no backbone
choice, chips a multiple of 16 (`catalog.chip_size_problem`, checked at submit and here), classes =
background + the export's classes, "thing" classes = the `.emd`'s Panoptic_Segmentation_Instance_Classes,
`n_masks` = the most segments in a training chip (+ 2 spare slots) unless the argument sets it.
Metric: PQ (arcgis.learn's `panoptic_quality`), with SQ and RQ beside it.

`gpjobs predict` prints the pixels per class and the number of instances per thing class; with
--masks-dir it writes the class-value raster (<chip>.tif) and the instance-id raster (<chip>_instances.tif).
The package's raster function, GpjobsPanopticSegmenter.py, gives the class raster to Classify Pixels Using
Deep Learning and the instances as polygons to Detect Objects Using Deep Learning (as arcgis.learn's
ArcGISPanopticSegmenter does).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from gpjobs.catalog import ArgumentError, chip_size_problem
from gpjobs.training.models.base import ModelFamily
from gpjobs.training.models.maxdeeplab_net import DEPTH, WIDTH, MaXDeepLabNet, PanopticDeploy
from gpjobs.training.models.panoptic import PanopticQuality, panoptic_loss, segments

SPARE_SLOTS = 2


def _instance_values(entries: Any) -> list[int]:
    return [int(e["Value"]) for e in entries or [] if isinstance(e, dict) and "Value" in e]


class MaXDeepLabFamily(ModelFamily):
    emd_model_type = "PanopticSegmenter"
    emd_model_configuration = "_panoptic_inferencing"
    inference_function = "GpjobsPanopticSegmenter.py"  # Classify Pixels (classes) and Detect Objects (instances)

    def __init__(self, *a: Any, **kw: Any) -> None:
        super().__init__(*a, **kw)
        problem = chip_size_problem(self.model_type, tuple(self.info.chip_size))
        if problem:
            raise ArgumentError(problem)
        self.say(
            "info",
            f"MAXDEEPLAB: a small MaX-DeepLab ({DEPTH} dual-path axial-attention blocks of {WIDTH} "
            "channels at stride 16, no ImageNet backbone) stands in for MaX-DeepLab-S",
        )
        self.thing_values: list[int] = []
        self.n_masks = int(self.args["n_masks"]) if self.args.get("n_masks") else 0
        self.score_thresh = float(self.args.get("score_thresh") if self.args.get("score_thresh") is not None else 0.5)

    @property
    def class_names(self) -> list[str]:
        return ["background", *(c.name for c in self.info.classes)]

    @property
    def thing_indices(self) -> list[int]:
        return [i + 1 for i, c in enumerate(self.info.classes) if c.value in self.thing_values]

    def attach_data(self, data: Any) -> None:
        from gpjobs.export.chips import read_label_raster
        from gpjobs.export.readers import instances_from_mask

        self.thing_values = _instance_values(data.export_emd.get("Panoptic_Segmentation_Instance_Classes"))
        if not self.thing_values:
            self.say(
                "warning",
                "the export lists no Panoptic_Segmentation_Instance_Classes: every class is "
                "trained as 'stuff' (one segment per class and chip)",
            )
        if self.n_masks:
            return
        most = 1
        for rec in data.train.records:
            stuff = {int(v) for v in np.unique(read_label_raster(rec.label))} - set(self.thing_values)
            things = sum(len(instances_from_mask(read_label_raster(p))) for v, p in rec.masks if v in self.thing_values)
            most = max(most, len(stuff) + things)
        self.n_masks = most + SPARE_SLOTS
        self.say(
            "info",
            f"n_masks = {self.n_masks}: the most segments in a training chip ({most}, background "
            f"included) + {SPARE_SLOTS}",
        )

    def load_emd(self, emd: dict[str, Any]) -> None:
        kwargs = emd.get("Kwargs") or {}
        self.thing_values = [int(v) for v in kwargs.get("instance_classes") or []]
        self.n_masks = self.n_masks or int(kwargs.get("n_masks") or 0)

    def build(self) -> nn.Module:
        if not self.n_masks:
            raise ArgumentError("MAXDEEPLAB needs n_masks (from its training data or its package)")
        return MaXDeepLabNet(
            self.in_channels,
            tuple(self.info.chip_size),
            len(self.info.classes) + 1,
            self.n_masks,
            self.thing_indices,
            self.score_thresh,
        )

    def training_loss(self, model: nn.Module, batch: Any, device: torch.device) -> torch.Tensor:
        images, targets = batch
        images = images.to(device, non_blocking=True)
        targets = [{k: v.to(device, non_blocking=True) for k, v in t.items()} for t in targets]
        return panoptic_loss(model.outputs(images), targets, model.is_thing)[0]

    @torch.no_grad()
    def validate(self, model: nn.Module, loader: Iterable, device: torch.device) -> tuple[float, dict[str, Any]]:
        total, n = 0.0, 0
        quality = PanopticQuality(self.class_names)
        for images, targets in loader:
            images = images.to(device, non_blocking=True)
            targets = [{k: v.to(device, non_blocking=True) for k, v in t.items()} for t in targets]
            truth = [segments(target, model.is_thing) for target in targets]
            out = model.outputs(images)
            total += float(panoptic_loss(out, targets, model.is_thing, truth)[0]) * images.shape[0]
            n += images.shape[0]
            classes, instances = model.postprocess(out, images.shape[-2:])
            for i, (ids, seg_classes) in enumerate(truth):
                quality.update(classes[i], instances[i], ids, seg_classes)
        result = quality.result()
        return total / max(n, 1), {
            "PQ": result["PQ"],
            "SQ": result["SQ"],
            "RQ": result["RQ"],
            "per_class_metrics": result["per_class_metrics"],
        }

    @torch.no_grad()
    def predict(self, model: nn.Module, images: torch.Tensor) -> list[dict[str, Any]]:
        """Per chip: pixels per class, instances per thing class; `_mask` class values, `_instances` ids."""
        classes, instances = model(images)
        values = np.asarray([0, *(c.value for c in self.info.classes)], dtype=np.int64)
        names = ["NoData", *(c.name for c in self.info.classes)]
        out = []
        for cls, inst in zip(classes.cpu().numpy(), instances.cpu().numpy()):
            counts = np.bincount(cls.ravel(), minlength=len(names))
            per_thing = {names[c]: len(np.unique(inst[(cls == c) & (inst > 0)])) for c in self.thing_indices}
            out.append(
                {
                    "class_pixels": {names[i]: int(v) for i, v in enumerate(counts) if v},
                    "instances": per_thing,
                    "_mask": values[cls],
                    "_instances": inst.astype(np.int32),
                }
            )
        return out

    def deployable(self, model: nn.Module) -> nn.Module:
        return PanopticDeploy(model)

    def inference_spec(self, network: nn.Module) -> dict[str, Any]:
        """Class index i -> value (0: background, written as NoData) and the default slot score threshold (the
        network itself knows which classes are "things", whose slots become instances)."""
        return {
            "output": "panoptic",
            "index_values": [0, *(int(c.value) for c in self.info.classes)],
            "score_thresh": self.score_thresh,
        }

    def model_parameters(self) -> dict[str, Any]:
        return {"backbone": "", "backend": "pytorch", "n_masks": self.n_masks, "score_thresh": self.score_thresh}

    def emd_fields(self, metrics: dict[str, Any]) -> dict[str, Any]:
        import json

        fields = super().emd_fields(metrics)
        fields.update(
            {
                "DatasetType": "Panoptic_Segmentation",
                "Kwargs": {"n_masks": self.n_masks, "instance_classes": list(self.thing_values)},
            }
        )
        if "PQ" in metrics:
            fields["panoptic_quality"] = f"{metrics['PQ']:.4e}"
            for key in ("PQ", "SQ", "RQ"):
                fields[key] = f"{metrics[key]:.4e}"
        if metrics.get("per_class_metrics"):
            fields["per_class_metrics"] = json.dumps(metrics["per_class_metrics"])
        return fields

    def show_results(self, model: nn.Module, batch: Any, path: Path) -> None:
        from gpjobs.training.model_card import display_rgb
        from gpjobs.training.models.binary import save_panels

        images, targets = batch
        model.eval()
        with torch.no_grad():
            classes, instances = model(images)
        rows = []
        for i in range(min(4, images.shape[0])):
            ids, seg_classes = segments(targets[i], model.is_thing)
            truth_cls = torch.where(ids >= 0, seg_classes[ids.clamp_min(0)] if len(seg_classes) else ids, ids)
            truth_inst = torch.where(
                model.is_thing[truth_cls.clamp_min(0)] & (ids >= 0), ids + 1, torch.zeros_like(ids)
            )
            rows.append(
                [
                    ("image", display_rgb(images[i])),
                    ("ground truth", _panoptic_picture(truth_cls, truth_inst)),
                    ("prediction", _panoptic_picture(classes[i], instances[i])),
                ]
            )
        save_panels(rows, path)


def _panoptic_picture(classes: torch.Tensor, instances: torch.Tensor) -> np.ndarray:
    """Each (class, instance) segment in its own colour; void (-1) black."""
    from gpjobs.export.info import PALETTE

    cls, inst = classes.cpu().numpy(), instances.cpu().numpy()
    key = (cls.astype(np.int64) + 1) * 1000 + inst
    picture = np.zeros((*cls.shape, 3))
    for n, k in enumerate(np.unique(key)):
        if k // 1000 == 0:
            continue
        picture[key == k] = np.asarray(PALETTE[n % len(PALETTE)]) / 255.0
    return picture


FAMILIES: dict[str, type[ModelFamily]] = {"MAXDEEPLAB": MaXDeepLabFamily}
