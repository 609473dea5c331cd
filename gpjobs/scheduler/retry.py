"""How a finished child is classified, and when a lost job runs again (architecture.md, Failure classes)."""

from __future__ import annotations

import random
from enum import Enum

from gpjobs.training.protocol import ExitCode


class Outcome(str, Enum):
    SUCCEEDED = "succeeded"
    FAILED = "failed"  # deterministic: bad input, NaN, OOM, exception -> no retry
    LOST = "lost"  # killed by a signal we did not send, lifeline lost, heartbeat stall -> retry
    CANCELLED = "cancelled"
    TIMED_OUT = "timed_out"
    INTERRUPTED = "interrupted"  # graceful server shutdown -> requeue without spending an attempt


# Why the supervisor itself stopped a child (set before it signals).
STOP_CANCEL, STOP_TIMEOUT, STOP_SHUTDOWN, STOP_STALLED = "cancel", "timeout", "shutdown", "stalled"

DETERMINISTIC = frozenset({ExitCode.ERROR, ExitCode.BAD_INPUT, ExitCode.NAN_LOSS, ExitCode.OUT_OF_MEMORY})


def classify(rc: int, *, published: bool, stop_reason: str | None, reported: int | None = None) -> Outcome:
    """Map (exit status, what we asked for, the exit code the child reported in its `failed` event) to an
    outcome. A committed publish always wins; a child that reported a deterministic failure is not
    retried even if it then died by a signal on its way out (e.g. SIGABRT at interpreter shutdown)."""
    if published:
        return Outcome.SUCCEEDED
    if stop_reason == STOP_CANCEL:
        return Outcome.CANCELLED
    if stop_reason == STOP_TIMEOUT:
        return Outcome.TIMED_OUT
    if stop_reason == STOP_SHUTDOWN:
        return Outcome.INTERRUPTED
    if stop_reason == STOP_STALLED:
        return Outcome.LOST
    if reported in DETERMINISTIC:
        return Outcome.FAILED
    if rc < 0 or rc in (ExitCode.LIFELINE_LOST, ExitCode.CANCELLED):
        return Outcome.LOST  # a signal we did not send, or someone else stopped it: resumable
    return Outcome.FAILED  # includes rc 0 without a result: the child broke its contract


def backoff_s(attempt: int, base: float, cap: float = 300.0) -> float:
    """min(base * 2^(attempt-1), cap) +- 10 % jitter, so a crash loop does not spin."""
    delay = min(base * (2 ** max(0, attempt - 1)), cap)
    return max(0.0, delay * random.uniform(0.9, 1.1))
