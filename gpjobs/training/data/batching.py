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

import math
from typing import Any, Callable, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, get_worker_info
from torch.utils.data._utils.collate import default_collate

from gpjobs.training.data.datasets import ExportDataset, collate_detection

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


def _buffer(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """An uninitialised batch tensor; in a worker it lives in shared memory from the start, so it is
    written once and sent by handle (what torch's default_collate does for its stacks)."""
    if get_worker_info() is None:
        return torch.empty(shape, dtype=dtype)
    elem = torch.empty(0, dtype=dtype)
    storage = elem._typed_storage()._new_shared(math.prod(shape), device=elem.device)
    return elem.new(storage).resize_(shape)


def as_tensor(array: np.ndarray) -> torch.Tensor:
    """A numpy array as a tensor without copying when it can (Pillow hands out read-only arrays)."""
    return torch.from_numpy(array if array.flags.writeable else array.copy())


def stack_raw(arrays: list[np.ndarray]) -> torch.Tensor | list[torch.Tensor]:
    """Same-shaped arrays -> one batch tensor (a memcpy each: the arrays are decoded, not yet flipped).
    Chips of another size than their batch-mates (a warning in the report) stay a list."""
    first = arrays[0]
    if any(a.shape != first.shape or a.dtype != first.dtype for a in arrays):
        return [as_tensor(a) for a in arrays]
    out = _buffer((len(arrays), *first.shape), torch.from_numpy(first[:0].copy()).dtype)
    view = out.numpy()
    for i, a in enumerate(arrays):
        view[i] = a
    return out


class RawCollate:
    """Raw samples -> a raw batch: (geometry codes [B], *slots) with the structure of the finished batch
    (picklable, runs in the workers)."""

    def __init__(self, task: str) -> None:
        self.task = task

    def __call__(self, samples: list[tuple]) -> tuple:
        task = self.task
        codes = torch.tensor([s[0] for s in samples], dtype=torch.uint8)
        images = stack_raw([s[1] for s in samples])
        if task in ("segmentation", "change"):
            return (codes, images, *(stack_raw([s[i] for s in samples]) for i in range(2, len(samples[0]))))
        if task == "translation":
            return codes, images, None if samples[0][2] is None else stack_raw([s[2] for s in samples])
        if task in DETECTION_TASKS:
            targets = [dict(s[2]) for s in samples]
            for t in targets:
                if "semantic" in t:
                    t["semantic"] = as_tensor(t["semantic"])
            return codes, images, targets
        return codes, images, torch.stack([s[2] for s in samples])  # classification, multilabel


class _Finisher:
    """Raw batch -> the finished batch, on the CPU (optionally pinned) or on `device`."""

    def __init__(self, dataset: ExportDataset, device: torch.device | None, pin: bool) -> None:
        self.dataset = dataset
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
            return self._place(torch.cat([ds.finish_images(r[None], codes[i:i + 1]) for i, r in enumerate(raw)]))
        return self._place(ds.finish_images(self._move(raw), codes, pin_memory=self.pin and self.device is None))

    def masks(self, raw: torch.Tensor | list[torch.Tensor], codes: list[int]) -> torch.Tensor:
        ds = self.dataset
        if isinstance(raw, list):
            return self._place(torch.cat([ds.finish_masks(r[None], codes[i:i + 1]) for i, r in enumerate(raw)]))
        return self._place(ds.finish_masks(self._move(raw), codes))

    def _target(self, t: Any) -> Any:
        if self.device is None:
            return t
        if isinstance(t, torch.Tensor):
            return t.to(self.device, non_blocking=True)
        return {k: self._target(v) for k, v in t.items()} if isinstance(t, dict) else t

    def __call__(self, raw: tuple) -> Any:
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
                    t["semantic"] = self.dataset.finish_masks(t["semantic"][None], codes[i:i + 1])[0]
            return images, [self._target(t) for t in targets]
        return [images, self._target(raw[2])]  # default_collate gives lists for tuple samples


class FinishingLoader:
    """A DataLoader over raw samples that yields finished batches.

    Iterates like the DataLoader it wraps and forwards its attributes (`generator`, `sampler`,
    `persistent_workers`, ...); `dataset` is the finished-sample dataset and `collate_fn` the collate
    for finished samples, so code that builds its own DataLoader from them gets the same batches.
    """

    def __init__(self, dataset: ExportDataset, batch_size: int, *, num_workers: int = 0, pin_memory: bool = False,
                 device: torch.device | str | None = None, **loader_kw: Any) -> None:
        self.dataset = dataset
        self.collate_fn = sample_collate(dataset.task) or default_collate
        cuda = torch.cuda.is_available()
        device = torch.device(device) if device is not None else None
        on_accelerator = device is not None and device.type != "cpu"
        # Pin the small raw batch when it is going to an accelerator; pin the finished one when the
        # consumer moves it itself (pin_memory asked, no device given).
        self.loader = DataLoader(RawSamples(dataset), batch_size=batch_size, num_workers=num_workers,
                                 collate_fn=RawCollate(dataset.task), pin_memory=cuda and on_accelerator,
                                 **loader_kw)
        self._finish = _Finisher(dataset, device, pin=cuda and pin_memory and device is None)

    def __iter__(self) -> Iterator[Any]:
        finish = self._finish
        for raw in self.loader:
            yield finish(raw)

    def __len__(self) -> int:
        return len(self.loader)

    def __getattr__(self, name: str) -> Any:
        if name == "loader":  # not set yet (e.g. during unpickling): no recursion
            raise AttributeError(name)
        return getattr(self.loader, name)
