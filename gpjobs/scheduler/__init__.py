"""Scheduler: claim -> dispatch loop, one training child per slot, supervision, recovery, watchdog."""

from __future__ import annotations

from gpjobs.scheduler.core import Scheduler, Slot

__all__ = ["Scheduler", "Slot"]
