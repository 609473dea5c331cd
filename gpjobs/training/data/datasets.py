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
    """A raw chip (H, W, C native dtype, as read_chip returns it) -> model input float32 (C, H, W)."""
    if array.ndim == 2:
        array = array[:, :, None]
    # A raw chip carries all source bands: pick ExtractBands (also a same-size re-ordering). An array
    # that has too few bands for those indices is taken as already extracted.
    if max(info.extract_bands, default=0) < array.shape[2]:
        array = array[:, :, info.extract_bands]
    scale, offset = info.normalization.affine()
    out = np.empty((array.shape[2], array.shape[0], array.shape[1]), np.float32)
    np.multiply(array.transpose(2, 0, 1), scale, out=out, casting="unsafe")
    out += offset
    return _resize_image(torch.from_numpy(out), tuple(info.chip_size))


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


class _Geometry:
    """One random dihedral view (flips + transpose), applied to numpy views (free) and to boxes."""

    def __init__(self, hflip: bool = False, vflip: bool = False, transpose: bool = False) -> None:
        self.hflip, self.vflip, self.transpose = hflip, vflip, transpose

    def view(self, array: np.ndarray, h_axis: int) -> np.ndarray:
        w_axis = h_axis + 1
        index = [slice(None)] * array.ndim
        if self.hflip:
            index[w_axis] = slice(None, None, -1)
        if self.vflip:
            index[h_axis] = slice(None, None, -1)
        array = array[tuple(index)]
        return np.swapaxes(array, h_axis, w_axis) if self.transpose else array

    def boxes(self, boxes: torch.Tensor, h: int, w: int) -> torch.Tensor:
        if not boxes.numel():
            return boxes
        x0, y0, x1, y1 = boxes.unbind(1)
        if self.hflip:
            x0, x1 = w - x1, w - x0
        if self.vflip:
            y0, y1 = h - y1, h - y0
        if self.transpose:
            x0, y0, x1, y1 = y0, x0, y1, x1
        return torch.stack([x0, y0, x1, y1], 1)


