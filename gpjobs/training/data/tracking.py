"""SIAMMASK data: template/search crop pairs for training, whole tracks for validation.

Frames are model inputs at the data's chip size (normalised, so a zero pad is the band mean, which is
what Siamese trackers pad crops with). Geometry is in continuous pixel coordinates (pixel i spans
[i, i + 1)); boxes are (x0, y0, x1, y1). Crops are squares around a target with context (SiamFC): the
template side is s_z = sqrt((w + p)(h + p)), p = (w + h) / 2, resized to `exemplar` pixels; the search
side is s_z * instance / exemplar, resized to `instance` pixels.

Training samples one annotated object in one frame (the search frame) and a template frame of the same
object from the same sequence, at random (torch's RNG: the engine reseeds it every epoch). The search
crop is shifted (up to a fifth of its side) and rescaled (+-15%) at random, so the target is not always
in the middle. Validation yields `Track`s: one object of one sequence from its first annotated frame on;
the family tracks it from that frame's box (mean IoU, F-measure) and takes its loss over pairs (first
frame, later frame) with a fixed jitter.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, Sampler

from gpjobs.export.chips import read_chip, read_label_raster
from gpjobs.export.info import DataInfo
from gpjobs.export.readers import ChipRecord
from gpjobs.export.report import DataError, Scan
from gpjobs.export.tracking import frame_objects, sequence_of
from gpjobs.training.data.datasets import to_model_input
from gpjobs.training.data.loading import SplitData, shard_loader, split_records, worker_init

MAX_SHIFT = 0.2  # of the search crop side
MAX_SCALE = 0.15  # log-scale jitter of the search crop


def context_side(boxes: torch.Tensor) -> torch.Tensor:
    """SiamFC's template side with context for (N, 4) boxes: sqrt((w + p)(h + p)), p = (w + h) / 2."""
    w = (boxes[:, 2] - boxes[:, 0]).clamp_min(1.0)
    h = (boxes[:, 3] - boxes[:, 1]).clamp_min(1.0)
    p = (w + h) / 2
    return torch.sqrt((w + p) * (h + p))


def crop_square(
    images: torch.Tensor, centers: torch.Tensor, sides: torch.Tensor, out: int, mode: str = "bilinear"
) -> torch.Tensor:
    """Squares of side `sides` around `centers` (N, 2) of (N, C, H, W) images, resized to out x out (zero pad).

    Tensor operations only, so a traced tracker keeps the box-dependent crop.
    """
    n, _, h, w = images.shape
    theta = torch.zeros(n, 2, 3, dtype=images.dtype, device=images.device)
    theta[:, 0, 0] = sides / w
    theta[:, 0, 2] = 2 * centers[:, 0] / w - 1
    theta[:, 1, 1] = sides / h
    theta[:, 1, 2] = 2 * centers[:, 1] / h - 1
    grid = F.affine_grid(theta, [n, 1, out, out], align_corners=False)
    return F.grid_sample(images, grid, mode=mode, padding_mode="zeros", align_corners=False)


def to_crop(boxes: torch.Tensor, centers: torch.Tensor, sides: torch.Tensor, out: int) -> torch.Tensor:
    """Frame boxes (N, 4) in the coordinates of crops (center, side) resized to `out`."""
    origin = (centers - sides[:, None] / 2).repeat(1, 2)
    return (boxes - origin) * (out / sides)[:, None]


def to_frame(boxes: torch.Tensor, centers: torch.Tensor, sides: torch.Tensor, out: int) -> torch.Tensor:
    """Crop boxes (N, 4) back to frame coordinates (inverse of `to_crop`)."""
    origin = (centers - sides[:, None] / 2).repeat(1, 2)
    return boxes * (sides / out)[:, None] + origin


