"""Full-state checkpoints written atomically at each epoch end, and read back to resume."""

from __future__ import annotations

import os
import random
import tempfile
import threading
from collections.abc import Collection
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.utils.serialization


def atomic_write(path: Path, write) -> None:
    """Call write(tmp_path), fsync, rename over `path` (a crash leaves the old file or the new one)."""
    tmp = temporary_beside(path)
    try:
        write(tmp)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    publish(tmp, path)


def temporary_beside(path: Path) -> Path:
    """A new empty temporary file in `path`'s folder (created if need be), for `publish` to rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    return Path(tmp)


def publish(tmp: Path, path: Path) -> None:
    """fsync the written `tmp`, rename it over `path` and fsync the folder; on failure `tmp` is removed."""
    path = Path(path)
    try:
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def write_state(state: dict[str, Any], path: Path) -> None:
    """torch.save without the per-record CRC32: torch.load never checks it, and over a checkpoint's weights and
    optimizer moments it is half the cost of writing them (fsync + atomic rename are what guard the file)."""
    options = torch.utils.serialization.config.save
    before, options.compute_crc32 = options.compute_crc32, False
    try:
        torch.save(state, path)
    finally:
        options.compute_crc32 = before


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    atomic_write(path, lambda tmp: write_state(state, tmp))


def load_checkpoint(path: Path) -> dict[str, Any] | None:
    """The checkpoint at `path`, or None when there is none (a corrupt one is an error worth reporting)."""
    path = Path(path)
    if not path.is_file():
        return None
    # Our own file (RNG states hold numpy objects), so full unpickling is acceptable here.
    return torch.load(path, map_location="cpu", weights_only=False)


def cpu_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A detached CPU copy of the weights (the best epoch's weights are kept this way)."""
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


def detached(obj: Any) -> Any:
    """A copy of a (nested) state with every tensor cloned to the CPU, safe to write while training goes on."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: detached(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(detached(v) for v in obj)
    return obj


class CheckpointWriter:
    """Writes checkpoints so that the next epoch's compute overlaps the disk write.

    At most one write is in flight; `submit` waits for the previous one, `wait` for the last (call it
    before the process ends or another writer takes over). `on_written(epoch)` runs after each rename.
    With `serialize_now` (the state's tensors are on the CPU) `submit` serialises the state to the
    temporary file at once, which costs less than copying every tensor first, and only the fsync and the
    rename run in the background; otherwise (device tensors) it copies the state to the CPU and a background
    thread serialises the copy.
    """

    def __init__(self, path: Path, on_written, *, serialize_now: bool = False) -> None:
        self.path = Path(path)
        self.on_written = on_written
        self.serialize_now = serialize_now
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def submit(self, epoch: int, state: dict[str, Any], *, frozen: Collection[str] = ()) -> None:
        """Write `state` (as it is now) in the background; `frozen` names entries that are CPU copies nothing
        modifies any more (the best epoch's weights): they are written as they are, not copied again."""
        self.wait()
        if self.serialize_now:
            tmp = temporary_beside(self.path)
            try:
                write_state(state, tmp)
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise

            def write() -> None:
                publish(tmp, self.path)

        else:
            snapshot = {k: v if k in frozen else detached(v) for k, v in state.items()}

            def write() -> None:
                save_checkpoint(self.path, snapshot)

        def run() -> None:
            try:
                write()
                self.on_written(epoch)
            except BaseException as exc:  # surfaced on the training thread by wait()
                self._error = exc

        self._thread = threading.Thread(target=run, name=f"checkpoint-{epoch}", daemon=True)
        self._thread.start()

    def wait(self) -> None:
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is not None:
            error, self._error = self._error, None
            raise error
