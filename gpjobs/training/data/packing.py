"""Reusable shared-memory slots for worker batches: a raw batch crosses processes as a slot number.

torch ships every tensor a worker returns in a fresh shared-memory segment (created, zero-filled and
faulted in by the worker, its descriptor passed over a socket, mapped and faulted in again by the
trainer, unmapped when freed). Measured on this 2-core box with decoding taken out (8 x 256 px RGB
chips + masks per batch): ~1.1 ms of CPU per chip across the two processes that way, ~0.2 ms writing
into a reused slot; decoding a chip is ~2.5 ms. So a worker packs every array of a batch into one
buffer (laid out once, each array written straight into place), preferably a slot of a `SlotRing`
made before the workers started; the structure around it pickles by value with `Ref` placeholders
and the consumer rebuilds views (`Packed.unpack`), finishes the batch, and frees the slot.

Slot protocol (no locks): state 0 = free, else the loader epoch + 1 it was filled in. A worker takes
a slot that is free or was filled in an earlier epoch (a batch abandoned by a `break` is discarded by
torch when the next epoch starts, never read); the consumer frees it after finishing the batch and
starts each epoch with `new_epoch()` before torch resets the workers. A batch that does not fit, or
finds no free slot, falls back to a fresh shared segment: slower, never wrong. The consumer's reads
come before its freeing store and the worker's check before its writes (program order; x86 keeps it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import torch
from torch.utils.data import get_worker_info

ALIGN = 64  # every array starts on a cache line (and on its dtype's alignment)


@dataclass(frozen=True)
class Ref:
    """Placeholder for array `index` of a packed batch. `keep`: handed to the consumer as is (copied out
    of the buffer on unpack, so a kept target does not hold the whole batch's memory alive)."""

    index: int
    keep: bool


class SlotRing:
    """Per-worker rings of reusable shared byte buffers, made in the consuming process before the
    workers start (inherited on fork, sent by handle once on spawn)."""

    def __init__(self, workers: int, slots: int, slot_bytes: int) -> None:
        self.slot_bytes = slot_bytes
        self.buffers = torch.empty((workers, slots, slot_bytes), dtype=torch.uint8).share_memory_()
        self.state = torch.zeros((workers, slots), dtype=torch.int64).share_memory_()
        self.epoch = torch.zeros(1, dtype=torch.int64).share_memory_()
        self._cursor = 0  # per process: each worker walks its own ring

    def new_epoch(self) -> None:
        """Consumer, before each pass: slots filled before now can be reused once torch drops them."""
        self.epoch += 1

    def claim(self, nbytes: int) -> tuple[int, int] | None:
        """Worker: a free slot of its ring for `nbytes`, marked taken; None when none fits or is free."""
        info = get_worker_info()
        if info is None or nbytes > self.slot_bytes or info.id >= self.state.shape[0]:
            return None
        state = self.state[info.id].numpy()
        tag = int(self.epoch[0]) + 1
        for _ in range(len(state)):
            k = self._cursor
            self._cursor = (k + 1) % len(state)
            if state[k] == 0 or state[k] < tag:
                state[k] = tag
                return info.id, k
        return None

    def buffer(self, slot: tuple[int, int]) -> torch.Tensor:
        return self.buffers[slot[0], slot[1]]

    def release(self, slot: tuple[int, int]) -> None:
        """Consumer: the batch in `slot` has been finished (copied out); the worker may reuse it."""
        self.state[slot[0], slot[1]] = 0


class Packed(NamedTuple):
    """A packed batch: in a ring `slot`, or in its own `buffer` (a NamedTuple so that the DataLoader's
    pin-memory thread pins that buffer)."""

    buffer: torch.Tensor | None  # uint8; None when the batch sits in a ring slot
    slot: tuple[int, int] | None
    specs: list[tuple[int, str, tuple[int, ...]]]  # (byte offset, numpy dtype str, shape) per Ref index
    structure: Any

    def unpack(self, ring: SlotRing | None = None) -> Any:
        """The structure with every Ref replaced by a tensor view of the buffer (a copy where `keep`).
        The views of a ring slot are valid until the slot is released."""
        if self.slot is None:
            buffer = self.buffer
        else:
            assert ring is not None  # a batch in a ring slot is unpacked with that ring
            worker, index = self.slot
            buffer = ring.buffer((worker, index))
        assert buffer is not None  # a Packed has either its own buffer or a slot
        views = []
        for offset, dtype, shape in self.specs:
            nbytes = math.prod(shape) * np.dtype(dtype).itemsize
            flat = buffer[offset : offset + nbytes]
            views.append(
                flat.view(_torch_dtype(dtype)).view(tuple(shape))
                if nbytes
                else torch.empty(tuple(shape), dtype=_torch_dtype(dtype), device=buffer.device)
            )
        return _replace(self.structure, views)


def _torch_dtype(dtype: str) -> torch.dtype:
    return torch.from_numpy(np.empty(0, np.dtype(dtype))).dtype


def _replace(node: Any, views: list[torch.Tensor]) -> Any:
    if isinstance(node, Ref):
        view = views[node.index]
        return view.clone() if node.keep else view
    if isinstance(node, dict):
        return {k: _replace(v, views) for k, v in node.items()}
    if isinstance(node, (list, tuple)):
        return type(node)(_replace(v, views) for v in node)
    return node


def in_worker() -> bool:
    return get_worker_info() is not None


class Packer:
    """Collects arrays for one batch buffer; `pack` lays them out and writes each once."""

    def __init__(self) -> None:
        self._entries: list[tuple[list[np.ndarray], np.dtype, tuple[int, ...], bool]] = []

    def _add(self, parts: list[np.ndarray], dtype: np.dtype, shape: tuple[int, ...], stacked: bool) -> int:
        self._entries.append((parts, np.dtype(dtype), tuple(shape), stacked))
        return len(self._entries) - 1

    def stack(self, arrays: list[np.ndarray]) -> Ref:
        """Same-shaped arrays as one (B, ...) array (value-preserving widening when dtypes differ)."""
        first = arrays[0]
        dtype = np.result_type(*arrays) if any(a.dtype != first.dtype for a in arrays) else first.dtype
        return Ref(self._add(arrays, dtype, (len(arrays), *first.shape), True), keep=False)

    def array(self, array: np.ndarray, *, keep: bool) -> Ref:
        return Ref(self._add([array], array.dtype, array.shape, False), keep=keep)

    def tensor(self, tensor: torch.Tensor) -> Ref:
        """A (small, CPU) target tensor the consumer keeps."""
        return self.array(tensor.numpy(), keep=True)

    def pack(self, structure: Any, ring: SlotRing | None = None) -> Packed:
        offsets, total = [], 0
        for _, dtype, shape, _ in self._entries:
            offsets.append(total)
            total += -(-math.prod(shape) * dtype.itemsize // ALIGN) * ALIGN
        slot = ring.claim(total) if ring is not None else None
        buffer = ring.buffer(slot) if slot is not None else _shared_bytes(total)  # type: ignore[union-attr]
        raw = buffer.numpy()
        specs = []
        for (parts, dtype, shape, stacked), offset in zip(self._entries, offsets):
            nbytes = math.prod(shape) * dtype.itemsize
            target = raw[offset : offset + nbytes].view(dtype).reshape(shape)
            if stacked:
                for i, part in enumerate(parts):
                    target[i] = part
            else:
                target[...] = parts[0]
            specs.append((offset, dtype.str, shape))
        return Packed(None if slot is not None else buffer, slot, specs, structure)


def _shared_bytes(nbytes: int) -> torch.Tensor:
    """An uninitialised uint8 buffer, in shared memory when in a worker (written once, sent by handle)."""
    if not in_worker():
        return torch.empty(max(nbytes, 1), dtype=torch.uint8)
    elem = torch.empty(0, dtype=torch.uint8)
    storage = elem._typed_storage()._new_shared(max(nbytes, 1), device=elem.device)
    return elem.new(storage).resize_(max(nbytes, 1))
