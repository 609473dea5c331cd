"""Where training children run: the pool behind the scheduler's slots.

The scheduler owns the queue and every status change; a pool only says which slots exist and starts one
attempt's child on a slot. `LocalPool` (the default) runs children on this machine, one slot per entry of
`devices`. `RayPool` (scheduler/ray_pool.py, `pool = "ray"`, imported only then, by the scheduler's `make_pool`)
runs each child inside a Ray actor on a cluster node, with slots counted from the cluster's resources. Either way
the supervisor gets a `Child`: the same events, signals and exit status as a local subprocess.
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Protocol

from gpjobs.config import Config
from gpjobs.scheduler.child import ChildProcess


class Child(Protocol):
    """One attempt's training child as the supervisor drives it."""

    signals_sent: list[int]

    @property
    def pid(self) -> int: ...

    @property
    def returncode(self) -> int | None: ...

    def events(self) -> AsyncIterator[dict[str, Any]]: ...

    def signal_group(self, sig: int) -> None: ...

    async def wait(self) -> int: ...

    def stderr_tail(self, max_bytes: int = 2000) -> str: ...


class Pool(abc.ABC):
    """Slots and children; `start()` before use, `close()` after the last child has exited."""

    warm_trainers = False  # whether each slot keeps a ready child on this machine (child.WarmTrainer)

    def __init__(self, config: Config) -> None:
        self.config = config

    async def start(self) -> None:
        """Connect to whatever runs the children."""

    async def close(self) -> None:
        """Let go of it (the children are gone by then)."""

    @abc.abstractmethod
    def slot_devices(self) -> list[str]:
        """One entry per slot: the devices a job on it gets, as the child sees them ("cpu", "cuda:0+cuda:1")."""

    def slot_cpus(self, device: str, machine_cpus: int) -> int:
        """The CPUs a job on a slot of `device` may use (its trainer threads and loader workers share them)."""
        return max(1, machine_cpus // max(1, len(self.slot_devices())))

    @abc.abstractmethod
    async def spawn(self, spec_path: Path, *, device: str, log_path: Path) -> Child:
        """Start the training child of `spec_path` on a slot of `device`."""


class LocalPool(Pool):
    """Children on this machine: one slot per configured device entry (several devices: one job, one rank each)."""

    def __init__(self, config: Config) -> None:
        super().__init__(config)
        self.warm_trainers = config.warm_trainers

    def slot_devices(self) -> list[str]:
        return list(self.config.devices)

    async def spawn(self, spec_path: Path, *, device: str, log_path: Path) -> Child:
        return await ChildProcess.spawn(
            self.config.trainer_command, spec_path, device=device, threads=self.config.child_threads, log_path=log_path
        )
