"""Supervising one claimed job: write the spec, run the child, ingest its events, settle the outcome."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import signal
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog

from gpjobs.domain import InvalidTransition, ItemExists, Job, JobStatus, MessageType, now_ms
from gpjobs.scheduler.child import ChildProcess, describe_exit
from gpjobs.scheduler.publish import publish
from gpjobs.scheduler.retry import (FAILURE_HINTS, STOP_CANCEL, STOP_SHUTDOWN, STOP_STALLED, STOP_TIMEOUT, Outcome,
                                    backoff_s, classify)
from gpjobs.store.jobs import MessageInput
from gpjobs.tasks.train import TrainingRequest
from gpjobs.training.protocol import ChildRuntime, ExitCode, JobSpec

if TYPE_CHECKING:
    from gpjobs.scheduler.core import Scheduler

log = structlog.get_logger("gpjobs.scheduler")
S = JobStatus
INFO, WARN, ERROR = MessageType.INFORMATIVE, MessageType.WARNING, MessageType.ERROR
_URGENT_GAP_S = 0.25  # non-progress events are written at once unless the last write was this recent


class BadJob(Exception):
    """The job cannot even start (e.g. its pretrained item is gone): Failed without retry."""


class JobRun:
    """One attempt of one job on one slot."""

    def __init__(self, scheduler: "Scheduler", job: Job, device: str) -> None:
        self.scheduler = scheduler
        self.store = scheduler.store
        self.config = scheduler.config
        self.job = job
        self.device = device
        self.child: ChildProcess | None = None
        self.stop_reason: str | None = None
        self.started_mono = time.monotonic()
        self.last_seen_mono = time.monotonic()  # last event of any kind (the heartbeat watchdog reads it)
        self.published = False
        self.failure: dict[str, Any] | None = None  # the child's `failed` event
        self.checkpoint_epoch = job.checkpoint_epoch
        self._pending: list[MessageInput] = []
        self._progress: float | None = None
        self._dirty = False
        self._last_flush = 0.0
        self._kill_task: asyncio.Task | None = None
        self.log = log.bind(job_id=job.job_id, device=device)

    @property
    def job_id(self) -> str:
        return self.job.job_id

    @property
    def work_dir(self) -> Path:
        assert self.config.jobs_dir is not None
        return self.config.jobs_dir / self.job.job_id

    # --- control (called from the scheduler, the watchdog, cancel and shutdown) -------------------

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
        if self.child is not None and self.child.proc.returncode is None:
            self.log.warning("child ignored SIGTERM; killing it", grace_s=grace_s)
            self.child.signal_group(signal.SIGKILL)

    # --- the attempt ------------------------------------------------------------------------------

    async def run(self) -> None:
        """Run the attempt to its end; never raises (a supervisor bug fails the job, not the server)."""
        try:
            await self._run()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # pragma: no cover - defensive: keep the slot alive
            self.log.exception("supervisor error")
            await self._settle_failed(f"Internal server error while supervising the job: {exc}")
        finally:
            if self._kill_task is not None:
                self._kill_task.cancel()

    async def _run(self) -> None:
        try:
            spec_path = await self._write_spec()
        except BadJob as exc:
            await self._settle_failed(str(exc))
            return
        if self.stop_reason is not None:  # cancelled (or shut down) between claim and spawn
            await self._settle(Outcome.CANCELLED if self.stop_reason == STOP_CANCEL else
                               classify(0, published=False, stop_reason=self.stop_reason), rc=None)
            return
        self.child = await ChildProcess.spawn(self.config.trainer_command, spec_path, device=self.device,
                                              threads=self.config.child_threads,
                                              log_path=self.work_dir / "logs" / f"attempt-{self.job.attempts}.log")
        self.log.info("child started", pid=self.child.pid, attempt=self.job.attempts)
        await self.store.record_progress(self.job_id, pid=self.child.pid, heartbeat_ms=now_ms())
        if self.stop_reason is not None:  # a cancel that landed while spawning
            self.stop(self.stop_reason, self.config.cancel_grace_s)
        flusher = asyncio.create_task(self._flush_periodically())
        try:
            async for event in self.child.events():
                self.last_seen_mono = time.monotonic()
                await self._on_event(event)
            rc = await self.child.wait()
        finally:
            flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await flusher
        await self._flush()
        self.log.info("child exited", rc=rc, stop_reason=self.stop_reason, published=self.published)
        reported = None
        if self.failure is not None:
            with contextlib.suppress(TypeError, ValueError):
                reported = int(self.failure.get("exit_code"))
        await self._settle(classify(rc, published=self.published, stop_reason=self.stop_reason, reported=reported),
                           rc=rc)

    async def _write_spec(self) -> Path:
        """The child's input: the job's stored request, and how this attempt runs it."""
        try:
            request = TrainingRequest.from_json_dict(self.job.spec)
        except ValueError as exc:
            raise BadJob(f"This job cannot run on this server version: {exc}. Submit it again.") from None
        pretrained = request.pretrained
        if pretrained is not None and pretrained.item_id:
            item = await self.store.get_item(pretrained.item_id)  # the item may be gone or replaced since submit
            if item is None or not Path(item.path).is_file():
                raise BadJob(f"pretrained_model: item {pretrained.item_id} no longer exists; "
                             "submit again with an existing model item")
            request = request.replace(pretrained=dataclasses.replace(pretrained, path=item.path))
        runtime = ChildRuntime(
            device="cuda:0" if self.device.startswith("cuda:") else "cpu",  # CUDA_VISIBLE_DEVICES masks the rest
            weights_dir=str(self.config.weights_dir) if self.config.weights_dir else None,
            missing_weights=self.config.missing_weights, num_threads=self.config.child_threads, resume=True,
            heartbeat_seconds=max(0.5, min(5.0, self.config.heartbeat_timeout_s / 4)))
        spec = JobSpec(job_id=self.job_id, work_dir=str(self.work_dir), request=request, runtime=runtime)
        self.work_dir.mkdir(parents=True, exist_ok=True)
        path = self.work_dir / "spec.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(spec.to_json(), encoding="utf-8")
        tmp.replace(path)
        return path

    # --- events -----------------------------------------------------------------------------------

    async def _on_event(self, event: dict[str, Any]) -> None:
        kind = event.get("type")
        if kind == "heartbeat":
            self._dirty = True
        elif kind == "progress":
            first = self._progress is None
            with contextlib.suppress(TypeError, ValueError):
                self._progress = max(0.0, min(100.0, float(event.get("percent"))))
                self._dirty = True
            if first:  # the first sign of training shows at once; later ones are batched
                await self._flush()
        elif kind == "started":
            resumed = int(event.get("resumed_from_epoch") or 0)
            if resumed:
                self._pending.append((INFO, f"Resumed training from the checkpoint of epoch {resumed}."))
            self._dirty = True
            await self._flush()
        elif kind == "message":
            self._pending.append((MessageType.from_level(str(event.get("level"))), str(event.get("text", ""))))
        elif kind == "epoch":
            self._pending.append((INFO, format_epoch(event)))
        elif kind == "checkpoint":
            with contextlib.suppress(TypeError, ValueError):
                self.checkpoint_epoch = int(event.get("epoch"))
            self._dirty = True
        elif kind == "failed":
            self.failure = event
        elif kind == "result":
            await self._flush()
            await self._publish(event)
        if self._pending and time.monotonic() - self._last_flush >= _URGENT_GAP_S:
            await self._flush()

    async def _publish(self, event: dict[str, Any]) -> None:
        try:
            self.job = await publish(self.store, self.config, self.job, event)
            self.published = True
            self.log.info("published", result=self.job.result)
        except ItemExists as exc:
            self.failure = {"exit_code": int(ExitCode.BAD_INPUT), "text": str(exc)}
        except InvalidTransition as exc:
            self.log.info("not published: job changed state", current=str(exc.current))
        except OSError as exc:
            self.failure = {"exit_code": int(ExitCode.ERROR), "text": f"could not publish the package: {exc}"}

    async def _flush_periodically(self) -> None:
        while True:
            await asyncio.sleep(self.config.progress_flush_s)
            await self._flush()

    async def _flush(self) -> None:
        """Write batched messages, progress, heartbeat and checkpoint epoch in one transaction."""
        if not self._pending and not self._dirty:
            return
        pending, self._pending, self._dirty = self._pending, [], False
        self._last_flush = time.monotonic()
        await self.store.record_progress(self.job_id, messages=pending, progress=self._progress,
                                         heartbeat_ms=now_ms(), checkpoint_epoch=self.checkpoint_epoch)

    # --- outcome ----------------------------------------------------------------------------------

    async def _settle(self, outcome: Outcome, rc: int | None) -> None:
        job_id, now = self.job_id, now_ms()
        active = {S.EXECUTING, S.CANCELLING}
        try:
            if outcome is Outcome.SUCCEEDED:
                return
            current = await self.store.get_job(job_id)
            if current is not None and current.status is S.CANCELLING:
                outcome = Outcome.CANCELLED  # once cancel was requested any ending means cancelled
            if outcome is Outcome.CANCELLED:
                await self.store.transition(job_id, S.CANCELLED, sources=active, finished_ms=now, progress=None,
                                            messages=[(INFO, "Cancel complete.")])
            elif outcome is Outcome.TIMED_OUT:
                text = f"The job ran longer than max_runtime_s ({self.config.max_runtime_s:g} s) and was stopped."
                await self.store.transition(job_id, S.TIMED_OUT, sources=active, finished_ms=now, error=text,
                                            progress=None, messages=[(ERROR, text)])
            elif outcome is Outcome.INTERRUPTED:
                epoch = self.checkpoint_epoch or 0
                await self.store.transition(
                    job_id, S.SUBMITTED, sources=active, attempts=max(0, self.job.attempts - 1),
                    interruptions=self.job.interruptions + 1, run_after_ms=0, pid=None,
                    checkpoint_epoch=self.checkpoint_epoch,
                    messages=[(WARN, f"Interrupted by a server shutdown after epoch {epoch}; the job is queued "
                                     "again and will resume from its checkpoint.")])
            elif outcome is Outcome.LOST:
                await self._retry_or_fail(self._lost_reason(rc))
            else:
                await self._settle_failed(self._failure_text(rc))
        except InvalidTransition as exc:
            self.log.info("outcome not applied: job changed state", outcome=outcome.value, current=str(exc.current))

    def _lost_reason(self, rc: int | None) -> str:
        if self.stop_reason == STOP_STALLED:
            return f"no heartbeat from the training process for {self.config.heartbeat_timeout_s:g} s"
        if rc == ExitCode.LIFELINE_LOST:
            return "the training process lost its connection to the server"
        return f"the training process was {describe_exit(rc)}" if rc is not None else "the training process was lost"

    async def _retry_or_fail(self, reason: str) -> None:
        job, epoch = self.job, self.checkpoint_epoch or 0
        if job.attempts >= job.max_attempts:
            await self._settle_failed(f"Lost: {reason}; all {job.max_attempts} attempts used.")
            return
        delay = backoff_s(job.attempts, self.config.retry_backoff_s)
        await self.store.transition(
            job.job_id, S.SUBMITTED, sources={S.EXECUTING}, run_after_ms=now_ms() + int(delay * 1000), pid=None,
            checkpoint_epoch=self.checkpoint_epoch,
            messages=[(WARN, f"Lost: {reason}. Retrying from epoch {epoch} in {delay:.0f} s "
                             f"(attempt {job.attempts + 1} of {job.max_attempts}).")])
        self.scheduler.wake_at(delay)

    def _failure_text(self, rc: int | None) -> str:
        if self.failure and self.failure.get("text"):
            text = str(self.failure["text"])
            details = [str(d) for d in self.failure.get("details") or []]
            return text + ("\n" + "\n".join(details) if details else "")
        if rc == 0:
            return "The training process ended without producing a model package."
        hint = FAILURE_HINTS.get(ExitCode(rc)) if rc in ExitCode._value2member_map_ else None
        tail = self.child.stderr_tail() if self.child else ""
        text = f"Training failed ({describe_exit(rc) if rc is not None else 'not started'})"
        text += f": {hint}." if hint else "."
        return text + (f"\n{tail}" if tail else "")

    async def _settle_failed(self, text: str) -> None:
        await self.store.transition(self.job_id, S.FAILED, sources={S.EXECUTING, S.CANCELLING}, finished_ms=now_ms(),
                                    error=text, progress=None,
                                    messages=[(ERROR, text), (ERROR, "TrainDeepLearningModel failed.")])


def format_epoch(event: dict[str, Any]) -> str:
    """One per-epoch line, like arcgis.learn's fit table: epoch, losses, metrics, time."""
    parts = [f"Epoch {event.get('epoch')}/{event.get('max_epochs')}"]
    for key in ("train_loss", "valid_loss"):
        if isinstance(event.get(key), (int, float)):
            parts.append(f"{key} {event[key]:.4f}")
    for key, value in (event.get("metrics") or {}).items():
        if isinstance(value, (int, float)):
            parts.append(f"{key} {value:.4f}")
    if isinstance(event.get("seconds"), (int, float)):
        parts.append(f"time {event['seconds']:.1f} s")
    line = ", ".join(parts)
    return line + (" (best so far)" if event.get("best") else "")
