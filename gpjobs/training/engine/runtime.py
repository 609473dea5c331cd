"""Where a fit runs: device, mixed precision, data loaders and the per-epoch seeding that makes resume exact."""

from __future__ import annotations

import contextlib
import ctypes
import os
import random
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from gpjobs.training.distributed import rank_and_world
from gpjobs.training.engine.config import FitConfig
from gpjobs.training.models.base import ModelFamily

# glibc mallopt parameters, and what a CPU fit sets them to (see keep_freed_memory)
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
TRIM_THRESHOLD, MMAP_THRESHOLD = 256 << 20, 32 << 20


def keep_freed_memory() -> None:
    """Let glibc's heap serve allocations up to 32 MiB and keep up to 256 MiB of freed memory (process-wide).

    By default glibc maps large blocks afresh and hands freed heap back to the system as soon as its threshold
    (which moves with what the process did before) allows: a CPU training step's activations and gradients
    then page-fault in again every step. How often depended on the engine's own allocations (the best-epoch
    copy, the checkpoint), which made the same step 5-10% slower than in a bare loop. Fixed thresholds make
    every step reuse the memory the previous one freed. No-op outside glibc."""
    if not hasattr(os, "confstr") or not (os.confstr("CS_GNU_LIBC_VERSION") or "").startswith("glibc"):
        return
    libc = ctypes.CDLL(None)
    libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)
    libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def seed_epoch(seed: int, epoch: int, loader: Any) -> None:
    """Reseed every RNG (and the loader's shuffling generators) from (seed, epoch): an epoch trains the same
    whether the run got there straight or resumed from a checkpoint."""
    epoch_seed = seed * 1000 + epoch
    seed_everything(epoch_seed)
    samplers = (getattr(loader, "sampler", None), getattr(loader, "batch_sampler", None))  # a rank's share: the latter
    for generator in (getattr(loader, "generator", None), *(getattr(s, "generator", None) for s in samplers)):
        if isinstance(generator, torch.Generator):
            generator.manual_seed(epoch_seed)


@dataclass(frozen=True)
class Runtime:
    """The device and the precision the fit computes in, and this process' rank among the job's ranks."""

    device: torch.device
    use_amp: bool
    amp_dtype: torch.dtype
    sync_every: int  # batches between host syncs of the losses (each sync stalls a CUDA stream)
    rank: int = 0
    world: int = 1  # processes (devices) training the job together (gpjobs.training.distributed)

    @classmethod
    def for_config(cls, config: FitConfig) -> Runtime:
        device = torch.device(config.device)
        use_amp = device.type == "cuda" and config.mixed_precision
        amp_dtype = torch.bfloat16 if use_amp and torch.cuda.is_bf16_supported() else torch.float16
        rank, world = rank_and_world()
        return cls(device, use_amp, amp_dtype, 1 if device.type == "cpu" else 25, rank, world)

    @property
    def distributed(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        """Rank 0 (or the only process): it reports, validates, checkpoints and packages."""
        return self.rank == 0

    def autocast(self):
        if self.use_amp:
            return torch.autocast(device_type="cuda", dtype=self.amp_dtype)
        return contextlib.nullcontext()

    def grad_scaler(self) -> torch.amp.GradScaler:
        """Loss scaling for float16 autocast (bfloat16 and float32 need none: the scaler is then a no-op)."""
        return torch.amp.GradScaler("cuda", enabled=self.use_amp and self.amp_dtype == torch.float16)

    def describe(self) -> str:
        where = (
            f"{self.world} {self.device.type} devices (torch.distributed, "
            f"{'nccl' if self.device.type == 'cuda' else 'gloo'}; each batch split over them)"
            if self.distributed
            else f"{self.device}"
        )
        return where + (f" with {str(self.amp_dtype).split('.')[-1]} autocast" if self.use_amp else "")


def make_loaders(
    family: ModelFamily, data: Any, config: FitConfig, runtime: Runtime, *, shard: bool = True
) -> tuple[Any, Any]:
    """(train, valid) loaders; a family may supply its own training loader (e.g. oversampling). On several
    ranks (and `shard`), the training loader yields this rank's share of the batches a one-device run draws."""
    from gpjobs.training.data.loading import shard_loader

    pin = runtime.device.type == "cuda"
    part = (runtime.rank, runtime.world) if runtime.distributed and shard else None
    sharded = {"shard": part} if part is not None else {}  # one device: the data's plain loaders API
    train, valid = data.loaders(config.batch_size, num_workers=config.num_workers, pin_memory=pin, **sharded)
    custom = family.train_loader(data, config.batch_size, num_workers=config.num_workers, pin_memory=pin)
    if custom is not None and part is not None:
        custom = shard_loader(custom, *part)
    return (custom or train), valid
