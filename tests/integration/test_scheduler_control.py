"""Cancel, timeouts, heartbeat loss, graceful shutdown and boot recovery, with the fake child."""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import time

import pytest

from gpjobs import messages as texts
from gpjobs.domain import SERVER_CRASH_LIMIT, Job, JobStatus, MessageType, new_job_id
from gpjobs.scheduler import Scheduler
from gpjobs.scheduler.recovery import recover_orphans

S = JobStatus
TERMINAL = (S.SUCCEEDED, S.FAILED, S.TIMED_OUT, S.CANCELLED)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return not open(f"/proc/{pid}/stat").read().split(")")[1].split()[0] == "Z"


async def test_cancel_queued_job_is_immediate(harness):
    scheduler = await harness.start()
    running = await harness.submit("slow", max_epochs=20)
    queued = await harness.submit("ok")
    await harness.wait_running(running.job_id)
    job = await scheduler.cancel(queued.job_id)
    assert job.status is S.CANCELLED
    assert (await harness.descriptions(queued.job_id))[-1] == "Cancel complete."
    assert harness.runs(queued.job_id) == []


@pytest.mark.slow  # a slow child runs out first
async def test_job_queued_behind_a_busy_slot_waits_then_runs(harness):
    scheduler = await harness.start()
    running = await harness.submit("slow", max_epochs=3)
    await harness.wait_running(running.job_id)
    queued = await harness.submit("ok")
    scheduler.submitted()
    waiting = await harness.wait(queued.job_id, S.WAITING, timeout=10)
    assert waiting.status is S.WAITING  # protocol.md §3: queued for a worker
    done = await harness.wait(queued.job_id, *TERMINAL, timeout=30)
    assert done.status is S.SUCCEEDED and len(harness.runs(queued.job_id)) == 1


async def test_cancel_running_job_sigterms_the_child(harness):
    scheduler = await harness.start()
    job = await harness.submit("slow", max_epochs=20)
    run = await harness.wait_running(job.job_id)
    pid = run.supervisor.child.pid
    assert (await scheduler.cancel(job.job_id)).status is S.CANCELLING
    assert (await scheduler.cancel(job.job_id)).status is S.CANCELLING  # twice: idempotent
    done = await harness.wait(job.job_id, *TERMINAL, timeout=10)
    assert done.status is S.CANCELLED and done.finished_ms
    assert run.supervisor.child.proc.returncode == 5  # honoured SIGTERM (ExitCode.CANCELLED), no SIGKILL needed
    assert not alive(pid)
    assert (await harness.descriptions(job.job_id))[-1] == "Cancel complete."
    # cancel of a finished job: a no-op that returns it
    assert (await scheduler.cancel(job.job_id)).status is S.CANCELLED


async def test_cancel_escalates_to_sigkill_when_sigterm_is_ignored(harness):
    scheduler = await harness.start()
    job = await harness.submit("ignore-term", max_epochs=1)
    run = await harness.wait_running(job.job_id)
    started = time.monotonic()
    await scheduler.cancel(job.job_id)
    done = await harness.wait(job.job_id, *TERMINAL, timeout=10)
    assert done.status is S.CANCELLED
    assert run.supervisor.child.proc.returncode == -9
    assert time.monotonic() - started >= harness.config.cancel_grace_s * 0.9


async def test_heartbeat_loss_kills_and_retries_then_fails(make_harness):
    h = make_harness(max_attempts=2)
    scheduler = await h.start()
    job = await h.submit("hang")
    for attempt in (1, 2):
        run = await h.wait_running(job.job_id)
        while h.store and (await h.store.get_job(job.job_id)).attempts != attempt:
            await asyncio.sleep(0.02)
        run.supervisor.last_seen_mono -= h.config.heartbeat_timeout_s + 1  # backdate instead of sleeping
        assert (await scheduler.run_watchdog_once())["stalled"] == 1
        if attempt == 1:
            await h.wait(job.job_id, S.SUBMITTED, S.EXECUTING)
            while len(h.runs(job.job_id)) < 2:
                await asyncio.sleep(0.02)
    done = await h.wait(job.job_id, *TERMINAL)
    assert done.status is S.FAILED and "no heartbeat" in done.error and done.attempts == 2


