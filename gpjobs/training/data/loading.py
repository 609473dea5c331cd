"""open_training_data: validate, pick normalisation, split, and build datasets and loaders (torch side)."""

from __future__ import annotations

import abc
import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, RandomSampler, Sampler

from gpjobs.export.chips import read_chip
from gpjobs.export.info import FORMAT_TASKS, DataInfo, Normalization
from gpjobs.export.metadata import ExportMeta
from gpjobs.export.readers import ChipRecord
from gpjobs.export.report import DataError, DataReport, scan_folders
from gpjobs.training.data.batching import FinishingLoader
from gpjobs.training.data.datasets import ExportDataset, collate_detection, to_model_input

__all__ = ["SplitData", "TrainingData", "open_training_data", "to_model_input", "collate_detection"]

STATS_SAMPLE = 300  # chips read for band statistics when the export has none (arcgis.learn: 30% or <300 all)


TrainSet = TypeVar("TrainSet", bound=Dataset)
ValidSet = TypeVar("ValidSet", bound=Dataset)


@dataclass
class SplitData(abc.ABC, Generic[TrainSet, ValidSet]):
    """Validated, split training data for one job; each kind of sample brings its datasets and loaders."""

    info: DataInfo
    report: DataReport
    train: TrainSet
    valid: ValidSet
    class_weights: list[float] | None
    export_emd: dict[str, Any]
    seed: int = 42

    @abc.abstractmethod
    def loaders(
        self,
        batch_size: int,
        *,
        num_workers: int = 0,
        pin_memory: bool = False,
        device: torch.device | str | None = None,
        sampler: Sampler | None = None,
        shard: tuple[int, int] | None = None,
    ) -> tuple[Iterable[Any], Iterable[Any]]:
        """(train, valid) loaders; `shard=(rank, world)`: the training loader yields rank `rank`'s share of
        each batch (the engine passes it on every call, None on one device)."""


@dataclass
class TrainingData(SplitData[ExportDataset, ExportDataset]):
    """Chips with their labels as ExportDatasets: every task but captioning and tracking."""

    def loaders(
        self,
        batch_size: int,
        *,
        num_workers: int = 0,
        pin_memory: bool = False,
        device: torch.device | str | None = None,
        sampler: Sampler | None = None,
        shard: tuple[int, int] | None = None,
    ) -> tuple[FinishingLoader, FinishingLoader]:
        """(train, valid) loaders; workers are persistent, train drops a partial last batch when it has >= 2.

        Batches are normalised float32 images and int64 masks / target dicts, as the datasets' samples
        collated; they cross from the workers in the file's dtype and are finished here (batching.py).
        `pin_memory`: finished CPU batches are pinned. `device`: batches arrive on it, finished there.
        `sampler`: a training sampler (e.g. oversampling) instead of the seeded shuffle.
        `shard=(rank, world)`: the training loader yields rank `rank`'s share of each batch (ShardedBatches).
        """
        common: dict[str, Any] = {
            "batch_size": batch_size,
            "num_workers": num_workers,
            "pin_memory": pin_memory,
            "device": device,
        }
        if num_workers > 0:
            common.update(persistent_workers=True, prefetch_factor=4, worker_init_fn=worker_init)
        batches = math.ceil(len(self.train) / batch_size)
        generator = torch.Generator().manual_seed(self.seed)
        if shard is not None:
            drawn = sampler if sampler is not None else RandomSampler(self.train, generator=generator)
            share = ShardedBatches(drawn, batch_size, *shard, drop_last=batches >= 2)
            train = FinishingLoader(
                self.train,
                batch_sampler=share,
                generator=generator,
                **{**common, "batch_size": math.ceil(batch_size / shard[1])},
            )
        else:
            order: dict[str, Any] = (
                {"sampler": sampler} if sampler is not None else {"shuffle": True, "generator": generator}
            )
            train = FinishingLoader(self.train, drop_last=batches >= 2, **order, **common)
        valid = FinishingLoader(self.valid, shuffle=False, drop_last=False, **common)
        return train, valid


