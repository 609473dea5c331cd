"""Training batches that travel in the file's dtype and are finished after they arrive (issue #3, item 6).

A normalised float32 image is 4x the bytes of a uint8 chip and an int64 mask 8x a uint8 one. Built in
a worker, those bytes are written into shared memory, mapped by the trainer, page-faulted in and freed
per batch, which cost more than decoding the chips; and flipping numpy views chip by chip cost more
than the flips themselves. So workers only decode: they ship *raw* batches (pixels as decoded, in the
file's dtype, channels last; masks as compact class indices; the drawn flip/rotation codes), each
memcpy'd once into one shared buffer. `FinishingLoader` turns them, where they are consumed, into
exactly what `ExportDataset.__getitem__` + the usual collate give (normalised float32 [B, C, H, W],
int64 masks, the same targets), with the same pixels.py functions (same bits). With `device=` the raw
batch is moved first (pinned, non-blocking) and finished there: a quarter of the bytes cross PCIe.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from torch.utils.data._utils.collate import default_collate

from gpjobs.export.chips import ChipReadError, chip_header
from gpjobs.paths import PathError
from gpjobs.training.data.datasets import ExportDataset, collate_detection
from gpjobs.training.data.packing import Packed, Packer, SlotRing, in_worker

__all__ = ["FinishingLoader", "RawCollate", "RawSamples", "sample_collate"]

DETECTION_TASKS = frozenset({"detection", "instance", "panoptic"})
# Raw dtypes that are finished on an accelerator; others (uint16: few CUDA kernels) are finished on the CPU.
DEVICE_DTYPES = frozenset({torch.uint8, torch.int8, torch.int16, torch.int32, torch.float16, torch.float32})


def sample_collate(task: str) -> Callable[[list], Any] | None:
    """The collate for *finished* samples of `task` (None = torch's default), e.g. for a custom sampler."""
    return collate_detection if task in DETECTION_TASKS else None


class RawSamples(Dataset):
    """The raw view of an ExportDataset (shares its records, RNG use and class table)."""

    def __init__(self, dataset: ExportDataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple:
        return self.dataset.raw(index)


def as_tensor(array: np.ndarray) -> torch.Tensor:
    """A numpy array as a tensor without copying when it can (Pillow hands out read-only arrays)."""
    return torch.from_numpy(array if array.flags.writeable else array.copy())


def stack_raw(arrays: list[np.ndarray]) -> torch.Tensor | list[torch.Tensor]:
    """Same-shaped arrays -> one batch tensor (a memcpy each: the arrays are decoded, not yet flipped;
    a value-preserving widening when dtypes differ, e.g. uint8 label rasters next to uint16 ones).
    Chips of another size than their batch-mates (a warning in the report) stay a list."""
    first = arrays[0]
    if any(a.shape != first.shape for a in arrays):
        return [as_tensor(a) for a in arrays]
    dtype = np.result_type(*arrays) if any(a.dtype != first.dtype for a in arrays) else first.dtype
    out = torch.from_numpy(np.empty((len(arrays), *first.shape), dtype))
    view = out.numpy()
    for i, a in enumerate(arrays):
        view[i] = a
    return out


class _Direct:
    """Batch assembly in the consuming process (0 workers): plain tensors, nothing to ship."""

    def stack(self, arrays: list[np.ndarray]) -> Any:
        return stack_raw(arrays)

    def array(self, array: np.ndarray, *, keep: bool) -> torch.Tensor:
        return as_tensor(array)

    def tensor(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor

    def pack(self, structure: Any, ring: SlotRing | None = None) -> Any:
        return structure


class _Shipped(Packer):
    """Batch assembly in a worker: everything into one shared buffer (packing.py)."""

    def stack(self, arrays: list[np.ndarray]) -> Any:
        if any(a.shape != arrays[0].shape for a in arrays):
            return [self.array(a, keep=False) for a in arrays]
        return super().stack(arrays)


class RawCollate:
    """Raw samples -> a raw batch: (geometry codes [B], *slots) with the structure of the finished batch
    (picklable, runs in the workers, where it comes out as one `Packed` buffer)."""

    def __init__(self, task: str, ring: SlotRing | None = None) -> None:
        self.task = task
        self.ring = ring

    def __call__(self, samples: list[tuple]) -> Any:
        task = self.task
        into = _Shipped() if in_worker() else _Direct()
        codes = into.tensor(torch.tensor([s[0] for s in samples], dtype=torch.uint8))
        images = into.stack([s[1] for s in samples])
        if task in ("segmentation", "change"):
            batch = (codes, images, *(into.stack([s[i] for s in samples]) for i in range(2, len(samples[0]))))
        elif task == "translation":
            batch = (codes, images, None if samples[0][2] is None else into.stack([s[2] for s in samples]))
        elif task in DETECTION_TASKS:
            targets = [
                {k: into.array(v, keep=False) if isinstance(v, np.ndarray) else into.tensor(v) for k, v in s[2].items()}
                for s in samples
            ]  # "semantic" label values are raw arrays, the rest final tensors
            batch = (codes, images, targets)
        else:  # classification, multilabel
            batch = (codes, images, into.tensor(torch.stack([s[2] for s in samples])))
        return into.pack(batch, self.ring)


class _Finisher:
    """Raw batch -> the finished batch, on the CPU (optionally pinned) or on `device`."""

    def __init__(
        self, dataset: ExportDataset, device: torch.device | None, pin: bool, ring: SlotRing | None = None
    ) -> None:
        self.dataset = dataset
        self.ring = ring
        self.task = dataset.task
        self.device = device
        self.pin = pin

    def _move(self, raw: torch.Tensor) -> torch.Tensor:
        if self.device is not None and raw.dtype in DEVICE_DTYPES:
            return raw.to(self.device, non_blocking=True)
        return raw

    def _place(self, t: torch.Tensor) -> torch.Tensor:
        if self.device is not None:
            return t.to(self.device, non_blocking=True)
        return t.pin_memory() if self.pin and not t.is_pinned() else t

    def images(self, raw: torch.Tensor | list[torch.Tensor], codes: list[int]) -> torch.Tensor:
        ds = self.dataset
        if isinstance(raw, list):  # mixed chip sizes: finish one by one (each resized to chip_size)
            return self._place(torch.cat([ds.finish_images(r[None], codes[i : i + 1]) for i, r in enumerate(raw)]))
        return self._place(ds.finish_images(self._move(raw), codes, pin_memory=self.pin and self.device is None))

    def masks(self, raw: torch.Tensor | list[torch.Tensor], codes: list[int]) -> torch.Tensor:
        ds = self.dataset
        if isinstance(raw, list):
            return self._place(torch.cat([ds.finish_masks(r[None], codes[i : i + 1]) for i, r in enumerate(raw)]))
        return self._place(ds.finish_masks(self._move(raw), codes))

    def _target(self, t: Any) -> Any:
        if self.device is None:
            return t
        if isinstance(t, torch.Tensor):
            return t.to(self.device, non_blocking=True)
        return {k: self._target(v) for k, v in t.items()} if isinstance(t, dict) else t

    def __call__(self, raw: Any) -> Any:
        if isinstance(raw, Packed) and raw.slot is not None:
            ring = self.ring
            assert ring is not None  # only a loader that made a ring packs batches into its slots
            worker, index = raw.slot
            try:
                return self._finish(raw.unpack(ring))
            finally:  # everything finished is a copy (or the device's); the worker may refill the slot
                ring.release((worker, index))
        return self._finish(raw.unpack() if isinstance(raw, Packed) else raw)

    def _finish(self, raw: Any) -> Any:
        task = self.task
        codes = raw[0].tolist()
        images = self.images(raw[1], codes)
        if task == "segmentation":
            return [images, self.masks(raw[2], codes)]
        if task == "change":
            return [images, self.images(raw[2], codes), self.masks(raw[3], codes)]
        if task == "translation":
            return [images, images.clone() if raw[2] is None else self.images(raw[2], codes)]
        if task in DETECTION_TASKS:
            targets = [dict(t) for t in raw[2]]
            for i, t in enumerate(targets):
                if "semantic" in t:
                    t["semantic"] = self.dataset.finish_masks(t["semantic"][None], codes[i : i + 1])[0]
            return images, [self._target(t) for t in targets]
        return [images, self._target(raw[2])]  # default_collate gives lists for tuple samples


class FinishingLoader:
    """A DataLoader over raw samples that yields finished batches.

    Iterates like the DataLoader it wraps and forwards its attributes (`generator`, `sampler`,
    `persistent_workers`, ...); `dataset` is the finished-sample dataset and `collate_fn` the collate
    for finished samples, so code that builds its own DataLoader from them gets the same batches.
    """

    def __init__(
        self,
        dataset: ExportDataset,
        batch_size: int,
        *,
        num_workers: int = 0,
        pin_memory: bool = False,
        device: torch.device | str | None = None,
        **loader_kw: Any,
    ) -> None:
        self.dataset = dataset
        self.collate_fn = sample_collate(dataset.task) or default_collate
        cuda = torch.cuda.is_available()
        device = torch.device(device) if device is not None else None
        on_accelerator = device is not None and device.type != "cpu"
        prefetch = loader_kw.get("prefetch_factor") or 2
        self.ring = _ring_for(dataset, batch_size, num_workers, prefetch) if num_workers > 0 else None
        # Pin the small raw batch when it is going to an accelerator; pin the finished one when the
        # consumer moves it itself (pin_memory asked, no device given).
        sized = loader_kw.get("batch_sampler") is None  # else the batch sampler (a rank's share) makes the batches
        self.loader = DataLoader(
            RawSamples(dataset),
            batch_size=batch_size if sized else 1,
            num_workers=num_workers,
            collate_fn=RawCollate(dataset.task, self.ring),
            pin_memory=cuda and on_accelerator,
            **loader_kw,
        )
        self._finish = _Finisher(dataset, device, pin=cuda and pin_memory and device is None, ring=self.ring)

    def __iter__(self) -> Iterator[Any]:
        finish = self._finish
        if self.ring is not None:
            self.ring.new_epoch()  # before torch resets the workers (in iter() below)
        for raw in self.loader:
            yield finish(raw)

    def __len__(self) -> int:
        return len(self.loader)

    def __getattr__(self, name: str) -> Any:
        if name == "loader":  # not set yet (e.g. during unpickling): no recursion
            raise AttributeError(name)
        return getattr(self.loader, name)


RING_BYTES = 256 * 2**20  # at most this much shared memory per loader for reusable slots


def _ring_for(dataset: ExportDataset, batch_size: int, workers: int, prefetch: int) -> SlotRing | None:
    """Slots sized for a batch of the first chip's size (+25% and room for targets). A worker has at
    most `prefetch` batches queued plus one being read; as many again cover the batches of a pass
    abandoned by a `break`, whose slots come back one pass later. None (fresh segments) when that
    would not fit comfortably in /dev/shm or RING_BYTES."""
    if not len(dataset):
        return None
    try:
        h, w, bands, dtype = chip_header(dataset.records[0].image, root=dataset.records[0].root)
    except (ChipReadError, PathError):
        return None
    itemsize = np.dtype(dtype).itemsize
    images = 2 if dataset.task in ("change", "translation") else 1
    per_chip = h * w * (len(dataset.info.extract_bands) * itemsize * images + 2) + 4096
    slot_bytes = int(batch_size * per_chip * 1.25) + 65536
    slots = 2 * prefetch + 2
    total = workers * slots * slot_bytes
    try:
        shm = os.statvfs("/dev/shm")
        free = shm.f_bavail * shm.f_frsize
    except OSError:
        free = 0
    if total > min(RING_BYTES, free // 4):
        return None
    return SlotRing(workers, slots, slot_bytes)
