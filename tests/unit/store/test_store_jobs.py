"""Jobs in the store: creation, reads, FIFO claims, guarded transitions, cancel, quotas, pruning."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from gpjobs.domain import InvalidTransition, JobStatus, MessageType, QuotaExceeded
from gpjobs.store import Store, sql

S = JobStatus


async def test_create_job_round_trips_and_writes_first_message(store, make_job):
    job = await store.create_job(make_job(), ["Submitted."])
    got = await store.get_job(job.job_id)
    assert got == job
    assert got.inputs == {"in_folder": "/fileShares/default/x"} and got.spec == {"model_type": "UNET"}
    messages = await store.get_messages(job.job_id)
    assert [(m.seq, m.type, m.description) for m in messages] == [(1, MessageType.INFORMATIVE, "Submitted.")]
    assert await store.get_job("j" + "0" * 32) is None


async def test_job_survives_reopen(tmp_path, make_job):
    s = await Store.open(tmp_path / "db.sqlite3")
    job = await s.create_job(make_job())
    await s.close()
    s = await Store.open(tmp_path / "db.sqlite3")
    try:
        assert (await s.get_job(job.job_id)).status is S.SUBMITTED
    finally:
        await s.close()


async def test_claim_is_fifo_and_sets_boot_device_attempts(store, make_job):
    first = await store.create_job(make_job())
    second = await store.create_job(make_job())
    claimed = await store.claim_next_job("cuda:1", "boot-a")
    assert claimed.job_id == first.job_id
    assert (claimed.status, claimed.device, claimed.boot_id, claimed.attempts) == (S.EXECUTING, "cuda:1", "boot-a", 1)
    assert claimed.progress == 0
    assert [m.description for m in await store.get_messages(first.job_id)] == ["Submitted.", "Executing..."]
    assert (await store.claim_next_job("cpu", "boot-a")).job_id == second.job_id
    assert await store.claim_next_job("cpu", "boot-a") is None


async def test_claim_gives_a_job_asking_for_a_processor_type_only_a_slot_of_that_kind(store, make_job):
    gpu = await store.create_job(make_job(spec={"context": {"processor_type": "GPU"}}))
    cpu = await store.create_job(make_job(spec={"context": {"processor_type": "CPU"}}))
    anything = await store.create_job(make_job(spec={"context": {"processor_type": None}}))
    assert (await store.claim_next_job("cpu", "b")).job_id == cpu.job_id  # the older GPU job is passed over
    assert (await store.claim_next_job("cpu", "b")).job_id == anything.job_id
    assert await store.claim_next_job("cpu", "b") is None
    assert (await store.claim_next_job("cuda:0", "b")).job_id == gpu.job_id


async def test_claim_respects_run_after(store, make_job):
    job = await store.create_job(make_job(run_after_ms=10**15))
    assert await store.claim_next_job("cpu", "b") is None
    assert await store.next_run_after() == 10**15
    assert (await store.get_job(job.job_id)).status is S.SUBMITTED


async def test_concurrent_claimers_on_two_connections_claim_each_job_once(tmp_path, make_job):
    """Two stores on one file (as two processes would be): every job is claimed exactly once."""
    a = await Store.open(tmp_path / "db.sqlite3")
    b = await Store.open(tmp_path / "db.sqlite3")
    try:
        ids = {(await a.create_job(make_job())).job_id for _ in range(12)}

        async def drain(store, boot):
            got = []
            while (job := await store.claim_next_job("cpu", boot)) is not None:
                got.append(job.job_id)
            return got

        got_a, got_b = await asyncio.gather(drain(a, "A"), drain(b, "B"))
        assert sorted(got_a + got_b) == sorted(ids)
        assert not set(got_a) & set(got_b)
    finally:
        await a.close()
        await b.close()


async def test_guarded_transition_refuses_wrong_source(store, make_job):
    job = await store.create_job(make_job())
    with pytest.raises(InvalidTransition) as err:
        await store.transition(job.job_id, S.SUCCEEDED)
    assert err.value.current is S.SUBMITTED
    await store.claim_next_job("cpu", "b")
    failed = await store.transition(
        job.job_id, S.FAILED, error="boom", finished_ms=5, messages=[(MessageType.ERROR, "boom")]
    )
    assert (failed.status, failed.error, failed.finished_ms) == (S.FAILED, "boom", 5)
    assert (await store.get_messages(job.job_id, since_seq=2))[0].type is MessageType.ERROR
    with pytest.raises(InvalidTransition):  # terminal: no way out
        await store.transition(job.job_id, S.SUBMITTED)
    with pytest.raises(ValueError):
        await store.transition(job.job_id, S.FAILED, owner="mallory")


async def test_failed_transition_rolls_back_its_messages(store, make_job):
    job = await store.create_job(make_job())
    with pytest.raises(InvalidTransition):
        await store.transition(job.job_id, S.SUCCEEDED, messages=[(MessageType.INFORMATIVE, "nope")])
    assert [m.description for m in await store.get_messages(job.job_id)] == ["Submitted."]


async def test_cancel_queued_running_and_finished(store, make_job):
    queued = await store.create_job(make_job())
    job, changed = await store.request_cancel(queued.job_id)
    assert changed and job.status is S.CANCELLED and job.finished_ms

    running = await store.create_job(make_job())
    await store.claim_next_job("cpu", "b")
    job, changed = await store.request_cancel(running.job_id)
    assert changed and job.status is S.CANCELLING and job.cancel_requested_ms
    job, changed = await store.request_cancel(running.job_id)  # twice: unchanged
    assert not changed and job.status is S.CANCELLING

    done, changed = await store.request_cancel(queued.job_id)  # finished: a no-op
    assert not changed and done.status is S.CANCELLED
    assert await store.request_cancel("j" + "1" * 32) == (None, False)


async def test_record_progress_only_while_running(store, make_job):
    job = await store.create_job(make_job())
    assert not await store.record_progress(job.job_id, progress=10)
    await store.claim_next_job("cpu", "b")
    assert await store.record_progress(
        job.job_id,
        progress=42.5,
        heartbeat_ms=7,
        checkpoint_epoch=3,
        pid=99,
        messages=[(MessageType.INFORMATIVE, "epoch 3"), (MessageType.WARNING, "slow")],
    )
    got = await store.get_job(job.job_id)
    assert (got.progress, got.heartbeat_ms, got.checkpoint_epoch) == (42.5, 7, 3)
    assert await store.job_pid(job.job_id) == 99
    assert [m.description for m in await store.get_messages(job.job_id, since_seq=2)] == ["epoch 3", "slow"]


async def test_quota_per_user_counts_queued_and_running(store, make_job):
    for _ in range(2):
        await store.create_job(make_job("bob"), max_queued_per_user=2)
    with pytest.raises(QuotaExceeded, match="bob"):
        await store.create_job(make_job("bob"), max_queued_per_user=2)
    await store.create_job(make_job("carol"), max_queued_per_user=2)  # other users unaffected


async def test_list_jobs_filters_pages_and_counts(store, make_job):
    jobs = [await store.create_job(make_job("u1" if i % 2 else "u2", created_ms=1000 + i)) for i in range(5)]
    page, total = await store.list_jobs(owner="u1", limit=1)
    assert total == 2 and [j.job_id for j in page] == [jobs[3].job_id]
    page, total = await store.list_jobs(order="created_asc", since_ms=1001, until_ms=1003)
    assert [j.job_id for j in page] == [j.job_id for j in jobs[1:4]] and total == 3
    _, total = await store.list_jobs(statuses=[S.EXECUTING])
    assert total == 0
    _, total = await store.list_jobs(model_type="UNET", offset=4)
    assert total == 5


async def test_orphans_are_active_jobs_of_other_boots(store, make_job):
    old = await store.create_job(make_job())
    await store.claim_next_job("cpu", "old-boot")
    new = await store.create_job(make_job())
    await store.claim_next_job("cpu", "new-boot")
    assert [j.job_id for j in await store.orphaned_jobs("new-boot")] == [old.job_id]
    assert new.job_id not in [j.job_id for j in await store.orphaned_jobs("new-boot")]


async def test_prune_and_delete(store, make_job):
    job = await store.create_job(make_job())
    await store.request_cancel(job.job_id)
    keep = await store.create_job(make_job())
    assert await store.prune_finished(before_ms=0) == []
    assert await store.prune_finished(before_ms=2**62) == [job.job_id]
    assert await store.get_job(job.job_id) is None and await store.get_messages(job.job_id) == []
    assert await store.delete_job(keep.job_id) and not await store.delete_job(keep.job_id)


async def test_read_cache_is_invalidated_by_every_write(store, make_job):
    job = await store.create_job(make_job())
    assert (await store.get_job(job.job_id)).status is S.SUBMITTED
    assert len(await store.get_messages(job.job_id)) == 1
    await store.claim_next_job("cpu", "b")  # a write: the cached snapshot must not survive it
    assert (await store.get_job(job.job_id)).status is S.EXECUTING
    assert [m.seq for m in await store.get_messages(job.job_id)] == [1, 2]
    assert [m.seq for m in await store.get_messages(job.job_id, since_seq=1)] == [2]


async def test_read_racing_a_commit_is_not_cached(store):
    calls = []

    async def load():
        calls.append(1)
        store.db.generation += 1  # a write committed while this read ran
        return "stale"

    assert await store.db.cached("k", load) == "stale"
    assert await store.db.cached("k", load) == "stale" and len(calls) == 2  # read again, not served stale


async def test_cancelled_writer_leaves_no_open_transaction(store, make_job):
    """A task cancelled mid-claim (scheduler shutdown) must not leave the writer inside BEGIN."""
    for _ in range(20):
        await store.create_job(make_job())
    for delay in range(8):
        task = asyncio.create_task(store.claim_next_job("cpu", "b"))
        for _ in range(delay):
            await asyncio.sleep(0)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await store.create_job(make_job())  # would fail with "within a transaction"


def test_every_status_has_one_named_statement_without_status_literals():
    assert set(sql.TRANSITIONS) == set(S)
    statements = [v for k, v in vars(sql).items() if k.isupper() and isinstance(v, str)]
    statements += [statement for statement, _ in sql.TRANSITIONS.values()] + list(sql.LIST_JOBS.values())
    assert not [s for s in statements if "esriJob" in s]  # statuses come from domain, as parameters


async def test_guard_takes_sources_from_the_domain_and_refuses_to_widen_them(store, make_job):
    job = await store.create_job(make_job())
    await store.claim_next_job("cpu", "b")
    with pytest.raises(ValueError, match="esriJobCancelling -> esriJobSubmitted is not an edge"):
        await store.transition(job.job_id, S.SUBMITTED, sources={S.EXECUTING, S.CANCELLING})
    with pytest.raises(ValueError, match="cannot set"):
        await store.transition(job.job_id, S.CANCELLING, attempts=0)  # a column the target does not own
    with pytest.raises(InvalidTransition) as err:  # narrowed to a source the job is not in
        await store.transition(job.job_id, S.SUBMITTED, sources={S.WAITING})
    assert err.value.current is S.EXECUTING
    requeued = await store.transition(job.job_id, S.SUBMITTED, attempts=0, server_crashes=1, run_after_ms=7)
    assert (requeued.status, requeued.attempts, requeued.server_crashes) == (S.SUBMITTED, 0, 1)
    assert requeued.run_after_ms == 7
    assert await store.job_pid(job.job_id) is None


async def test_publish_of_a_queued_job_is_refused_with_its_status(store, make_job):
    job = await store.create_job(make_job())
    with pytest.raises(InvalidTransition) as err:
        await store.publish_job(job.job_id, result={"uri": "/x"})
    assert err.value.current is S.SUBMITTED and err.value.target is S.SUCCEEDED


async def test_list_filters_are_parameters_not_sql(store, make_job):
    await store.create_job(make_job("o'brien"))
    page, total = await store.list_jobs(owner="o'brien) OR 1=1 --")
    assert (page, total) == ([], 0)
    _, total = await store.list_jobs(owner="o'brien", statuses=[S.SUBMITTED, S.WAITING])
    assert total == 1
    assert await store.list_jobs(statuses=[]) == ([], 0)


async def test_the_claim_walks_the_claimable_index_not_the_whole_queue(store):
    """A claim costs the same with 100 or 10,000 jobs queued (bench/queue_scale.py): SQLite walks each claimable
    status's jobs in FIFO order (index jobs_fifo) and stops at the first runnable one, instead of sorting every
    queued row (and parsing its request) to find the oldest."""
    plan = await store.db.fetchall(
        "EXPLAIN QUERY PLAN " + sql.CLAIM_NEXT,
        {
            "first": S.SUBMITTED.value,
            "second": S.WAITING.value,
            "target": S.EXECUTING.value,
            "sources": '["esriJobSubmitted"]',
            "now": 0,
            "boot_id": "b",
            "device": "cpu",
            "processor": "CPU",
        },
    )
    details = " | ".join(str(row[-1]) for row in plan)
    assert details.count("USING INDEX jobs_fifo (status=?)") == 2, details
    assert details.count("TEMP B-TREE") <= 1, details  # only the final choice between the two oldest