class ShardedBatches(Sampler):
    """One rank's share of the batches a one-device run draws: the same sampler (same generator, same seed)
    cut into global batches of `batch_size`, each split over `world` ranks (rank r takes every world-th
    index from r). Every rank has the same number of batches, and together they train exactly the chips of
    the one-device batch (a rank whose share would be empty repeats the batch's first chip)."""

    def __init__(self, sampler: Any, batch_size: int, rank: int, world: int, *, drop_last: bool) -> None:
        self.sampler, self.batch_size, self.rank, self.world = sampler, batch_size, rank, world
        self.drop_last = drop_last

    @property
    def generator(self) -> torch.Generator | None:
        """The drawing sampler's generator (seed_epoch reseeds it each epoch)."""
        return getattr(self.sampler, "generator", None)

    def __iter__(self) -> Iterator[list[int]]:
        batch: list[int] = []
        for index in self.sampler:
            batch.append(int(index))
            if len(batch) == self.batch_size:
                yield self._share(batch)
                batch = []
        if batch and not self.drop_last:
            yield self._share(batch)

    def _share(self, batch: list[int]) -> list[int]:
        return batch[self.rank :: self.world] or batch[:1]

    def __len__(self) -> int:
        count = len(self.sampler)
        return count // self.batch_size if self.drop_last else math.ceil(count / self.batch_size)


def shard_loader(loader: Any, rank: int, world: int) -> DataLoader:
    """A family's own training DataLoader (e.g. oversampling) as rank `rank`'s share of its batches."""
    share = ShardedBatches(loader.sampler, loader.batch_size, rank, world, drop_last=loader.drop_last)
    extra = (
        {"prefetch_factor": loader.prefetch_factor, "persistent_workers": loader.persistent_workers}
        if loader.num_workers
        else {}
    )
    return DataLoader(
        loader.dataset,
        batch_sampler=share,
        num_workers=loader.num_workers,
        collate_fn=loader.collate_fn,
        pin_memory=loader.pin_memory,
        generator=loader.generator,
        worker_init_fn=loader.worker_init_fn,
        **extra,
    )


def worker_init(_: int) -> None:
    torch.set_num_threads(1)  # workers decode; intra-op threads would only fight the trainer for cores


def _task_for(fmt: str, requested: str) -> str:
    """The sample form: the format decides (multilabel, paired); `requested` is the model type's task."""
    return FORMAT_TASKS.get(fmt, requested)


def _merged_band_stats(metas: list[ExportMeta]) -> list[dict[str, float]] | None:
    per_folder = [m.band_stats() for m in metas]
    known = [s for s in per_folder if s is not None]
    if len(known) != len(per_folder) or len({len(s) for s in known}) != 1:
        return None
    merged = []
    for band in zip(*known):
        weights = [b["num"] or 1.0 for b in band]
        total = sum(weights)
        mean = sum(w * b["mean"] for w, b in zip(weights, band)) / total
        var = sum(w * (b["std"] ** 2 + (b["mean"] - mean) ** 2) for w, b in zip(weights, band)) / total
        merged.append(
            {
                "min": min(b["min"] for b in band),
                "max": max(b["max"] for b in band),
                "mean": mean,
                "std": math.sqrt(var),
                "num": total,
            }
        )
    return merged


def _sampled_band_stats(records: list[ChipRecord], seed: int) -> list[dict[str, float]]:
    picks = np.random.default_rng(seed).permutation(len(records))[:STATS_SAMPLE]
    total = None
    lo = hi = None
    n = 0
    for i in picks:
        chip = read_chip(records[i].image, root=records[i].root)
        flat = chip.reshape(-1, chip.shape[2]).astype(np.float64)
        s1, s2 = flat.sum(0), (flat**2).sum(0)
        total = (s1, s2) if total is None else (total[0] + s1, total[1] + s2)
        lo = flat.min(0) if lo is None else np.minimum(lo, flat.min(0))
        hi = flat.max(0) if hi is None else np.maximum(hi, flat.max(0))
        n += flat.shape[0]
    # a validated export (report.ok) has chips, so at least one was read
    assert total is not None and lo is not None and hi is not None
    mean = total[0] / n
    std = np.sqrt(np.maximum(total[1] / n - mean**2, 0.0))
    return [
        {"min": float(a), "max": float(b), "mean": float(m), "std": float(s), "num": float(n)}
        for a, b, m, s in zip(lo, hi, mean, std)
    ]


def split_records(
    records: list[ChipRecord], percent: float, seed: int, stratify_by: list[int] | None
) -> tuple[list[ChipRecord], list[ChipRecord]]:
    """Seeded split, independent of directory-listing order; stratified per class when labels are given."""
    order = sorted(range(len(records)), key=lambda i: (records[i].folder, records[i].image.as_posix()))
    rng = np.random.default_rng(seed)
    groups: dict[int, list[int]] = {}
    for i in order:
        groups.setdefault(stratify_by[i] if stratify_by else 0, []).append(i)
    valid: set[int] = set()
    for key in sorted(groups):
        members = [groups[key][j] for j in rng.permutation(len(groups[key]))]
        valid.update(members[: int(round(len(members) * percent / 100.0))])
    if percent > 0 and not valid and len(records) >= 2:
        valid.add(order[int(rng.integers(len(order)))])
    if len(valid) == len(records) and records:
        valid.discard(next(iter(sorted(valid))))
    return [records[i] for i in order if i not in valid], [records[i] for i in order if i in valid]


