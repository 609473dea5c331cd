"""What the scheduler reports while it works, for whoever counts (the /metrics endpoint, web/metrics.py).

The scheduler calls these hooks; the base class ignores them, so the scheduler runs the same with or without a
listener and never imports one.
"""

from __future__ import annotations

from gpjobs.domain import Job


class SchedulerObserver:
    """The hooks; each is called on the event loop and must return quickly without raising."""

    def job_claimed(self, job: Job) -> None:
        """A slot claimed `job` (its attempts, interruptions and server_crashes say whether it ran before)."""

    def child_started(self, job: Job, device: str, *, warm: bool) -> None:
        """The job's child started: handed to the slot's warm child, or spawned cold."""

    def epoch_done(self, job: Job) -> None:
        """The job's child finished an epoch."""

    def attempt_ended(self, job: Job, device: str, busy_s: float) -> None:
        """The attempt is over (`job` as it is now: finished, or queued again) after `busy_s` on the slot."""
