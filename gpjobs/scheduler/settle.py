"""Ending one attempt: publish the package its child made, or apply what the ending means to the job
(architecture.md, Failure classes): Cancelled, TimedOut, requeued after a shutdown, retried, or Failed."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from structlog.typing import FilteringBoundLogger

from gpjobs import messages as texts
from gpjobs.config import Config
from gpjobs.domain import (
    InvalidTransition,
    ItemExists,
    ItemNotFound,
    Job,
    JobStatus,
    MessageType,
    now_ms,
)
from gpjobs.scheduler.publish import OutputRefused, publish
from gpjobs.scheduler.publish_inference import publish_inference
from gpjobs.scheduler.retry import STOP_STALLED, Outcome, backoff_s, classify
from gpjobs.store import Store
from gpjobs.tasks.registry import TRAIN, task_named
from gpjobs.training.protocol import ExitCode

S = JobStatus
INFO, WARN, ERROR = MessageType.INFORMATIVE, MessageType.WARNING, MessageType.ERROR


@dataclass(frozen=True)
class AttemptEnd:
    """What the supervisor knows once its child is gone (or was never started)."""

    rc: int | None  # exit status; None when no child was started
    stop_reason: str | None  # why the supervisor stopped it (retry.STOP_*), if it did
    checkpoint_epoch: int | None  # the last checkpoint the child acknowledged
    failure: dict[str, Any] | None = None  # the child's `failed` event
    log_tail: str = ""  # the end of the child's stderr log


class Settlement:
    """Publishes a `result` and settles the attempt's ending with one guarded status change."""

    def __init__(
        self, store: Store, config: Config, job: Job, log: FilteringBoundLogger, wake_at: Callable[[float], None]
    ) -> None:
        self.store = store
        self.config = config
        self.job = job
        self.log = log
        self.wake_at = wake_at  # the dispatcher looks again when a retry's backoff ends
        self.published = False
        self.refusal: dict[str, Any] | None = None  # a publish that could not be done, as a `failed` event
        self.trains = task_named(job.task).kind == TRAIN  # else an inference task: its outputs, its words

    async def publish(self, event: dict[str, Any]) -> None:
        """Publish what a child's `result` event names (the job is Succeeded when this returns)."""
        try:
            publisher = publish if self.trains else publish_inference
            self.job = await publisher(self.store, self.config, self.job, event)
            self.published = True
            self.log.info("published", result=self.job.result)
        except (ItemExists, ItemNotFound, OutputRefused) as exc:
            self.refusal = {"exit_code": int(ExitCode.BAD_INPUT), "text": str(exc)}
        except InvalidTransition as exc:
            self.log.info("not published: job changed state", current=str(exc.current))
        except OSError as exc:
            self.refusal = {"exit_code": int(ExitCode.ERROR), "text": texts.publish_failed(exc)}

    async def settle(self, end: AttemptEnd) -> None:
        """Apply the attempt's outcome (retry.classify) to the job."""
        failure = self.refusal or end.failure
        reported = None
        if failure is not None:
            with contextlib.suppress(KeyError, TypeError, ValueError):
                reported = int(failure["exit_code"])
        outcome = classify(
            end.rc if end.rc is not None else 0,
            published=self.published,
            stop_reason=end.stop_reason,
            reported=reported,
        )
        if outcome is not Outcome.SUCCEEDED:
            await self._apply(outcome, end, failure)

    async def fail(self, text: str) -> None:
        """Failed without retry (the job cannot start, or supervising it broke); a requested cancel still wins."""
        await self._apply(Outcome.FAILED, AttemptEnd(rc=None, stop_reason=None, checkpoint_epoch=None), {"text": text})

    async def _apply(self, outcome: Outcome, end: AttemptEnd, failure: dict[str, Any] | None) -> None:
        job_id = self.job.job_id
        try:
            current = await self.store.get_job(job_id)
            if current is not None and current.status is S.CANCELLING:
                outcome = Outcome.CANCELLED  # once cancel was requested any ending means cancelled
            if outcome is Outcome.CANCELLED:
                await self.store.transition(
                    job_id, S.CANCELLED, sources={S.CANCELLING}, messages=[(INFO, texts.CANCEL_COMPLETE)]
                )
            elif outcome is Outcome.TIMED_OUT:
                text = texts.timed_out(self.config.max_runtime_s)
                await self.store.transition(job_id, S.TIMED_OUT, error=text, messages=[(ERROR, text)])
            elif outcome is Outcome.INTERRUPTED:
                await self.store.transition(
                    job_id,
                    S.SUBMITTED,
                    sources={S.EXECUTING},
                    attempts=max(0, self.job.attempts - 1),
                    interruptions=self.job.interruptions + 1,
                    run_after_ms=0,
                    checkpoint_epoch=end.checkpoint_epoch,
                    messages=[
                        (
                            WARN,
                            texts.interrupted_by_shutdown(end.checkpoint_epoch or 0)
                            if self.trains
                            else texts.interrupted_inference("a server shutdown"),
                        )
                    ],
                )
            elif outcome is Outcome.LOST:
                await self._retry_or_fail(self._lost_reason(end), end)
            else:
                await self._failed(self._failure_text(end, failure))
        except InvalidTransition as exc:
            self.log.info("outcome not applied: job changed state", outcome=outcome.value, current=str(exc.current))

    def _lost_reason(self, end: AttemptEnd) -> str:
        if end.failure and end.failure.get("lost_reason"):  # the pool knows better than the exit status (Ray)
            return str(end.failure["lost_reason"])
        if end.stop_reason == STOP_STALLED:
            return texts.no_heartbeat(self.config.heartbeat_timeout_s)
        if end.rc == ExitCode.LIFELINE_LOST:
            return texts.LIFELINE_LOST
        return texts.process_ended(end.rc) if end.rc is not None else texts.PROCESS_LOST

    async def _retry_or_fail(self, reason: str, end: AttemptEnd) -> None:
        job = self.job
        if job.attempts >= job.max_attempts:
            await self._failed(texts.lost_attempts_used(reason, job.max_attempts))
            return
        delay = backoff_s(job.attempts, self.config.retry_backoff_s)
        await self.store.transition(
            job.job_id,
            S.SUBMITTED,
            sources={S.EXECUTING},
            run_after_ms=now_ms() + int(delay * 1000),
            checkpoint_epoch=end.checkpoint_epoch,
            messages=[
                (
                    WARN,
                    texts.lost_retrying(reason, end.checkpoint_epoch or 0, delay, job.attempts + 1, job.max_attempts)
                    if self.trains
                    else texts.lost_retrying_blocks(reason, delay, job.attempts + 1, job.max_attempts),
                )
            ],
        )
        self.wake_at(delay)

    @staticmethod
    def _failure_text(end: AttemptEnd, failure: dict[str, Any] | None) -> str:
        if failure and failure.get("text"):
            text = str(failure["text"])
            details = [str(d) for d in failure.get("details") or []]
            return text + ("\n" + "\n".join(details) if details else "")
        if end.rc == 0:
            return texts.NO_PACKAGE
        return texts.training_failed(end.rc, end.log_tail)

    async def _failed(self, text: str) -> None:
        await self.store.transition(
            self.job.job_id, S.FAILED, error=text, messages=[(ERROR, text), (ERROR, texts.tool_failed(self.job.task))]
        )