def _class_weights(metas: list[ExportMeta], info: DataInfo) -> list[float] | None:
    """arcgis.learn's weights: sum(N)/N_c per class (0 when empty), background = their mean (§2.7)."""
    if info.task not in ("segmentation", "change"):
        return None
    totals = {c.value: 0 for c in info.classes}
    for meta in metas:
        if meta.per_class_pixels is None:
            return None
        for c, count in zip(meta.classes, meta.per_class_pixels):
            if c.value in totals:
                totals[c.value] += count
    all_pixels = sum(totals.values())
    if all_pixels <= 0:
        return None
    weights = [all_pixels / totals[c.value] if totals[c.value] else 0.0 for c in info.classes]
    return [float(np.mean(weights))] + weights


def open_training_data(
    folders: Sequence[str | Path],
    *,
    task: str,
    chip_size: int | None = None,
    validation_percent: float = 10.0,
    seed: int = 42,
    extract_bands: Sequence[int] | None = None,
    augment: bool = True,
    roots: Sequence[str | Path] | None = None,
) -> SplitData[Any, Any]:
    """Validate every chip and label (full check), then build the split datasets; DataError when unusable.

    `roots[i]`: the root of folder i's store; every file is read inside it (None: local folders, root `/`).
    """
    scan = scan_folders(folders, roots=roots, full=True)
    report = scan.report
    if not report.ok:
        raise DataError(report)
    fmt = report.format or ""
    source_bands = int(report.bands or 3)
    extract = list(range(source_bands)) if extract_bands is None else [int(b) for b in extract_bands]
    bad = [b for b in extract if not 0 <= b < source_bands]
    if bad or not extract:
        report.errors.append(
            f"extract_bands {list(extract_bands or [])} does not fit chips with {source_bands} "
            f"bands; use band indices 0..{source_bands - 1}"
        )
        raise DataError(report)
    dtype = report.dtype or "uint8"
    if dtype == "uint8" and source_bands == 3 and len(extract) == 3:
        normalization = Normalization.imagenet()
    else:
        stats = _merged_band_stats(scan.metas)
        if stats is None or len(stats) != source_bands:
            stats = _sampled_band_stats(scan.records, seed)
            report.warnings.append(
                f"the export has no band statistics; computed them from {min(len(scan.records), STATS_SAMPLE)} chips"
            )
        normalization = Normalization.from_band_stats([stats[b] for b in extract])
    size = (int(chip_size), int(chip_size)) if chip_size else (report.chip_size or (224, 224))
    info = DataInfo(
        format=fmt,
        task=_task_for(fmt, task),
        classes=scan.classes,
        bands=len(extract),
        chip_size=size,
        extract_bands=extract,
        normalization=normalization,
        is_multispectral=normalization.kind != "imagenet",
        source_bands=source_bands,
        dtype=dtype,
        cell_size=scan.metas[0].emd.get("MinCellSize") or scan.metas[0].stats.get("MinCellSize"),
    )
    if info.task in ("captioning", "tracking"):  # their own samples, datasets and loaders
        from gpjobs.training.data.captions import open_caption_data
        from gpjobs.training.data.tracking import open_tracking_data

        opener = open_caption_data if info.task == "captioning" else open_tracking_data
        return opener(scan, info, validation_percent=validation_percent, seed=seed)
    stratify = None
    if info.task == "classification":
        stratify = [r.value if r.value is not None else (r.objects[0][0] if r.objects else -1) for r in scan.records]
    train_records, valid_records = split_records(scan.records, validation_percent, seed, stratify)
    if not train_records:
        report.errors.append(f"only {len(scan.records)} chips: nothing left to train on after the validation split")
        raise DataError(report)
    return TrainingData(
        info=info,
        report=report,
        train=ExportDataset(train_records, info, augment=augment),
        valid=ExportDataset(valid_records, info, augment=False),
        class_weights=_class_weights(scan.metas, info),
        export_emd=dict(scan.metas[0].emd),
        seed=seed,
    )