class ExportDataset(Dataset):
    """Samples of one split. `augment=True` draws flips/rotations from torch's RNG (seeded per worker)."""

    def __init__(self, records: Sequence[ChipRecord], info: DataInfo, *, augment: bool = False) -> None:
        self.records = list(records)
        self.info = info
        self.augment = augment
        self.task = info.task
        self._raw_classes = [RawClass(c.value, c.name, c.color) for c in info.classes]
        self._index = {c.value: i for i, c in enumerate(info.classes)}
        # Lookup table class value -> model index (0 = NoData): one gather per mask instead of K compares.
        top = max([0, *self._index])
        self._lut = np.zeros(top + 1, np.int64)
        for value, i in self._index.items():
            if value >= 0:
                self._lut[value] = i + 1
        self._scale, self._offset = info.normalization.affine()

    def __len__(self) -> int:
        return len(self.records)

    def _geometry(self) -> _Geometry:
        if not self.augment:
            return _Geometry()
        h, w = self.info.chip_size
        draws = torch.rand(3)
        return _Geometry(bool(draws[0] < 0.5), bool(draws[1] < 0.5), bool(draws[2] < 0.5) and h == w)

    def _normalised(self, path, geo: _Geometry) -> torch.Tensor:
        """Decode, flip (views), then normalise straight into a contiguous float32 (C, H, W): two passes."""
        chw = geo.view(read_chip(path, self.info.extract_bands), 0).transpose(2, 0, 1)
        out = np.empty(chw.shape, np.float32)
        np.multiply(chw, self._scale, out=out, casting="unsafe")
        out += self._offset
        return torch.from_numpy(out)

    def _image(self, path, geo: _Geometry) -> torch.Tensor:
        return _resize_image(self._normalised(path, geo), tuple(self.info.chip_size))

    def _mask(self, path, geo: _Geometry) -> torch.Tensor:
        raw = geo.view(read_label_raster(path, native=True), 0)
        lut = self._lut
        if raw.dtype in (np.uint8, np.uint16):
            # A table covering the whole dtype range: no range check pass over the mask needed.
            full = np.iinfo(raw.dtype).max + 1
            if len(lut) < full:
                lut = self._lut = np.concatenate([lut, np.zeros(full - len(lut), np.int64)])
            indices = np.take(lut, raw)
        else:
            indices = np.take(lut, np.clip(raw.astype(np.int64), 0, len(lut) - 1))
        return _resize_mask(torch.from_numpy(indices), tuple(self.info.chip_size))

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
        geo = self._geometry()
        task = self.task
        source = self._normalised(rec.image, geo)
        image = _resize_image(source, tuple(self.info.chip_size))
        if task == "classification":
            value = rec.value if rec.value is not None else self._objects(rec)[0][0]
            return image, torch.tensor(self._index[value], dtype=torch.int64)
        if task == "multilabel":
            target = torch.zeros(len(self.info.classes), dtype=torch.float32)
            for value, _ in self._objects(rec):
                target[self._index[value]] = 1.0
            return image, target
        if task == "segmentation":
            return image, self._mask(rec.label, geo)
        if task == "change":
            return image, self._image(rec.image2, geo), self._mask(rec.label, geo)
        if task == "translation":
            # Export_Tiles alone (super-resolution): the target is the chip itself; the model degrades it.
            return image, image.clone() if rec.image2 is None else self._image(rec.image2, geo)
        if task == "instance":
            masks, labels = self._instances(rec, geo)
            return image, {"boxes": _boxes_of(masks), "labels": labels, "masks": masks}
        if task == "panoptic":
            masks, labels = self._instances(rec, geo)
            return image, {"semantic": self._mask(rec.label, geo), "masks": masks, "labels": labels,
                           "boxes": _boxes_of(masks)}
        # detection: boxes are in source-chip pixels; scale to chip_size, then the same flips as the image
        objects = self._objects(rec)
        boxes = torch.tensor([b for _, b in objects], dtype=torch.float32).reshape(-1, 4)
        labels = torch.tensor([self._index[v] + 1 for v, _ in objects], dtype=torch.int64)
        h, w = self.info.chip_size
        src_h, src_w = source.shape[-2:]
        if geo.transpose:
            src_h, src_w = src_w, src_h
        if (src_h, src_w) != (h, w):
            boxes = boxes * torch.tensor([w / src_w, h / src_h] * 2)
        return image, {"boxes": geo.boxes(boxes, h, w), "labels": labels}

    def _instances(self, rec: ChipRecord, geo: _Geometry) -> tuple[torch.Tensor, torch.Tensor]:
        masks, labels = [], []
        for value, path in rec.masks:
            if value not in self._index:
                continue
            for inst in instances_from_mask(read_label_raster(path)):
                masks.append(inst)
                labels.append(self._index[value] + 1)
        size = tuple(self.info.chip_size)
        if not masks:
            return torch.zeros((0, *size), dtype=torch.uint8), torch.zeros(0, dtype=torch.int64)
        stacked = np.ascontiguousarray(geo.view(np.stack(masks).astype(np.uint8), 1))
        resized = _resize_mask(torch.from_numpy(stacked), size)
        keep = resized.flatten(1).bool().any(1)  # an instance can vanish when shrinking
        return resized[keep], torch.tensor(labels, dtype=torch.int64)[keep]


def _boxes_of(masks: torch.Tensor) -> torch.Tensor:
    if masks.shape[0] == 0:
        return torch.zeros((0, 4), dtype=torch.float32)
    return torch.tensor([box_of(m.numpy()) for m in masks], dtype=torch.float32)


def collate_detection(batch: list[tuple[torch.Tensor, dict]]) -> tuple[torch.Tensor, list[dict]]:
    """(images float32 [B, C, H, W], list of target dicts) for detection / instance / panoptic loaders."""
    return torch.stack([image for image, _ in batch]), [target for _, target in batch]
