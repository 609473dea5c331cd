"""The supervisor's event ingestion against a real store, event by event (no child process)."""

from __future__ import annotations

import structlog

from gpjobs import messages as texts
from gpjobs.domain import JobStatus
from gpjobs.scheduler.supervisor import ChildSupervisor


async def supervisor_for(harness, **config) -> ChildSupervisor:
    job = await harness.submit("ok", max_epochs=3)
    claimed = await harness.store.claim_next_job("cpu", "boot-1")
    assert claimed.job_id == job.job_id

    async def no_result(event):
        raise AssertionError(f"unexpected result {event}")

    return ChildSupervisor(
        harness.store,
        harness.config,
        claimed,
        "cpu",
        harness.config.jobs_dir / job.job_id,
        structlog.get_logger("test"),
        on_result=no_result,
    )


async def test_checkpoint_is_acknowledged_with_the_epoch_lines_before_it(make_harness):
    """Issue 11: an epoch's line was lost in 2 of 8 fast-epoch kill trials. The child resumes after the last
    checkpoint, so once checkpoint_epoch N is recorded epoch N's line must be stored too; and it is recorded
    at once, not at the next periodic flush (a crash in between repeated an epoch the messages had shown)."""
    harness = make_harness(progress_flush_s=3600)  # no periodic flush: only what the events themselves write
    supervisor = await supervisor_for(harness)
    job_id = supervisor.job.job_id
    await supervisor.on_event({"type": "started", "resumed_from_epoch": 0})  # written at once
    await supervisor.on_event({"type": "epoch", "epoch": 1, "max_epochs": 3, "train_loss": 0.5})
    await supervisor.on_event({"type": "checkpoint", "epoch": 1})
    # The server may die right here (kill -9): whatever the store holds now is all there will be.
    stored = await harness.store.get_job(job_id)
    assert stored.checkpoint_epoch == 1
    assert texts.epoch_line({"epoch": 1, "max_epochs": 3, "train_loss": 0.5}) in await harness.descriptions(job_id)


async def test_started_event_names_the_checkpoint_actually_loaded(make_harness):
    harness = make_harness(progress_flush_s=3600)
    supervisor = await supervisor_for(harness)
    await supervisor.on_event({"type": "started", "resumed_from_epoch": 2})
    said = await harness.descriptions(supervisor.job.job_id)
    assert said[-1] == texts.resumed_from(2)
    assert (await harness.store.get_job(supervisor.job.job_id)).status is JobStatus.EXECUTING
