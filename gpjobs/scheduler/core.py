"""The scheduler: boot recovery, the claim -> dispatch loop (one slot per device entry, or per job the Ray
cluster has room for: scheduler/pool.py), cancel, the watchdog, and graceful shutdown. It owns every status
change after submit."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import time
from dataclasses import dataclass

import structlog

from gpjobs import messages as texts
from gpjobs.config import Config
from gpjobs.domain import Job, JobStatus, MessageType, now_ms
from gpjobs.scheduler.child import WarmTrainer
from gpjobs.scheduler.child_input import work_dir
from gpjobs.scheduler.observe import SchedulerObserver
from gpjobs.scheduler.pool import LocalPool, Pool
from gpjobs.scheduler.recovery import recover_orphans
from gpjobs.scheduler.retry import (
    STOP_CANCEL,
    STOP_SHUTDOWN,
    STOP_STALLED,
    STOP_TIMEOUT,
)
from gpjobs.scheduler.runner import JobRun
from gpjobs.scheduler.workdirs import tidy_all_finished, tidy_finished
from gpjobs.store import Store

log = structlog.get_logger("gpjobs.scheduler")


def make_pool(config: Config) -> Pool:
    """The configured pool; Ray is imported only when `pool = "ray"`."""
    if config.pool == "ray":
        from gpjobs.scheduler.ray_pool import RayPool

        return RayPool(config)
    return LocalPool(config)


@dataclass
class Slot:
    device: str
    run: JobRun | None = None
    task: asyncio.Task | None = None
    warm: WarmTrainer | None = None  # the slot's ready training child (config.warm_trainers)


class Scheduler:
    """Runs queued jobs, one child per slot. Use `await start()`, then `await stop()`."""

    def __init__(
        self,
        config: Config,
        store: Store,
        boot_id: str,
        observer: SchedulerObserver | None = None,
        pool: Pool | None = None,
    ) -> None:
        self.config = config
        self.store = store
        self.boot_id = boot_id
        self.observer = observer or SchedulerObserver()  # metrics listen here
        self.pool = pool or make_pool(config)  # where children run (this machine, or a Ray cluster)
        self.slots = [Slot(device) for device in self.pool.slot_devices()]
        self._wake = asyncio.Event()
        self._stopping = False
        self._tasks: list[asyncio.Task] = []
        self._timers: set[asyncio.TimerHandle] = set()

    # --- lifecycle --------------------------------------------------------------------------------

    async def start(self, *, dispatch: bool = True, watchdog: bool = True) -> None:
        """Recover jobs orphaned by an earlier boot, then start dispatching and watching."""
        await self.pool.start()
        self.match_slots()
        counts = await recover_orphans(self.store, self.boot_id)
        if any(counts.values()):
            log.info("boot recovery", **counts)
        tidied = await tidy_all_finished(self.store, self.config)  # what a crash left before tidying
        if tidied:
            log.info("work folders tidied", jobs=tidied, retention=self.config.work_retention)
        if dispatch:
            if self.pool.warm_trainers:
                await self._start_warm_trainers()
            self._tasks.append(asyncio.create_task(self._dispatch_loop(), name="gpjobs-dispatch"))
        if watchdog:
            self._tasks.append(asyncio.create_task(self._watchdog_loop(), name="gpjobs-watchdog"))
        self.submitted()

    async def _start_warm_trainers(self) -> None:
        assert self.config.jobs_dir is not None
        for index, slot in enumerate(self.slots):
            slot.warm = WarmTrainer(
                self.config.trainer_command,
                device=slot.device,
                threads=self.config.child_threads,
                cwd=self.config.jobs_dir,
                log_path=self.config.data_dir / "logs" / f"warm-{index}-{slot.device}.log",
            )
            await slot.warm.start()

    async def stop(self, grace_s: float | None = None) -> None:
        """Graceful shutdown: stop claiming, SIGTERM running children so they checkpoint, requeue their
        jobs without spending an attempt, SIGKILL whatever is still alive after the grace period."""
        self._stopping = True
        for timer in self._timers:
            timer.cancel()
        # Let the dispatch loop finish its current pass rather than cancelling it: a claim cancelled while
        # its UPDATE is queued still commits, and the job would sit Executing with no run to requeue it.
        self._wake.set()
        for task in self._tasks:
            if task.get_name() != "gpjobs-dispatch":
                task.cancel()
        done, pending = await asyncio.wait(self._tasks, timeout=10) if self._tasks else (set(), set())
        for task in pending:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        grace = self.config.shutdown_grace_s if grace_s is None else grace_s
        running = [slot for slot in self.slots if slot.task is not None and not slot.task.done()]
        for slot in running:
            assert slot.run is not None
            slot.run.stop(STOP_SHUTDOWN, grace)
        if running:
            # The kill timer inside each run fires after `grace`; give the settle a moment beyond it.
            done, pending = await asyncio.wait([s.task for s in running if s.task], timeout=grace + 5)
            for task in pending:
                task.cancel()
        for slot in self.slots:
            if slot.warm is not None:
                await slot.warm.close()
        await self.pool.close()
        log.info("scheduler stopped", interrupted=len(running))

    # --- queue ------------------------------------------------------------------------------------

    def submitted(self) -> None:
        """Wake the dispatch loop (a job was created or a slot freed)."""
        self._wake.set()

    def wake_at(self, delay_s: float) -> None:
        """Wake the dispatch loop after `delay_s` (a retry's backoff ends then)."""
        if self._stopping:
            return
        loop = asyncio.get_running_loop()
        handle = loop.call_later(max(0.0, delay_s) + 0.01, self._wake.set)
        self._timers.add(handle)

    def running(self, job_id: str) -> JobRun | None:
        for slot in self.slots:
            if slot.run is not None and slot.run.job_id == job_id and slot.task and not slot.task.done():
                return slot.run
        return None

    async def _dispatch_loop(self) -> None:
        while not self._stopping:
            self._wake.clear()
            try:
                await self.dispatch_once()
            except Exception:  # a store hiccup must not end dispatching for the life of the server
                log.exception("dispatch failed")
            timeout = await self._next_wake_s()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)

    async def _next_wake_s(self) -> float:
        due = await self.store.next_run_after()
        if due is None:
            return 30.0
        return min(30.0, max(0.05, (due - now_ms()) / 1000))

    def match_slots(self) -> None:
        """Follow the pool's slots (a Ray cluster grows and shrinks): add the new ones, drop idle ones that went."""
        wanted = self.pool.slot_devices()
        if [slot.device for slot in self.slots] == wanted:
            return
        busy = [slot for slot in self.slots if slot.task is not None and not slot.task.done()]
        idle = [slot for slot in self.slots if slot not in busy]
        slots = list(busy)
        for device in wanted[len(busy) :]:
            reuse = next((slot for slot in idle if slot.device == device), None)
            slots.append(reuse if reuse is not None else Slot(device))
            if reuse is not None:
                idle.remove(reuse)
        self.slots = slots
        log.info("slots", count=len(slots), devices=sorted(set(wanted)))

    async def dispatch_once(self) -> list[Job]:
        """Claim a job for every free slot (FIFO) and start its run; returns the claimed jobs."""
        self.match_slots()
        claimed = []
        for slot in self.slots:
            if self._stopping:
                break
            if slot.task is not None and not slot.task.done():
                continue
            job = await self.store.claim_next_job(slot.device, self.boot_id)
            if job is None:
                break
            claimed.append(job)
            self.observer.job_claimed(job)
            run = JobRun(
                self.store,
                self.config,
                job,
                slot.device,
                wake_at=self.wake_at,
                warm=slot.warm,
                observer=self.observer,
                pool=self.pool,
            )
            slot.run = run
            slot.task = asyncio.create_task(self._run_slot(slot, run), name=f"gpjobs-job-{job.job_id}")
        if not self._stopping and all(slot.task is not None and not slot.task.done() for slot in self.slots):
            await self.store.mark_waiting()  # whatever is still queued now waits for a slot
        return claimed

    async def _run_slot(self, slot: Slot, run: JobRun) -> None:
        started = time.monotonic()
        try:
            await run.run()
        finally:
            self.submitted()  # the slot is free: look for the next job
            with contextlib.suppress(Exception):  # counting must never cost the slot
                job = await self.store.get_job(run.job_id)
                self.observer.attempt_ended(job or run.job, slot.device, time.monotonic() - started)

    # --- cancel -----------------------------------------------------------------------------------

    async def cancel(self, job_id: str) -> Job | None:
        """Queued -> Cancelled now; Executing -> Cancelling + SIGTERM (SIGKILL after cancel_grace_s), then
        Cancelled when the child is gone. A finished job is returned unchanged; None if unknown."""
        job, changed = await self.store.request_cancel(job_id)
        if job is not None and changed and job.status is JobStatus.CANCELLED:
            await tidy_finished(self.store, self.config, job_id)  # a requeued job may hold a checkpoint
        if job is None or not changed or job.status is not JobStatus.CANCELLING:
            return job
        run = self.running(job_id)
        if run is not None:
            run.stop(STOP_CANCEL, self.config.cancel_grace_s)
        elif job.boot_id != self.boot_id:
            # Nobody in this process supervises it (orphan not yet recovered): nothing to signal.
            job = await self.store.transition(
                job_id,
                JobStatus.CANCELLED,
                sources={JobStatus.CANCELLING},
                messages=[(MessageType.INFORMATIVE, texts.CANCEL_COMPLETE)],
            )
            await tidy_finished(self.store, self.config, job_id)
        return job

    # --- watchdog ---------------------------------------------------------------------------------

    async def _watchdog_loop(self) -> None:
        while not self._stopping:
            await asyncio.sleep(self.config.watchdog_interval_s)
            try:
                await self.run_watchdog_once()
            except Exception:
                log.exception("watchdog failed")

    async def run_watchdog_once(self) -> dict[str, int]:
        """One pass: kill stalled children (lost -> retried), stop jobs over max_runtime (-> TimedOut),
        prune finished jobs past retention. Deterministic: tests backdate a run's clocks and call it."""
        now = time.monotonic()
        counts = {"stalled": 0, "timed_out": 0, "pruned": 0}
        for slot in self.slots:
            if slot.run is None or slot.task is None or slot.task.done():
                continue
            run, supervisor = slot.run, slot.run.supervisor
            if supervisor.child is None or supervisor.stop_reason:
                continue
            if now - supervisor.last_seen_mono > self.config.heartbeat_timeout_s:
                run.log.warning("heartbeat lost", silent_s=round(now - supervisor.last_seen_mono, 1))
                run.stop(STOP_STALLED, 0)
                counts["stalled"] += 1
            elif self.config.max_runtime_s and now - supervisor.started_mono > self.config.max_runtime_s:
                run.stop(STOP_TIMEOUT, self.config.cancel_grace_s)
                counts["timed_out"] += 1
        if self.config.retention_days > 0:
            cutoff = now_ms() - int(self.config.retention_days * 86_400_000)
            for job_id in await self.store.prune_finished(cutoff):
                shutil.rmtree(work_dir(self.config, job_id), ignore_errors=True)
                counts["pruned"] += 1
        return counts
