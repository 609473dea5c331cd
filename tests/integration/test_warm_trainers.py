"""Warm trainers (config.warm_trainers): each slot keeps one child started ahead; a claimed job is handed to it,
a fresh one replaces it once that job's child has exited, no child runs two jobs, and supervision (events, cancel,
kill -9, stall, lifeline) behaves as with a cold child. The fake child speaks the warm protocol
(tests/fakes/fake_trainer.py)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time

import pytest

from gpjobs.domain import JobStatus
from gpjobs.scheduler.child import kill_stray_group, runs_job
from gpjobs.training.protocol import ExitCode

S = JobStatus
TERMINAL = (S.SUCCEEDED, S.FAILED, S.TIMED_OUT, S.CANCELLED)


async def warm_ready(scheduler, timeout: float = 10.0) -> int:
    """The pid of slot 0's warm child once it has said it is ready."""
    warm = scheduler.slots[0].warm
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if warm._proc is not None and warm._ready is not None and warm._ready.done():
            return warm._proc.pid
        await asyncio.sleep(0.02)
    raise AssertionError("the warm child never said it was ready")


@pytest.mark.slow  # several children
async def test_each_job_runs_in_a_child_started_ahead_and_none_is_reused(make_harness):
    harness = make_harness()
    scheduler = await harness.start()
    ready_pid = await warm_ready(scheduler)
    first = await harness.submit("slow")
    await harness.wait_running(first.job_id)
    assert scheduler.slots[0].warm._proc is None  # no second process beside a running job: one torch per slot
    assert (await harness.wait(first.job_id, *TERMINAL)).status is S.SUCCEEDED
    [run1] = harness.runs(first.job_id)
    assert run1["warm"] and run1["pid"] == ready_pid  # the job ran in the child that was waiting for it
    replacement = await warm_ready(scheduler)
    assert replacement != ready_pid
    second = await harness.submit("ok")
    assert (await harness.wait(second.job_id, *TERMINAL)).status is S.SUCCEEDED
    [run2] = harness.runs(second.job_id)
    assert run2["warm"] and run2["pid"] == replacement
    # The handed-off child wrote its stderr into the job's own attempt log, like a cold child.
    log = (harness.config.jobs_dir / second.job_id / "logs" / "attempt-1.log").read_text()
    assert f"fake trainer {run2['pid']} runs {second.job_id}" in log


async def test_warm_trainers_off_spawns_a_cold_child_per_job(make_harness):
    harness = make_harness(warm_trainers=False)
    scheduler = await harness.start()
    assert scheduler.slots[0].warm is None
    job = await harness.submit("ok")
    assert (await harness.wait(job.job_id, *TERMINAL)).status is S.SUCCEEDED
    assert harness.runs(job.job_id)[0]["warm"] is False


@pytest.mark.slow  # several children
@pytest.mark.parametrize("warm", [True, False])
async def test_outcomes_are_the_same_warm_or_cold(make_harness, warm):
    harness = make_harness(warm_trainers=warm, max_attempts=2)
    await harness.start()
    crash = await harness.submit("crash")
    assert (await harness.wait(crash.job_id, *TERMINAL)).status is S.FAILED
    killed = await harness.submit("sigkill-once", max_epochs=3)  # lost once, resumed from its checkpoint
    done = await harness.wait(killed.job_id, *TERMINAL)
    assert done.status is S.SUCCEEDED, await harness.descriptions(killed.job_id)
    runs = harness.runs(killed.job_id)
    assert [r["warm"] for r in runs] == [warm, warm] and runs[1]["resumed_from_epoch"] >= 1
    assert runs[0]["pid"] != runs[1]["pid"]
    slow = await harness.submit("ignore-term", max_epochs=1)  # cancel escalates to SIGKILL of the group
    await harness.wait_running(slow.job_id)
    await harness.scheduler.cancel(slow.job_id)
    assert (await harness.wait(slow.job_id, *TERMINAL)).status is S.CANCELLED


async def test_an_idle_warm_child_exits_when_its_lifeline_closes(make_harness):
    harness = make_harness()
    scheduler = await harness.start()
    await warm_ready(scheduler)
    proc = scheduler.slots[0].warm._proc
    proc.stdin.close()  # what a kill -9 of the server does to the pipe
    assert await asyncio.wait_for(proc.wait(), 10) == ExitCode.LIFELINE_LOST


async def test_scheduler_stop_ends_the_idle_warm_child(make_harness):
    harness = make_harness()
    scheduler = await harness.start()
    pid = await warm_ready(scheduler)
    await scheduler.stop(grace_s=0.5)
    harness.scheduler = None
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_a_stray_child_is_recognised_by_its_working_folder(tmp_path):
    """Boot recovery kills a leftover group only if the pid still runs that job: a warm child's command line
    names no job, its working folder (jobs/<job_id>) does."""
    job_id = "j" + "a" * 32
    work = tmp_path / "jobs" / job_id
    work.mkdir(parents=True)
    other = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(60)"], cwd=tmp_path, start_new_session=True
    )
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], cwd=work, start_new_session=True)
    try:
        assert runs_job(child.pid, job_id) and not runs_job(other.pid, job_id)
        assert not kill_stray_group(other.pid, job_id) and other.poll() is None
        assert kill_stray_group(child.pid, job_id)
        assert child.wait(10) == -signal.SIGKILL
    finally:
        for proc in (other, child):
            if proc.poll() is None:
                proc.kill()
                proc.wait()
