"""Torch datasets over validated chip records: samples in the form the model families train on.

Image = normalised float32 [C, H, W]. Targets (class value -> model index through DataInfo):
segmentation mask int64 [H, W] (0 = NoData, classes[i] -> i + 1); classification int64 scalar
(classes[i] -> i); multilabel float32 [K]; detection {"boxes" float32 [N, 4] xyxy, "labels" int64
[N] in 1..K} (+ "masks" uint8 [N, H, W] for instance). Paired formats: translation (image, image2);
change (before, after, mask); Export_Tiles alone (image, image). Augmentation = flips and 90-degree
rotations, applied jointly.

Each sample exists first in a raw form (`ExportDataset.raw`): the decoded pixels and label values
untouched, plus the drawn geometry. Loader workers ship that (a quarter of the bytes for uint8
chips) and the batch is finished where it is consumed (batching.py); `dataset[i]` finishes one sample
with the same functions (pixels.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from gpjobs.export.chips import libtiff_agrees, read_chip, read_label_raster
from gpjobs.export.info import DataInfo
from gpjobs.export.metadata import RawClass
from gpjobs.export.readers import ChipRecord, box_of, instances_from_mask, parse_kitti, parse_voc, value_of
from gpjobs.training.data.pixels import TRANSPOSE, dihedral, dihedral_boxes, finish_images, finish_masks, resize_masks


def affine_tensors(info: DataInfo) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalisation as float32 (C, 1, 1) scale and offset tensors (CPU)."""
    scale, offset = info.normalization.affine()
    return torch.from_numpy(scale), torch.from_numpy(offset)


def to_model_input(array: np.ndarray, info: DataInfo) -> torch.Tensor:
    """A raw chip (H, W, C native dtype, as read_chip returns it) -> model input float32 (C, H, W)."""
    if array.ndim == 2:
        array = array[:, :, None]
    # A raw chip carries all source bands: pick ExtractBands (also a same-size re-ordering). An array
    # that has too few bands for those indices is taken as already extracted.
    if max(info.extract_bands, default=0) < array.shape[2]:
        array = array[:, :, info.extract_bands]
    scale, offset = affine_tensors(info)
    return finish_images(torch.from_numpy(np.ascontiguousarray(array))[None], None, scale, offset, info.chip_size)[0]