def box_centers(boxes: torch.Tensor) -> torch.Tensor:
    return torch.stack([(boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2], 1)


def mask_box(mask: torch.Tensor) -> torch.Tensor | None:
    """The box (4,) of a boolean (H, W) mask, None when it is empty."""
    ys, xs = torch.nonzero(mask, as_tuple=True)
    if ys.numel() == 0:
        return None
    return torch.stack([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]).float()


def make_pair(
    frame_z: torch.Tensor,
    box_z: torch.Tensor,
    frame_x: torch.Tensor,
    box_x: torch.Tensor,
    mask_x: torch.Tensor,
    exemplar: int,
    instance: int,
    shift: torch.Tensor,
    scale: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(template crop, search crop, target box in the search crop, target mask in the search crop)."""
    side_z = context_side(box_z[None])
    z = crop_square(frame_z[None], box_centers(box_z[None]), side_z, exemplar)[0]
    side_x = context_side(box_x[None]) * (instance / exemplar) * scale
    center_x = box_centers(box_x[None]) + shift[None] * side_x
    x = crop_square(frame_x[None], center_x, side_x, instance)[0]
    box = to_crop(box_x[None], center_x, side_x, instance)[0]
    mask = crop_square(mask_x[None, None].float(), center_x, side_x, instance)[0, 0] > 0.5
    return z, x, box, mask.float()


class _Frames:
    """Frames and object masks of the records at the chip size."""

    def __init__(self, records: Sequence[ChipRecord], info: DataInfo) -> None:
        self.records, self.info = list(records), info

    def frame(self, i: int) -> torch.Tensor:
        return to_model_input(read_chip(self.records[i].image), self.info)

    def mask(self, i: int, object_id: int) -> torch.Tensor:
        label = self.records[i].label
        assert label is not None  # list_tracking_frames pairs every frame with its mask
        ids = torch.from_numpy(read_label_raster(label) == object_id)
        size = self.info.chip_size
        if tuple(ids.shape) != size:
            ids = F.interpolate(ids[None, None].float(), size=size, mode="nearest")[0, 0] > 0.5
        return ids

    def objects(self, i: int) -> list[int]:
        rec = self.records[i]
        if rec.objects is None:
            assert rec.label is not None  # list_tracking_frames pairs every frame with its mask
            rec.objects = frame_objects(rec.label, rec.root)
        return [oid for oid, _ in rec.objects]


class PairDataset(Dataset):
    """One sample per annotated object per training frame: (z, x, box in x, mask in x)."""

    def __init__(self, records: Sequence[ChipRecord], info: DataInfo) -> None:
        self.frames = _Frames(records, info)
        self.records = self.frames.records
        self.exemplar, self.instance = 128, 256  # set by the family (configure)
        self.by_sequence: dict[str, list[int]] = {}
        for i, rec in enumerate(self.records):
            self.by_sequence.setdefault(sequence_of(rec), []).append(i)
        self.items = [(i, oid) for i in range(len(self.records)) for oid in self.frames.objects(i)]

    def configure(self, exemplar: int, instance: int) -> None:
        self.exemplar, self.instance = int(exemplar), int(instance)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, ...]:
        i, oid = self.items[index]
        seq = sequence_of(self.records[i])
        partners = [j for j in self.by_sequence[seq] if oid in self.frames.objects(j)]
        j = partners[int(torch.randint(len(partners), ()))]
        mask_x, mask_z = self.frames.mask(i, oid), self.frames.mask(j, oid)
        box_x, box_z = mask_box(mask_x), mask_box(mask_z)
        if box_x is None or box_z is None:  # shrunk away at the chip size: the frame itself as its template
            j, mask_z, box_z = i, mask_x, box_x if box_x is not None else torch.tensor([0.0, 0.0, 1.0, 1.0])
            box_x = box_z
        shift = (torch.rand(2) * 2 - 1) * MAX_SHIFT
        scale = math.exp(float(torch.rand(())) * 2 * MAX_SCALE - MAX_SCALE)
        return make_pair(
            self.frames.frame(j), box_z, self.frames.frame(i), box_x, mask_x, self.exemplar, self.instance, shift, scale
        )


@dataclass
class Track:
    """One object of one sequence, from its first annotated frame on (frame indices into `frames`)."""

    frames: _Frames
    indices: list[int]
    object_id: int
    name: str

    def __len__(self) -> int:
        return len(self.indices)

    def frame(self, t: int) -> torch.Tensor:
        return self.frames.frame(self.indices[t])

    def mask(self, t: int) -> torch.Tensor:
        return self.frames.mask(self.indices[t], self.object_id)

    def first_box(self) -> torch.Tensor:
        box = mask_box(self.mask(0))
        return box if box is not None else torch.tensor([0.0, 0.0, 1.0, 1.0])

    def pairs(self, exemplar: int, instance: int) -> Iterator[tuple[torch.Tensor, ...]]:
        """(z, x, box, mask) for (first frame, each later frame), with a jitter fixed by the track's name."""
        seed = sum(ord(c) * 31**k for k, c in enumerate(self.name)) % 2**32
        rng = np.random.default_rng(seed + self.object_id)
        frame_z, box_z = self.frame(0), self.first_box()
        for t in range(1, len(self)):
            mask_x = self.mask(t)
            box_x = mask_box(mask_x)
            shift = torch.from_numpy(rng.uniform(-MAX_SHIFT, MAX_SHIFT, 2)).float()
            scale = math.exp(float(rng.uniform(-MAX_SCALE, MAX_SCALE)))
            if box_x is not None:
                yield make_pair(frame_z, box_z, self.frame(t), box_x, mask_x, exemplar, instance, shift, scale)


class TrackDataset(Dataset):
    """The validation tracks of a set of sequences."""

    def __init__(self, records: Sequence[ChipRecord], info: DataInfo) -> None:
        self.frames = _Frames(records, info)
        self.records = self.frames.records
        by_sequence: dict[str, list[int]] = {}
        for i, rec in enumerate(self.records):
            by_sequence.setdefault(sequence_of(rec), []).append(i)
        self.tracks: list[Track] = []
        for seq, indices in sorted(by_sequence.items()):
            for oid in sorted({o for i in indices for o in self.frames.objects(i)}):
                first = next(k for k, i in enumerate(indices) if oid in self.frames.objects(i))
                self.tracks.append(Track(self.frames, indices[first:], oid, f"{seq}#{oid}"))

    def __len__(self) -> int:
        return len(self.tracks)

    def __getitem__(self, index: int) -> Track:
        return self.tracks[index]


def _tracks(batch: list[Track]) -> list[Track]:
    return batch


@dataclass
class TrackingData(SplitData[PairDataset, TrackDataset]):
    """Training data of SIAMMASK: training pairs, validation tracks (one per object and sequence)."""

    def loaders(
        self,
        batch_size: int,
        *,
        num_workers: int = 0,
        pin_memory: bool = False,
        device: torch.device | str | None = None,
        sampler: Sampler | None = None,
        shard: tuple[int, int] | None = None,
    ) -> tuple[DataLoader, DataLoader]:
        workers: dict[str, Any] = {"num_workers": num_workers}
        if num_workers > 0:
            workers.update(persistent_workers=True, worker_init_fn=worker_init)
        order: dict[str, Any] = (
            {"sampler": sampler}
            if sampler is not None
            else {"shuffle": True, "generator": torch.Generator().manual_seed(self.seed)}
        )
        batches = math.ceil(len(self.train) / batch_size)
        train = DataLoader(
            self.train, batch_size=batch_size, drop_last=batches >= 2, pin_memory=pin_memory, **order, **workers
        )
        valid = DataLoader(self.valid, batch_size=batch_size, shuffle=False, collate_fn=_tracks)
        return (shard_loader(train, *shard) if shard is not None else train), valid


def open_tracking_data(scan: Scan, info: DataInfo, *, validation_percent: float, seed: int) -> TrackingData:
    """Split by sequence (frames of one sequence never straddle the split) and build the datasets."""
    report = scan.report
    sequences = sorted({(r.folder, sequence_of(r)) for r in scan.records})
    if len(sequences) < 2:
        report.errors.append(
            f"{len(sequences)} sequence with annotated frames: training and validation need "
            "different sequences; add sequences to JPEGImages/ and Annotations/"
        )
        raise DataError(report)
    keys = [ChipRecord(seq, Path(seq), folder) for folder, seq in sequences]  # one split item per sequence
    _, valid_keys = split_records(keys, validation_percent, seed, None)
    valid_set = {(k.folder, k.stem) for k in valid_keys}
    train_records = [r for r in scan.records if (r.folder, sequence_of(r)) not in valid_set]
    valid_records = [r for r in scan.records if (r.folder, sequence_of(r)) in valid_set]
    train = PairDataset(train_records, info)
    if not len(train):
        report.errors.append("no annotated object in the training sequences")
        raise DataError(report)
    return TrackingData(
        info=info,
        report=report,
        train=train,
        valid=TrackDataset(valid_records, info),
        class_weights=None,
        export_emd={},
        seed=seed,
    )