async def test_max_runtime_ends_timed_out(make_harness):
    h = make_harness(max_runtime_s=0.2)
    scheduler = await h.start()
    job = await h.submit("slow", max_epochs=50)
    run = await h.wait_running(job.job_id)
    await asyncio.sleep(0.3)
    assert (await scheduler.run_watchdog_once())["timed_out"] == 1
    done = await h.wait(job.job_id, *TERMINAL)
    assert done.status is S.TIMED_OUT and "max_runtime_s" in done.error and done.attempts == 1
    assert run.supervisor.child.proc.returncode is not None


@pytest.mark.slow  # two children, seconds
async def test_graceful_shutdown_requeues_without_spending_an_attempt_then_resumes(make_harness, monkeypatch):
    monkeypatch.setenv("GPJOBS_FAKE_EPOCH_S", "0.3")
    h = make_harness()
    scheduler = await h.start("boot-1")
    job = await h.submit("slow", max_epochs=4)
    await h.wait_running(job.job_id)
    while (await h.store.get_job(job.job_id)).checkpoint_epoch is None:
        await asyncio.sleep(0.02)
    await scheduler.stop(grace_s=3)
    h.scheduler = None
    stopped = await h.store.get_job(job.job_id)
    assert stopped.status is S.SUBMITTED and stopped.attempts == 0 and stopped.interruptions == 1
    assert any("server shutdown" in t for t in await h.descriptions(job.job_id))
    await h.start("boot-2")
    done = await h.wait(job.job_id, *TERMINAL)
    assert done.status is S.SUCCEEDED and done.attempts == 1
    assert harness_resumed(h, job.job_id) >= 1


def harness_resumed(h, job_id: str) -> int:
    return h.runs(job_id)[-1]["resumed_from_epoch"]


async def seed(store, status, attempts, boot, **fields) -> Job:
    job = Job(
        job_id=new_job_id(),
        owner="u",
        status=status,
        model_type="UNET",
        attempts=attempts,
        max_attempts=3,
        boot_id=boot,
        device="cpu",
        **fields,
    )
    return await store.create_job(job, [])


async def test_boot_recovery_table(harness):
    """Orphans of an older boot: requeued with their attempt given back (a server crash is not the job's
    doing) until SERVER_CRASH_LIMIT crashes, then Failed; Cancelling -> Cancelled; the current boot's jobs are
    untouched (anchors.md T1)."""
    store = harness.store
    resumable = await seed(store, S.EXECUTING, 1, "old", checkpoint_epoch=4)
    last_attempt = await seed(store, S.EXECUTING, 3, "old")
    crash_looper = await seed(store, S.EXECUTING, 1, "old", server_crashes=SERVER_CRASH_LIMIT)
    cancelling = await seed(store, S.CANCELLING, 1, "old", cancel_requested_ms=1)
    current = await seed(store, S.EXECUTING, 1, "now")
    scheduler = Scheduler(harness.config, store, "now")
    await scheduler.start(dispatch=False, watchdog=False)
    requeued = await store.get_job(resumable.job_id)
    assert (requeued.status, requeued.attempts, requeued.server_crashes) == (S.SUBMITTED, 0, 1)
    assert requeued.checkpoint_epoch == 4  # kept for the child; the message does not promise it
    assert await harness.descriptions(resumable.job_id) == [texts.interrupted_by_crash(1, SERVER_CRASH_LIMIT)]
    requeued = await store.get_job(last_attempt.job_id)
    assert (requeued.status, requeued.attempts) == (S.SUBMITTED, 2)
    failed = await store.get_job(crash_looper.job_id)
    assert failed.status is S.FAILED and f"more than the {SERVER_CRASH_LIMIT}" in failed.error
    assert [m.type for m in await store.get_messages(crash_looper.job_id)] == [MessageType.ERROR] * 2
    assert (await store.get_job(cancelling.job_id)).status is S.CANCELLED
    assert (await store.get_job(current.job_id)).status is S.EXECUTING
    await scheduler.stop(grace_s=0)


