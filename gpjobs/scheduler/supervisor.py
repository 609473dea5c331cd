"""Supervising one attempt's child: spawn it, turn its events into batched store writes, stop it on request.

Messages, progress and the heartbeat are batched into one transaction every `progress_flush_s` (sooner for
news a person waits for). A checkpoint is acknowledged (checkpoint_epoch written) only together with every
message received before it, so after any crash the job's messages cover every epoch it will not run again.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from structlog.typing import FilteringBoundLogger

from gpjobs import messages as texts
from gpjobs.config import Config
from gpjobs.domain import Job, MessageType, now_ms
from gpjobs.scheduler.child import WarmTrainer
from gpjobs.scheduler.child_input import CpuSplit
from gpjobs.scheduler.observe import SchedulerObserver
from gpjobs.scheduler.pool import Child, LocalPool, Pool
from gpjobs.scheduler.retry import STOP_STALLED
from gpjobs.store import Store
from gpjobs.store.jobs import MessageInput

INFO = MessageType.INFORMATIVE
URGENT_GAP_S = 0.25  # non-progress events are written at once unless the last write was this recent


class ChildSupervisor:
    """One child from spawn to exit. `on_result` publishes the package a `result` event names."""

    def __init__(
        self,
        store: Store,
        config: Config,
        job: Job,
        device: str,
        work_dir: Path,
        log: FilteringBoundLogger,
        on_result: Callable[[dict[str, Any]], Awaitable[None]],
        warm: WarmTrainer | None = None,
        observer: SchedulerObserver | None = None,
        pool: Pool | None = None,
    ) -> None:
        self.store = store
        self.pool = pool or LocalPool(config)  # where a child starts when the slot has no warm one
        self.observer = observer or SchedulerObserver()
        self.warm = warm  # the slot's ready child, when the server keeps one (config.warm_trainers)
        self.config = config
        self.job = job
        self.device = device
        self.work_dir = work_dir
        self.log = log
        self.on_result = on_result
        self.child: Child | None = None
        self.stop_reason: str | None = None
        self.started_mono = time.monotonic()
        self.last_seen_mono = time.monotonic()  # last event of any kind (the heartbeat watchdog reads it)
        self.failure: dict[str, Any] | None = None  # the child's `failed` event
        self.checkpoint_epoch = job.checkpoint_epoch
        self._pending: list[MessageInput] = []
        self._progress: float | None = None
        self._dirty = False
        self._last_flush = 0.0
        self._kill_task: asyncio.Task | None = None
        self._split: CpuSplit | None = None

    # --- control (the scheduler, the watchdog, cancel and shutdown call it) ---------------------------

    def stop(self, reason: str, grace_s: float) -> None:
        """Ask the child to stop (SIGTERM to its group) and SIGKILL it after `grace_s`. First reason wins."""
        if self.stop_reason is None:
            self.stop_reason = reason
        self.log.info("stopping child", reason=reason)
        if self.child is None:
            return  # not spawned yet: run() checks stop_reason before spawning
        if reason == STOP_STALLED:
            self.child.signal_group(signal.SIGKILL)  # it stopped answering: nothing to wait for
            return
        self.child.signal_group(signal.SIGTERM)
        if self._kill_task is None:
            self._kill_task = asyncio.create_task(self._kill_after(grace_s))

    async def _kill_after(self, grace_s: float) -> None:
        await asyncio.sleep(grace_s)
        if self.child is not None and self.child.returncode is None:
            self.log.warning("child ignored SIGTERM; killing it", grace_s=grace_s)
            self.child.signal_group(signal.SIGKILL)

    def close(self) -> None:
        """Cancel a pending SIGKILL timer (the attempt is over)."""
        if self._kill_task is not None:
            self._kill_task.cancel()

    def log_tail(self) -> str:
        """The end of the child's stderr log ('' when it never started)."""
        return self.child.stderr_tail() if self.child else ""

    # --- the child's life -----------------------------------------------------------------------------

    async def run(self, spec_path: Path, split: CpuSplit | None = None) -> int:
        """Start the child on `spec_path` (the slot's warm child, else a cold one), ingest its events until it
        exits, write what is pending; its exit status. `split`: the CPU split the job is told when it starts."""
        self._split = split
        log_path = self.work_dir / "logs" / f"attempt-{self.job.attempts}.log"
        child: Child | None = await self.warm.take(spec_path, log_path) if self.warm is not None else None
        warm = child is not None
        if child is None:
            child = await self.pool.spawn(spec_path, device=self.device, log_path=log_path)
        self.child = child
        self.log.info("child started", pid=child.pid, attempt=self.job.attempts, warm=warm)
        self.observer.child_started(self.job, self.device, warm=warm)
        await self.store.record_progress(self.job.job_id, pid=child.pid, heartbeat_ms=now_ms())
        if self.stop_reason is not None:  # a cancel that landed while spawning
            self.stop(self.stop_reason, self.config.cancel_grace_s)
        flusher = asyncio.create_task(self._flush_periodically())
        try:
            async for event in child.events():
                self.last_seen_mono = time.monotonic()
                await self.on_event(event)
            rc = await child.wait()
        finally:
            flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await flusher
            if self.warm is not None and child.returncode is not None:
                try:
                    await self.warm.start()  # the next job's child, now that this one's is gone
                except OSError as exc:  # the next job starts cold (and says why if that fails too)
                    self.log.warning("warm trainer not started", error=str(exc))
        await self.flush()
        self.log.info("child exited", rc=rc, stop_reason=self.stop_reason)
        return rc

    async def on_event(self, event: dict[str, Any]) -> None:
        """One event from the child (protocol.py): batch what it says, write at once what cannot wait."""
        kind = event.get("type")
        if kind == "heartbeat":
            self._dirty = True
        elif kind == "progress":
            first = self._progress is None
            with contextlib.suppress(KeyError, TypeError, ValueError):
                self._progress = max(0.0, min(100.0, float(event["percent"])))
                self._dirty = True
            if first:  # the first sign of training shows at once; later ones are batched
                await self.flush()
        elif kind == "started":
            self._pending.extend(self._resume_news(event))
            if self._split is not None:
                split = self._split
                self._pending.append((INFO, texts.cpu_split(split.cpus, split.threads, split.workers, split.source)))
            self._dirty = True
            await self.flush()
        elif kind == "message":
            self._pending.append((MessageType.from_level(str(event.get("level"))), str(event.get("text", ""))))
        elif kind == "epoch":
            self._pending.append((INFO, texts.epoch_line(event)))
            self.observer.epoch_done(self.job)
        elif kind == "checkpoint":
            with contextlib.suppress(KeyError, TypeError, ValueError):
                self.checkpoint_epoch = int(event["epoch"])
            # Acknowledge it together with the epoch lines before it: a resume never repeats that epoch,
            # so a line still pending here would be lost for good if the server died before the next flush.
            self._dirty = True
            await self.flush()
        elif kind == "failed":
            self.failure = event
        elif kind == "result":
            await self.flush()
            await self.on_result(event)
        if self._pending and time.monotonic() - self._last_flush >= URGENT_GAP_S:
            await self.flush()

    def _resume_news(self, event: dict[str, Any]) -> list[MessageInput]:
        """What a rerun really resumed from: the child names the checkpoint it loaded (the store's
        checkpoint_epoch may lag the disk when the server died)."""
        rerun = self.job.attempts > 1 or self.job.interruptions or self.job.server_crashes
        if "resumed_blocks" in event:  # an inference child: its block journal, not a checkpoint
            with contextlib.suppress(TypeError, ValueError):
                blocks = int(event.get("resumed_blocks") or 0)
                if blocks:
                    return [(INFO, texts.resumed_blocks(blocks))]
            return [(INFO, texts.BLOCKS_STARTED_OVER)] if rerun else []
        with contextlib.suppress(TypeError, ValueError):
            resumed = int(event.get("resumed_from_epoch") or 0)
            if resumed:
                return [(INFO, texts.resumed_from(resumed))]
        return [(INFO, texts.STARTED_OVER)] if rerun else []

    async def _flush_periodically(self) -> None:
        while True:
            await asyncio.sleep(self.config.progress_flush_s)
            await self.flush()

    async def flush(self) -> None:
        """Write batched messages, progress, heartbeat and checkpoint epoch in one transaction."""
        if not self._pending and not self._dirty:
            return
        pending, self._pending, self._dirty = self._pending, [], False
        self._last_flush = time.monotonic()
        await self.store.record_progress(
            self.job.job_id,
            messages=pending,
            progress=self._progress,
            heartbeat_ms=now_ms(),
            checkpoint_epoch=self.checkpoint_epoch,
        )