class ExportDataset(Dataset):
    """Samples of one split. `augment=True` draws flips/rotations from torch's RNG (seeded per worker)."""

    def __init__(self, records: Sequence[ChipRecord], info: DataInfo, *, augment: bool = False) -> None:
        self.records = list(records)
        self.info = info
        self.augment = augment
        self.task = info.task
        self._raw_classes = [RawClass(c.value, c.name, c.color) for c in info.classes]
        self._index = {c.value: i for i, c in enumerate(info.classes)}
        # Class value -> model index (0 = NoData) as a lookup table, applied where the batch is finished:
        # one gather per mask instead of K compares, fused with the flips and the widening to int64.
        self._top = max([0, *self._index])
        self._values = np.zeros(self._top + 1, np.int64)
        for value, i in self._index.items():
            if value >= 0:
                self._values[value] = i + 1
        # The table is the identity up to here (classes 1..K without gaps), so masks need only widening.
        identity = self._values == np.arange(self._top + 1)
        self._identity_upto = int(np.argmin(identity)) - 1 if not identity.all() else self._top
        self._luts: dict[tuple[torch.dtype, torch.device], torch.Tensor] = {}
        self.scale, self.offset = affine_tensors(info)
        self._libtiff = _libtiff_agrees(self.records, info)

    def __len__(self) -> int:
        return len(self.records)

    def _geometry(self) -> int:
        if not self.augment:
            return 0
        h, w = self.info.chip_size
        code = int(torch.randint(8, ()))  # one RNG call for the three flips
        return code if h == w else code & ~TRANSPOSE

    def _pixels(self, path, root) -> np.ndarray:
        """Decoded chip (H, W, C) in its native dtype, ExtractBands applied (read inside store `root`)."""
        bands = self.info.source_bands if self._libtiff else None
        return read_chip(path, self.info.extract_bands, root=root, libtiff_bands=bands)

    def _label_values(self, path, root) -> np.ndarray:
        """The label raster's class values (H, W): uint8/uint16 as decoded (the table covers their whole
        range); other dtypes with values outside the classes set to NoData, in the narrowest dtype."""
        raw = read_label_raster(path, native=True, root=root, libtiff=self._libtiff)
        if raw.dtype in (np.uint8, np.uint16):
            return raw
        values = raw.astype(np.int64)
        values[(values < 0) | (values > self._top)] = 0
        return values.astype(np.uint16 if self._top <= np.iinfo(np.uint16).max else np.int32)

    def lut(self, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """int64 class value -> model index table covering every value of `dtype` (cached per device)."""
        key = (dtype, device)
        if key not in self._luts:
            size = {torch.uint8: 256, torch.uint16: 65536}.get(dtype, self._top + 1)
            table = np.zeros(max(size, self._top + 1), np.int64)
            table[: self._top + 1] = self._values
            self._luts[key] = torch.from_numpy(table).to(device)
        return self._luts[key]

    def finish_images(
        self, raw: torch.Tensor, codes: Sequence[int] | None, *, pin_memory: bool = False
    ) -> torch.Tensor:
        """Raw (B, H, W, C) chips -> normalised float32 (B, C, H, W) at chip_size (on raw's device)."""
        scale, offset = self.scale.to(raw.device), self.offset.to(raw.device)
        return finish_images(raw, codes, scale, offset, self.info.chip_size, pin_memory=pin_memory)

    def finish_masks(self, raw: torch.Tensor, codes: Sequence[int] | None) -> torch.Tensor:
        """Raw (B, H, W) label values -> int64 model indices (B, H, W) at chip_size (on raw's device)."""
        lut = self.lut(raw.dtype, raw.device)
        return finish_masks(raw, codes, lut, self.info.chip_size, identity_upto=self._identity_upto)

    def _objects(self, rec: ChipRecord) -> list[tuple[int, tuple[float, float, float, float]]]:
        if rec.objects is not None:
            return rec.objects
        parse = parse_kitti if self.info.format == "KITTI_rectangles" else parse_voc
        assert rec.label is not None  # list_records keeps only the chips that have a label
        parsed = parse(rec.label, rec.root)
        out = []
        for text, box in parsed:
            for part in text.split(",") if self.task == "multilabel" else [text]:
                value = value_of(part, self._raw_classes)
                if value in self._index:
                    out.append((value, box))
        return out

    def __getitem__(self, index: int) -> Any:
        """The finished sample (see the module docstring for its form per task)."""
        code, *sample = self.raw(index)
        codes = [code]

        def image(pixels: np.ndarray) -> torch.Tensor:
            return self.finish_images(_tensor(pixels)[None], codes)[0]

        def mask(values: np.ndarray) -> torch.Tensor:
            return self.finish_masks(_tensor(values)[None], codes)[0]

        first, task = image(sample[0]), self.task
        if task == "segmentation":
            return first, mask(sample[1])
        if task == "change":
            return first, image(sample[1]), mask(sample[2])
        if task == "translation":
            return first, first.clone() if sample[1] is None else image(sample[1])
        if task == "panoptic":
            return first, {**sample[1], "semantic": mask(sample[1]["semantic"])}
        return first, sample[1]  # classification, multilabel, detection, instance: targets are final

    def raw(self, index: int) -> tuple:
        """(geometry code, *sample) with the structure of `self[index]`: decoded (H, W, C) pixels where
        images go and (H, W) label values where masks go, neither mapped nor augmented yet (the code
        says how); other targets (labels, boxes, instance masks) final, geometry applied."""
        rec = self.records[index]
        code = self._geometry()
        task = self.task
        pixels = self._pixels(rec.image, rec.root)
        if task == "classification":
            value = rec.value if rec.value is not None else self._objects(rec)[0][0]
            return code, pixels, torch.tensor(self._index[value], dtype=torch.int64)
        if task == "multilabel":
            target = torch.zeros(len(self.info.classes), dtype=torch.float32)
            for value, _ in self._objects(rec):
                target[self._index[value]] = 1.0
            return code, pixels, target
        if task == "segmentation":
            return code, pixels, self._label_values(rec.label, rec.root)
        if task == "change":
            return code, pixels, self._pixels(rec.image2, rec.root), self._label_values(rec.label, rec.root)
        if task == "translation":
            # Export_Tiles alone (super-resolution): the target is the chip itself; the model degrades it.
            return code, pixels, None if rec.image2 is None else self._pixels(rec.image2, rec.root)
        if task == "instance":
            masks, labels = self._instances(rec, code)
            return code, pixels, {"boxes": _boxes_of(masks), "labels": labels, "masks": masks}
        if task == "panoptic":
            masks, labels = self._instances(rec, code)
            return (
                code,
                pixels,
                {
                    "semantic": self._label_values(rec.label, rec.root),
                    "masks": masks,
                    "labels": labels,
                    "boxes": _boxes_of(masks),
                },
            )
        # detection: boxes are in source-chip pixels; scale to chip_size, then the same flips as the image
        objects = self._objects(rec)
        boxes = torch.tensor([b for _, b in objects], dtype=torch.float32).reshape(-1, 4)
        labels = torch.tensor([self._index[v] + 1 for v, _ in objects], dtype=torch.int64)
        h, w = self.info.chip_size
        src_h, src_w = pixels.shape[:2]
        if (src_h, src_w) != (h, w):
            boxes = boxes * torch.tensor([w / src_w, h / src_h] * 2)
        return code, pixels, {"boxes": dihedral_boxes(boxes, code, h, w), "labels": labels}

    def _instances(self, rec: ChipRecord, code: int) -> tuple[torch.Tensor, torch.Tensor]:
        masks, labels = [], []
        for value, path in rec.masks:
            if value not in self._index:
                continue
            for inst in instances_from_mask(read_label_raster(path, root=rec.root)):
                masks.append(inst)
                labels.append(self._index[value] + 1)
        size = self.info.chip_size
        if not masks:
            return torch.zeros((0, *size), dtype=torch.uint8), torch.zeros(0, dtype=torch.int64)
        stacked = dihedral(torch.from_numpy(np.stack(masks).astype(np.uint8)), code, 1).contiguous()
        resized = resize_masks(stacked, size)
        keep = resized.flatten(1).bool().any(1)  # an instance can vanish when shrinking
        return resized[keep], torch.tensor(labels, dtype=torch.int64)[keep]


def _libtiff_agrees(records: Sequence[ChipRecord], info: DataInfo) -> bool:
    """Whether the chips (and label rasters) may be decoded by libtiff: the first record of every folder
    decodes to the same arrays with it as with tifffile (a folder's chips are written alike)."""
    if info.task not in ("segmentation", "change", "classification", "multilabel", "detection", "translation"):
        return False  # instance/panoptic masks and other layouts keep tifffile
    firsts: dict[str, ChipRecord] = {}
    for rec in records:
        firsts.setdefault(str(rec.folder), rec)
    checks = []
    for rec in firsts.values():
        checks += [(p, rec.root, info.source_bands) for p in (rec.image, rec.image2) if p is not None]
        if info.task in ("segmentation", "change") and rec.label is not None:
            checks.append((rec.label, rec.root, 1))
    return bool(checks) and libtiff_agrees(checks)


def _tensor(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(array if array.flags.writeable else array.copy())  # Pillow's arrays are read-only


def _boxes_of(masks: torch.Tensor) -> torch.Tensor:
    if masks.shape[0] == 0:
        return torch.zeros((0, 4), dtype=torch.float32)
    return torch.tensor([box_of(m.numpy()) for m in masks], dtype=torch.float32)


def collate_detection(batch: list[tuple[torch.Tensor, dict]]) -> tuple[torch.Tensor, list[dict]]:
    """(images float32 [B, C, H, W], list of target dicts) for detection / instance / panoptic loaders."""
    return torch.stack([image for image, _ in batch]), [target for _, target in batch]