async def test_server_crashes_do_not_spend_attempts_but_are_bounded(store):
    """Issue 11: three server crashes during one job failed it as 'all attempts used'."""
    job = await seed(store, S.SUBMITTED, 0, None)
    for boot in range(1, SERVER_CRASH_LIMIT + 1):
        claimed = await store.claim_next_job("cpu", f"boot-{boot}")
        assert (claimed.job_id, claimed.attempts) == (job.job_id, 1)
        assert await recover_orphans(store, f"boot-{boot + 1}") == {"requeued": 1, "failed": 0, "cancelled": 0}
    texts_seen = [m.description for m in await store.get_messages(job.job_id)]
    assert texts_seen.count(texts.EXECUTING) == 1  # a rerun after a crash is not a new start
    await store.claim_next_job("cpu", "boot-last")
    assert await recover_orphans(store, "boot-after") == {"requeued": 0, "failed": 1, "cancelled": 0}
    failed = await store.get_job(job.job_id)
    assert failed.status is S.FAILED and failed.error == texts.crash_limit_reached(
        SERVER_CRASH_LIMIT + 1, SERVER_CRASH_LIMIT
    )


async def test_resume_message_names_the_checkpoint_the_child_loaded(harness):
    """Issue 11: "Resumed from epoch N" was wrong in 6 of 14 kill trials. The store's checkpoint_epoch lags
    the disk when the server dies between the child's checkpoint and the next flush; the message must say
    what the child really resumed from."""
    job = await harness.submit("ok", max_epochs=3)
    await harness.store.claim_next_job("cpu", "crashed-boot")
    await harness.store.record_progress(job.job_id, checkpoint_epoch=1)  # acknowledged before the crash
    work = harness.config.jobs_dir / job.job_id
    work.mkdir(parents=True)
    (work / "checkpoint.json").write_text(json.dumps({"epoch": 2}))  # on disk, never acknowledged
    await harness.start("boot-2")
    done = await harness.wait(job.job_id, *TERMINAL)
    assert harness.runs(job.job_id)[-1]["resumed_from_epoch"] == 2
    said = await harness.descriptions(job.job_id)
    assert not any("epoch 1" in t.lower() and "resum" in t.lower() for t in said), said
    assert texts.resumed_from(2) in said
    assert done.status is S.SUCCEEDED and done.attempts == 1


async def test_rerun_without_a_checkpoint_says_it_starts_over(harness):
    job = await harness.submit("ok", max_epochs=1)
    await harness.store.claim_next_job("cpu", "crashed-boot")
    await harness.start("boot-2")
    assert (await harness.wait(job.job_id, *TERMINAL)).status is S.SUCCEEDED
    said = await harness.descriptions(job.job_id)
    assert said.index(texts.STARTED_OVER) > said.index(texts.interrupted_by_crash(1, SERVER_CRASH_LIMIT))


async def test_watchdog_prunes_finished_jobs_past_retention(make_harness):
    h = make_harness(retention_days=1)
    scheduler = await h.start(watchdog=False)
    old = await h.wait((await h.submit("ok", max_epochs=1)).job_id, *TERMINAL)
    fresh = await h.wait((await h.submit("ok", max_epochs=1)).job_id, *TERMINAL)
    assert (h.config.jobs_dir / old.job_id).is_dir()

    def backdate() -> None:  # the first job's finish, by two days instead of waiting
        conn = sqlite3.connect(h.store.path)
        conn.execute("UPDATE jobs SET finished_ms = finished_ms - 172800000 WHERE job_id = ?", (old.job_id,))
        conn.commit()
        conn.close()

    # Off the event loop: a blocking connect waiting for the lock would stall the store's own transaction in
    # flight (the warm child's bookkeeping), which needs the loop to COMMIT: "database is locked" after 5 s.
    await asyncio.to_thread(backdate)
    assert (await scheduler.run_watchdog_once())["pruned"] == 1
    h.store.db.generation += 1  # the backdating bypassed the store (and its read cache)
    assert await h.store.get_job(old.job_id) is None and not (h.config.jobs_dir / old.job_id).exists()
    assert (await h.store.get_job(fresh.job_id)).status is S.SUCCEEDED
    assert len(await h.store.list_items("alice")) == 2  # published items outlive their jobs
