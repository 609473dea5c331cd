"""Issue 11, defect 6: a finished job's work folder keeps only what `work_retention` says (checkpoints and the
package copy are ~4x the package; they went nowhere before), while a job that can still run keeps its
checkpoint."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from gpjobs.config import ConfigError
from gpjobs.domain import JobStatus as S
from gpjobs.scheduler import Scheduler
from gpjobs.scheduler.workdirs import tidy_finished

TERMINAL = (S.SUCCEEDED, S.FAILED, S.CANCELLED, S.TIMED_OUT)


async def ended(h, job_id: str):
    """The job once its run is over: status final and the run's own tidying done."""
    job = await h.wait(job_id, *TERMINAL)
    for _ in range(3000):  # the run tidies right after the status: seconds at most, even on a loaded box
        if h.scheduler is None or h.scheduler.running(job_id) is None:
            return job
        await asyncio.sleep(0.02)
    raise AssertionError(f"the run of {job_id} did not end")


def contents(h, job_id: str) -> set[str]:
    folder = h.config.jobs_dir / job_id
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*")} if folder.exists() else set()


@pytest.mark.parametrize("behaviour, status", [("ok", S.SUCCEEDED), ("crash", S.FAILED)])
async def test_default_keeps_spec_and_logs_and_drops_checkpoints_and_the_package_copy(harness, behaviour, status):
    assert harness.config.work_retention == "logs"
    await harness.start()
    job = await harness.submit(behaviour, max_epochs=2)
    done = await ended(harness, job.job_id)
    assert done.status is status
    kept = contents(harness, job.job_id)
    assert {"spec.json", "logs/attempt-1.log", "fake_runs.jsonl"} <= kept, kept
    assert not any(k.startswith(("checkpoint", "output")) for k in kept), kept
    if status is S.SUCCEEDED:  # the published package is untouched
        item = (await harness.store.list_items("alice"))[0]
        assert Path(item.path).read_bytes().startswith(b"PK fake")


async def test_all_keeps_everything_and_none_keeps_nothing(make_harness, tmp_path):
    keep_all = make_harness(work_retention="all", data_dir=str(tmp_path / "all"))
    keep_none = make_harness(work_retention="none", data_dir=str(tmp_path / "none"))
    await keep_all.start()
    kept = await ended(keep_all, (await keep_all.submit("ok", max_epochs=1)).job_id)
    assert {"checkpoint.json", f"output/model_{kept.job_id[-6:]}.dlpk"} <= contents(keep_all, kept.job_id)
    await keep_all.scheduler.stop(grace_s=0.5)
    keep_all.scheduler = None
    await keep_none.start()
    gone = await ended(keep_none, (await keep_none.submit("ok", max_epochs=1)).job_id)
    assert gone.status is S.SUCCEEDED and not (keep_none.config.jobs_dir / gone.job_id).exists()


async def test_a_job_that_can_still_run_keeps_its_checkpoint(harness):
    job = await harness.submit("ok")
    folder = harness.config.jobs_dir / job.job_id
    (folder / "output").mkdir(parents=True)
    (folder / "checkpoint.pt").write_bytes(b"resume from here")
    for status in (S.SUBMITTED, S.EXECUTING):
        if status is S.EXECUTING:
            await harness.store.claim_next_job("cpu", "boot-1")
        await tidy_finished(harness.store, harness.config, job.job_id)
        assert {"checkpoint.pt", "output"} <= contents(harness, job.job_id)


async def test_boot_and_cancel_tidy_what_was_left(harness):
    """A server killed between a job's end and its tidying leaves a full folder: the next boot tidies it; a
    queued job with a checkpoint from an earlier attempt is tidied when it is cancelled."""
    finished = await harness.submit("ok")
    await harness.store.claim_next_job("cpu", "boot-0")
    await harness.store.transition(finished.job_id, S.FAILED, error="x")
    waiting = await harness.submit("ok")
    for job in (finished, waiting):
        folder = harness.config.jobs_dir / job.job_id
        (folder / "output").mkdir(parents=True)
        (folder / "output" / "m.dlpk").write_bytes(b"PK")
        (folder / "checkpoint.json").write_text(json.dumps({"epoch": 1}))
        (folder / "spec.json").write_text("{}")
    scheduler = Scheduler(harness.config, harness.store, "boot-1")
    await scheduler.start(dispatch=False, watchdog=False)
    assert contents(harness, finished.job_id) == {"spec.json"}
    assert contents(harness, waiting.job_id) == {"spec.json", "output", "output/m.dlpk", "checkpoint.json"}
    assert (await scheduler.cancel(waiting.job_id)).status is S.CANCELLED
    assert contents(harness, waiting.job_id) == {"spec.json"}
    await scheduler.stop(grace_s=0)


def test_work_retention_setting_is_checked(make_config):
    assert make_config(work_retention="none").work_retention == "none"
    with pytest.raises(ConfigError, match="work_retention = 'forever'"):
        make_config(work_retention="forever")
