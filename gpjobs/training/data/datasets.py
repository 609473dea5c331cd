"""Torch datasets over validated chip records: samples in the form the model families train on.

Image = normalised float32 [C, H, W]. Targets (class value -> model index through DataInfo):
segmentation mask int64 [H, W] (0 = NoData, classes[i] -> i + 1); classification int64 scalar
(classes[i] -> i); multilabel float32 [K]; detection {"boxes" float32 [N, 4] xyxy, "labels" int64
[N] in 1..K} (+ "masks" uint8 [N, H, W] for instance). Paired formats: translation (image, image2);
change (before, after, mask); Export_Tiles alone (image, image). Augmentation = flips and 90-degree rotations, applied jointly.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from gpjobs.training.data.chips import read_chip, read_label_raster
from gpjobs.training.data.info import DataInfo
from gpjobs.training.data.readers import ChipRecord, box_of, instances_from_mask, parse_kitti, parse_voc, value_of
from gpjobs.training.data.metadata import RawClass


def to_model_input(array: np.ndarray, info: DataInfo) -> torch.Tensor:
    """A raw chip (H, W, C native dtype, all bands or already extracted) -> model input float32 (C, H, W)."""
    if array.ndim == 2:
        array = array[:, :, None]
    if array.shape[2] != info.bands:
        array = array[:, :, info.extract_bands]
    tensor = torch.from_numpy(np.ascontiguousarray(info.normalization.apply(array))).permute(2, 0, 1)
    return _resize_image(tensor.contiguous(), info.chip_size)


def _resize_image(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    if tuple(image.shape[-2:]) == tuple(size):
        return image
    return F.interpolate(image[None], size=size, mode="bilinear", align_corners=False)[0]


def _resize_mask(mask: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    if tuple(mask.shape[-2:]) == tuple(size):
        return mask
    squeeze = mask.ndim == 2
    batch = mask[None, None] if squeeze else mask[None]
    out = F.interpolate(batch.float(), size=size, mode="nearest")[0]
    return (out[0] if squeeze else out).to(mask.dtype)


class ExportDataset(Dataset):
    """Samples of one split. `augment=True` draws flips/rotations from torch's RNG (seeded per worker)."""

    def __init__(self, records: Sequence[ChipRecord], info: DataInfo, *, augment: bool = False) -> None:
        self.records = list(records)
        self.info = info
        self.augment = augment
        self.task = info.task
        self._raw_classes = [RawClass(c.value, c.name, c.color) for c in info.classes]
        self._index = {c.value: i for i, c in enumerate(info.classes)}

    def __len__(self) -> int:
        return len(self.records)

    def _image(self, path) -> torch.Tensor:
        array = read_chip(path, self.info.extract_bands)
        tensor = torch.from_numpy(np.ascontiguousarray(self.info.normalization.apply(array))).permute(2, 0, 1)
        return tensor.contiguous()

    def _mask_indices(self, mask: np.ndarray) -> torch.Tensor:
        out = np.zeros(mask.shape, np.int64)  # values not in the class list stay NoData (validated earlier)
        for value, index in self._index.items():
            out[mask == value] = index + 1
        return torch.from_numpy(out)

    def _objects(self, rec: ChipRecord) -> list[tuple[int, tuple[float, float, float, float]]]:
        if rec.objects is not None:
            return rec.objects
        parsed = parse_kitti(rec.label) if self.info.format == "KITTI_rectangles" else parse_voc(rec.label)
        out = []
        for text, box in parsed:
            for part in text.split(",") if self.task == "multilabel" else [text]:
                value = value_of(part, self._raw_classes)
                if value in self._index:
                    out.append((value, box))
        return out

    def __getitem__(self, index: int) -> Any:
        rec = self.records[index]
        image = self._image(rec.image)
        src_hw = tuple(image.shape[-2:])
        size = tuple(self.info.chip_size)
        image = _resize_image(image, size)
        task = self.task
        if task in ("classification", "multilabel"):
            if task == "classification":
                value = rec.value if rec.value is not None else self._objects(rec)[0][0]
                target: Any = torch.tensor(self._index[value], dtype=torch.int64)
            else:
                target = torch.zeros(len(self.info.classes), dtype=torch.float32)
                for value, _ in self._objects(rec):
                    target[self._index[value]] = 1.0
            return self._augment(image, None, None)[0], target
        if task in ("segmentation", "change", "panoptic"):
            mask = _resize_mask(self._mask_indices(read_label_raster(rec.label)), size)
            if task == "change":
                after = _resize_image(self._image(rec.image2), size)
                stacked, mask, _ = self._augment(torch.cat([image, after]), mask, None)
                return stacked[: image.shape[0]], stacked[image.shape[0]:], mask
            if task == "panoptic":
                inst, labels = self._instances(rec, size)
                image, (mask, inst), boxes = self._augment(image, (mask, inst), _boxes_of(inst))
                return image, {"semantic": mask, "masks": inst, "labels": labels, "boxes": boxes}
            image, mask, _ = self._augment(image, mask, None)
            return image, mask
        if task == "translation":
            # Export_Tiles alone (super-resolution): the target is the chip itself; the model degrades it.
            other = image.clone() if rec.image2 is None else _resize_image(self._image(rec.image2), size)
            stacked, _, _ = self._augment(torch.cat([image, other]), None, None)
            return stacked[: image.shape[0]], stacked[image.shape[0]:]
        if task == "instance":
            masks, labels = self._instances(rec, size)
            image, masks, boxes = self._augment(image, masks, _boxes_of(masks))
            return image, {"boxes": boxes, "labels": labels, "masks": masks}
        # detection
        objects = self._objects(rec)
        boxes = torch.tensor([b for _, b in objects], dtype=torch.float32).reshape(-1, 4)
        labels = torch.tensor([self._index[v] + 1 for v, _ in objects], dtype=torch.int64)
        if src_hw != size:
            scale = torch.tensor([size[1] / src_hw[1], size[0] / src_hw[0]] * 2)
            boxes = boxes * scale
        image, _, boxes = self._augment(image, None, boxes)
        return image, {"boxes": boxes, "labels": labels}

    def _instances(self, rec: ChipRecord, size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        masks, labels = [], []
        for value, path in rec.masks:
            if value not in self._index:
                continue
            for inst in instances_from_mask(read_label_raster(path)):
                masks.append(inst)
                labels.append(self._index[value] + 1)
        if not masks:
            return torch.zeros((0, *size), dtype=torch.uint8), torch.zeros(0, dtype=torch.int64)
        stacked = _resize_mask(torch.from_numpy(np.stack(masks).astype(np.uint8)), size)
        keep = stacked.flatten(1).bool().any(1)  # an instance can vanish when shrinking
        return stacked[keep], torch.tensor(labels, dtype=torch.int64)[keep]

    def _augment(self, image: torch.Tensor, masks: Any, boxes: torch.Tensor | None):
        """Random horizontal/vertical flip and 90-degree rotation, applied to image, masks and boxes."""
        if not self.augment:
            return image, masks, boxes
        h, w = image.shape[-2:]
        hflip, vflip = bool(torch.rand(()) < 0.5), bool(torch.rand(()) < 0.5)
        rot = bool(torch.rand(()) < 0.5) and h == w  # transpose (+ flips = all 8 dihedral views) on squares

        def geo(t: torch.Tensor) -> torch.Tensor:
            if hflip:
                t = t.flip(-1)
            if vflip:
                t = t.flip(-2)
            if rot:
                t = t.transpose(-1, -2)
            return t.contiguous()

        image = geo(image)
        if isinstance(masks, tuple):
            masks = tuple(geo(m) for m in masks)
        elif masks is not None:
            masks = geo(masks)
        if boxes is not None and boxes.numel():
            x0, y0, x1, y1 = boxes.unbind(1)
            if hflip:
                x0, x1 = w - x1, w - x0
            if vflip:
                y0, y1 = h - y1, h - y0
            if rot:
                x0, y0, x1, y1 = y0, x0, y1, x1
            boxes = torch.stack([x0, y0, x1, y1], 1)
        return image, masks, boxes


def _boxes_of(masks: torch.Tensor) -> torch.Tensor:
    if masks.shape[0] == 0:
        return torch.zeros((0, 4), dtype=torch.float32)
    return torch.tensor([box_of(m.numpy()) for m in masks], dtype=torch.float32)


def collate_detection(batch: list[tuple[torch.Tensor, dict]]) -> tuple[torch.Tensor, list[dict]]:
    """(images float32 [B, C, H, W], list of target dicts) for detection / instance / panoptic loaders."""
    return torch.stack([image for image, _ in batch]), [target for _, target in batch]
