"""The scheduler with the fake child: success, each failure class, retries, resume, publish rules."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import structlog

from gpjobs import messages as texts
from gpjobs.domain import JobStatus, MessageType
from gpjobs.scheduler.settle import AttemptEnd, Settlement

S = JobStatus
TERMINAL = (S.SUCCEEDED, S.FAILED, S.TIMED_OUT, S.CANCELLED)


async def test_ok_job_publishes_item_with_messages_and_progress(harness):
    await harness.start()
    job = await harness.submit("ok", max_epochs=2, name="trainedModel")
    done = await harness.wait(job.job_id, *TERMINAL)
    assert done.status is S.SUCCEEDED, await harness.descriptions(job.job_id)
    assert done.attempts == 1 and done.progress == 100 and set(done.result) == {"id"}
    item = await harness.store.get_item(done.result["id"])
    assert (item.owner, item.title, item.name, item.type) == (
        "alice",
        "trainedModel",
        "trainedModel.dlpk",
        "Deep Learning Package",
    )
    assert item.type_keywords == ["Deep Learning", "Raster"] and item.job_id == job.job_id
    with open(item.path, "rb") as fh:
        assert fh.read() == b"PK fake dlpk for " + job.job_id.encode()
    assert item.size == len(b"PK fake dlpk for ") + len(job.job_id)
    text = await harness.descriptions(job.job_id)
    assert text[:2] == ["Submitted.", "Executing..."]
    assert any(t.startswith("Epoch 1/2, train_loss 1.0000") for t in text)
    assert any(t.startswith("Epoch 2/2") for t in text)
    assert text[-3:-1] == ["Training Finished", "Adding new Deep Learning Package item to the portal succeeded."]
    assert text[-1].startswith("Succeeded at ")
    assert harness.runs(job.job_id)[0]["cuda"] == ""  # a cpu slot hides every GPU from the child


@pytest.mark.parametrize(
    "behaviour, fragment",
    [
        ("crash", "RuntimeError: boom"),
        ("nan", "NaN"),
        ("oom", "smaller batch_size"),
        ("bad-input", "export the training data again"),
        ("no-result", "without producing a model package"),
    ],
)
async def test_deterministic_failures_are_not_retried(harness, behaviour, fragment):
    await harness.start()
    job = await harness.submit(behaviour)
    done = await harness.wait(job.job_id, *TERMINAL)
    assert done.status is S.FAILED and done.attempts == 1
    assert fragment in done.error
    messages = await harness.store.get_messages(job.job_id)
    assert messages[-1].type is MessageType.ERROR and messages[-1].description == "TrainDeepLearningModel failed."
    assert any(fragment in m.description and m.type is MessageType.ERROR for m in messages)
    assert len(harness.runs(job.job_id)) == 1


@pytest.mark.slow  # three children
async def test_child_killed_by_sigkill_is_retried_then_fails_and_frees_the_slot(harness):
    await harness.start()
    job = await harness.submit("sigkill-self")
    after = await harness.submit("ok")
    done = await harness.wait(job.job_id, *TERMINAL)
    assert done.status is S.FAILED and done.attempts == 3
    assert "signal 9" in done.error and "all 3 attempts used" in done.error
    text = await harness.descriptions(job.job_id)
    assert sum("Retrying from epoch 0" in t for t in text) == 2
    assert len(harness.runs(job.job_id)) == 3
    assert (await harness.wait(after.job_id, *TERMINAL)).status is S.SUCCEEDED


async def test_lost_child_resumes_from_its_checkpoint(harness):
    await harness.start()
    job = await harness.submit("sigkill-once", max_epochs=3)
    done = await harness.wait(job.job_id, *TERMINAL)
    assert done.status is S.SUCCEEDED and done.attempts == 2
    runs = harness.runs(job.job_id)
    assert [r["resumed_from_epoch"] for r in runs] == [0, 1]
    text = await harness.descriptions(job.job_id)
    assert any("Retrying from epoch 1" in t for t in text)
    assert "Resumed training from the checkpoint of epoch 1." in text
    assert len(await harness.store.list_items("alice")) == 1


async def test_name_clash_fails_without_overwrite_and_replaces_with_it(harness):
    await harness.start()
    first = await harness.wait((await harness.submit("ok", name="same")).job_id, *TERMINAL)
    clash = await harness.wait((await harness.submit("ok", name="same")).job_id, *TERMINAL)
    assert clash.status is S.FAILED and "overwrite_model" in clash.error
    replaced = await harness.wait((await harness.submit("ok", name="same", overwrite=True)).job_id, *TERMINAL)
    assert replaced.status is S.SUCCEEDED and replaced.result == first.result
    items = await harness.store.list_items("alice")
    assert len(items) == 1 and items[0].job_id == replaced.job_id
    assert "Updating existing Deep Learning Package item to the portal succeeded." in await harness.descriptions(
        replaced.job_id
    )
    assert Path(items[0].path).is_file()
    assert not (harness.config.content_dir / first.job_id / "same.dlpk").exists()  # the old file went


async def test_file_share_output_writes_package_and_returns_uri(harness, tmp_path):
    share = harness.config.file_shares["default"]
    (share / "models").mkdir(parents=True)
    await harness.start()
    job = await harness.submit(
        "ok",
        name="mine",
        output={
            "kind": "uri",
            "name": "mine",
            "path": str(share / "models" / "mine"),
            "alias": "/fileShares/default/models/mine",
        },
    )
    done = await harness.wait(job.job_id, *TERMINAL)
    assert done.status is S.SUCCEEDED
    assert done.result == {"uri": "/fileShares/default/models/mine/mine.dlpk"}
    assert (share / "models" / "mine" / "mine.dlpk").read_bytes().startswith(b"PK fake")
    assert await harness.store.list_items() == []


async def test_two_slots_run_two_jobs_side_by_side_fifo(make_harness):
    h = make_harness(devices=["cpu", "cpu"])
    scheduler = await h.start()
    a = await h.submit("slow", max_epochs=1)
    b = await h.submit("slow", max_epochs=1)
    c = await h.submit("ok", max_epochs=1)
    await h.wait_running(a.job_id)
    await h.wait_running(b.job_id)
    # both slots busy: c shows "queued for a worker" from the scheduler's next pass (c may have been submitted
    # after the pass that claimed b marked the queue), and does not run
    assert (await h.wait(c.job_id, S.WAITING, S.EXECUTING, *TERMINAL)).status is S.WAITING
    assert {s.run.job_id for s in scheduler.slots} == {a.job_id, b.job_id}
    for job in (a, b, c):
        assert (await h.wait(job.job_id, *TERMINAL)).status is S.SUCCEEDED


@pytest.mark.slow  # a slow child
async def test_progress_is_visible_while_running(make_harness, monkeypatch):
    monkeypatch.setenv("GPJOBS_FAKE_EPOCH_S", "0.6")
    h = make_harness()
    await h.start()
    job = await h.submit("slow", max_epochs=3)
    await h.wait_running(job.job_id)
    seen = set()
    for _ in range(150):
        current = await h.store.get_job(job.job_id)
        if current.status is S.EXECUTING and current.progress:
            seen.add(round(current.progress))
        if len(seen) >= 3 or current.is_terminal:
            break
        await asyncio.sleep(0.05)
    assert len(seen) >= 3 and all(0 < p < 100 for p in seen)
    await h.wait(job.job_id, S.SUCCEEDED)
    assert sum(t.startswith("Epoch ") for t in await h.descriptions(job.job_id)) == 3


async def test_job_whose_pretrained_item_is_gone_fails_without_a_child(harness):
    job = await harness.submit("ok", pretrained_item="0" * 32)
    await harness.start()
    done = await harness.wait(job.job_id, *TERMINAL)
    assert done.status is S.FAILED and done.attempts == 1 and "pretrained_model" in done.error
    assert (await harness.descriptions(job.job_id))[-1] == texts.tool_failed("TrainDeepLearningModel")
    assert harness.runs(job.job_id) == []


async def test_a_failure_after_a_cancel_request_ends_cancelled(harness):
    """Cancelling -> Failed is not an edge (domain.TRANSITIONS): a requested cancel wins over any ending."""
    job = await harness.submit("ok")
    claimed = await harness.store.claim_next_job("cpu", "boot-1")
    await harness.store.request_cancel(job.job_id)
    settlement = Settlement(harness.store, harness.config, claimed, structlog.get_logger("test"), lambda _: None)
    await settlement.fail("the supervisor broke")
    done = await harness.store.get_job(job.job_id)
    assert done.status is S.CANCELLED and done.error is None
    assert (await harness.descriptions(job.job_id))[-1] == texts.CANCEL_COMPLETE


async def test_a_pool_that_knows_why_a_child_was_lost_says_that_not_the_signal(harness):
    """The Ray pool's lost attempts (no room, its nodes left) carry their reason; the Lost line shows it."""
    job = await harness.submit("ok")
    claimed = await harness.store.claim_next_job("cpu", "boot-1")
    settlement = Settlement(harness.store, harness.config, claimed, structlog.get_logger("test"), lambda _: None)
    why = "Ray had no node with 1 CPUs and 1 GPUs free for 120 s (other work holds them, or a node left the cluster)"
    failure = {"type": "failed", "exit_code": -9, "text": why, "lost_reason": why}
    await settlement.settle(AttemptEnd(rc=-9, stop_reason=None, checkpoint_epoch=None, failure=failure))
    done = await harness.store.get_job(job.job_id)
    assert done.status is S.SUBMITTED
    lost = (await harness.descriptions(job.job_id))[-1]
    assert lost.startswith(f"Lost: {why}. Retrying from epoch 0") and "signal 9" not in lost
