"""Jobs and their messages: creation, reads, and the guarded status changes the scheduler drives.

Every status change goes through `guard()`: the allowed sources of the target come from domain.TRANSITIONS
(a caller may narrow them, never widen them), and the named statement (store/sql.py) matches only a job in one
of them, inside the writer transaction. A miss raises InvalidTransition with the status actually found.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Awaitable, Callable, Hashable, Iterable, Sequence
from typing import Any

import aiosqlite

from gpjobs import messages as texts
from gpjobs.domain import (
    ACTIVE_STATUSES,
    QUEUED_STATUSES,
    TERMINAL_STATUSES,
    InvalidTransition,
    Job,
    JobStatus,
    Message,
    MessageType,
    QuotaExceeded,
    now_ms,
    sources_of,
)
from gpjobs.store import sql
from gpjobs.store.db import Database, dumps, loads

MessageInput = tuple["MessageType | str", str]


def job_from_row(row: sqlite3.Row) -> Job:
    # "pid" is not on the Job record on purpose: only the scheduler and recovery care (job_pid()).
    data = {k: row[k] for k in row.keys() if k != "pid"}
    for key in sql.JOB_JSON_COLUMNS:
        data[key] = loads(data[key])
    data["status"] = JobStatus(data["status"])
    return Job(**data)


def status_list(statuses: Iterable[JobStatus]) -> str:
    """A set of statuses as the one JSON-array parameter the named statements read with json_each."""
    return dumps(sorted(JobStatus(s).value for s in statuses))


def guard(target: JobStatus, sources: Iterable[JobStatus] | None = None) -> str:
    """The allowed sources of `target` (domain.TRANSITIONS), narrowed to `sources` when given, as a parameter.

    Raises ValueError for a source from which `target` is not an edge: that is a bug in the caller, not a race.
    """
    allowed = sources_of(JobStatus(target))
    chosen = allowed if sources is None else frozenset(JobStatus(s) for s in sources)
    if not chosen <= allowed:
        wrong = ", ".join(sorted(s.value for s in chosen - allowed))
        raise ValueError(f"{wrong} -> {JobStatus(target).value} is not an edge of domain.TRANSITIONS")
    return status_list(chosen)


async def append_messages(
    conn: aiosqlite.Connection, job_id: str, messages: Sequence[MessageInput], time_ms: int | None = None
) -> None:
    """Append messages inside an open write transaction (seq continues from the last one)."""
    if not messages:
        return
    time_ms = time_ms or now_ms()
    row = await (await conn.execute(sql.LAST_MESSAGE_SEQ, {"job_id": job_id})).fetchone()
    assert row is not None  # an aggregate query returns one row
    start = int(row[0]) + 1
    await conn.executemany(
        sql.INSERT_MESSAGE,
        [
            {"job_id": job_id, "seq": start + i, "type": MessageType(t).value, "description": text, "time_ms": time_ms}
            for i, (t, text) in enumerate(messages)
        ],
    )


async def transition_in(
    conn: aiosqlite.Connection,
    job_id: str,
    target: JobStatus,
    *,
    sources: Iterable[JobStatus] | None = None,
    messages: Sequence[MessageInput] = (),
    **fields: Any,
) -> Job:
    """`JobsMixin.transition` inside a write transaction the caller holds (publish, cancel)."""
    target = JobStatus(target)
    statement, settable = sql.TRANSITIONS[target]
    bad = set(fields) - settable
    if bad:
        raise ValueError(f"cannot set {sorted(bad)} when a job becomes {target.value}")
    now = now_ms()
    params: dict[str, Any] = {name: None for name in settable}
    params.update({k: dumps(v) if k in sql.JOB_JSON_COLUMNS and v is not None else v for k, v in fields.items()})
    params.update(target=target.value, now=now, job_id=job_id, sources=guard(target, sources))
    row = await (await conn.execute(statement, params)).fetchone()
    if row is None:
        found = await (await conn.execute(sql.SELECT_JOB_STATUS, {"job_id": job_id})).fetchone()
        raise InvalidTransition(job_id, JobStatus(found[0]) if found else None, target)
    await append_messages(conn, job_id, messages, now)
    return job_from_row(row)


def _messages(rows: Iterable[sqlite3.Row]) -> tuple[Message, ...]:
    return tuple(Message(r[0], MessageType(r[1]), r[2], r[3]) for r in rows)


def _info(text: str) -> list[MessageInput]:
    return [(MessageType.INFORMATIVE, text)]


class JobsMixin:
    db: Database

    # --- creation and reads ----------------------------------------------------------------------

    async def create_job(
        self, job: Job, messages: Sequence[str | MessageInput] = (texts.SUBMITTED,), *, max_queued_per_user: int = 0
    ) -> Job:
        """Insert a job and its first messages in one transaction (an acknowledged job is never lost).

        With `max_queued_per_user` > 0, refuses (QuotaExceeded) when the owner already has that many jobs
        queued or running; the count and the insert share the transaction, so concurrent submits cannot
        overshoot.
        """
        now = now_ms()
        job = job.replace(created_ms=job.created_ms or now, updated_ms=now)
        msgs = [(MessageType.INFORMATIVE, m) if isinstance(m, str) else m for m in messages]
        async with self.db.write(job.job_id) as conn:
            if max_queued_per_user > 0:
                row = await (
                    await conn.execute(
                        sql.COUNT_OWNER_JOBS_IN,
                        {"owner": job.owner, "statuses": status_list(QUEUED_STATUSES | ACTIVE_STATUSES)},
                    )
                ).fetchone()
                assert row is not None  # an aggregate query returns one row
                if row[0] >= max_queued_per_user:
                    raise QuotaExceeded(
                        f"user {job.owner!r} already has {row[0]} queued or running jobs (limit "
                        f"{max_queued_per_user}); wait for some to finish or cancel them"
                    )
            values = {c: getattr(job, c, None) for c in sql.JOB_COLUMNS}
            values["status"] = job.status.value
            for key in sql.JOB_JSON_COLUMNS:
                values[key] = None if values[key] is None else dumps(values[key])
            await conn.execute(sql.INSERT_JOB, values)
            await append_messages(conn, job.job_id, msgs, now)
        return job

    async def get_job(self, job_id: str) -> Job | None:
        """The job, or None. Served from memory until the next write (polls never queue behind training)."""

        async def load() -> Job | None:
            row = await self.db.fetchone(sql.SELECT_JOB, {"job_id": job_id})
            return job_from_row(row) if row else None

        return await self.db.cached(("job", job_id), load, scope=job_id)

    async def job_pid(self, job_id: str) -> int | None:
        row = await self.db.fetchone(sql.SELECT_JOB_PID, {"job_id": job_id})
        return row[0] if row else None

    async def list_jobs(
        self,
        *,
        owner: str | None = None,
        statuses: Iterable[JobStatus] | None = None,
        model_type: str | None = None,
        since_ms: int | None = None,
        until_ms: int | None = None,
        order: str = "created_desc",
        limit: int = 100,
        offset: int = 0,
        task: str | None = None,
    ) -> tuple[list[Job], int]:
        """A page of jobs matching the filters (`task`: of that GP task only), and the total count of matches."""
        if order not in sql.LIST_JOBS:
            raise ValueError(f"order must be one of {sorted(sql.LIST_JOBS)}")
        filters = {
            "owner": owner,
            "statuses": None if statuses is None else status_list(statuses),
            "model_type": model_type,
            "since_ms": since_ms,
            "until_ms": until_ms,
            "task": task,
        }
        total = await self.db.fetchone(sql.COUNT_JOBS, filters)
        assert total is not None  # an aggregate query returns one row
        rows = await self.db.fetchall(
            sql.LIST_JOBS[order], {**filters, "limit": max(0, int(limit)), "offset": max(0, int(offset))}
        )
        return [job_from_row(r) for r in rows], int(total[0])

    async def get_messages(self, job_id: str, since_seq: int = 0) -> list[Message]:
        """Every message after `since_seq`, in order (cached like get_job). Polls read `message_page` /
        `last_messages` instead: their cost does not grow with the job."""

        async def load() -> tuple[Message, ...]:
            return _messages(await self.db.fetchall(sql.SELECT_MESSAGES, {"job_id": job_id}))

        messages = await self.db.cached(("messages", job_id), load, scope=job_id)
        return [m for m in messages if m.seq > since_seq]

    async def message_count(self, job_id: str) -> int:
        """How many messages the job has (seq runs 1..n without gaps: messages are append-only)."""

        async def load() -> int:
            row = await self.db.fetchone(sql.LAST_MESSAGE_SEQ, {"job_id": job_id})
            return int(row[0]) if row else 0

        return await self.db.cached(("message_count", job_id), load, scope=job_id)

    async def message_page(self, job_id: str, start: int, limit: int) -> tuple[Message, ...]:
        """At most `limit` messages from position `start` (1-based, = seq) on, in order."""

        async def load() -> tuple[Message, ...]:
            return _messages(
                await self.db.fetchall(sql.SELECT_MESSAGES_FROM, {"job_id": job_id, "start": start, "limit": limit})
            )

        return await self.db.cached(("message_page", job_id, start, limit), load, scope=job_id)

    async def last_messages(self, job_id: str, limit: int) -> tuple[Message, ...]:
        """The job's `limit` most recent messages, in order."""

        async def load() -> tuple[Message, ...]:
            rows = await self.db.fetchall(sql.SELECT_LAST_MESSAGES, {"job_id": job_id, "limit": limit})
            return _messages(reversed(rows))

        return await self.db.cached(("last_messages", job_id, limit), load, scope=job_id)

    async def epoch_messages(self, job_id: str) -> tuple[Message, ...]:
        """The job's per-epoch lines (messages.epoch_line), in order: what its loss chart is drawn from."""

        async def load() -> tuple[Message, ...]:
            return _messages(await self.db.fetchall(sql.SELECT_EPOCH_MESSAGES, {"job_id": job_id}))

        return await self.db.cached(("epoch_messages", job_id), load, scope=job_id)

    async def job_view(self, job_id: str, key: Hashable, build: Callable[[], Awaitable[Any]]) -> Any:
        """`await build()` (something derived from the job's rows only, e.g. a rendered status body), memoised
        until the job's next write: an unchanged job is answered without touching SQLite."""
        return await self.db.cached(("view", job_id, key), build, scope=job_id)

    async def delete_job(self, job_id: str) -> bool:
        """Delete a job and its messages (items it published stay, with job_id cleared)."""
        async with self.db.write(job_id) as conn:
            cur = await conn.execute(sql.DELETE_JOB, {"job_id": job_id})
            return cur.rowcount > 0

    # --- guarded status changes (called by the scheduler, never by web handlers) -----------------

    async def transition(
        self,
        job_id: str,
        target: JobStatus,
        *,
        sources: Iterable[JobStatus] | None = None,
        messages: Sequence[MessageInput] = (),
        **fields: Any,
    ) -> Job:
        """Move a job to `target` if it is in one of `sources` (default: every source domain.TRANSITIONS allows).

        Keyword arguments set the columns that `target` owns (sql.TRANSITIONS) in the same statement; `messages`
        are appended in the same transaction. Raises InvalidTransition (with the status found) when the job is
        not in an allowed source.
        """
        async with self.db.write(job_id) as conn:
            return await transition_in(conn, job_id, target, sources=sources, messages=messages, **fields)

    async def claim_next_job(self, device: str, boot_id: str, *, now: int | None = None) -> Job | None:
        """Claim the oldest claimable queued job for `device` (FIFO among the jobs that may run on that kind
        of device), or None. One guarded statement."""
        now = now or now_ms()
        first, second = sorted(s.value for s in sources_of(JobStatus.EXECUTING))  # sql.CLAIM_NEXT walks each
        async with self.db.write() as conn:
            row = await (
                await conn.execute(
                    sql.CLAIM_NEXT,
                    {
                        "first": first,
                        "second": second,
                        "target": JobStatus.EXECUTING.value,
                        "sources": guard(JobStatus.EXECUTING),
                        "now": now,
                        "boot_id": boot_id,
                        "device": device,
                        "processor": "GPU" if device.startswith("cuda") else "CPU",
                    },
                )
            ).fetchone()
            if row is None:
                return None
            job = job_from_row(row)
            if job.attempts == 1 and job.interruptions == 0 and job.server_crashes == 0:
                await append_messages(conn, job.job_id, _info(texts.EXECUTING), now)
            return job

    async def mark_waiting(self) -> int:
        """Submitted jobs that found every slot busy show esriJobWaiting ("queued for a worker"); claim takes both."""
        async with self.db.write() as conn:
            cursor = await conn.execute(
                sql.MARK_WAITING,
                {"target": JobStatus.WAITING.value, "sources": guard(JobStatus.WAITING), "now": now_ms()},
            )
            return cursor.rowcount

    async def record_progress(
        self,
        job_id: str,
        *,
        messages: Sequence[MessageInput] = (),
        progress: float | None = None,
        heartbeat_ms: int | None = None,
        checkpoint_epoch: int | None = None,
        pid: int | None = None,
    ) -> bool:
        """Batched child news for a running job in one transaction; False when the job is no longer running."""
        async with self.db.write(job_id) as conn:
            cur = await conn.execute(
                sql.RECORD_PROGRESS,
                {
                    "now": now_ms(),
                    "progress": progress,
                    "heartbeat_ms": heartbeat_ms,
                    "checkpoint_epoch": checkpoint_epoch,
                    "pid": pid,
                    "job_id": job_id,
                    "sources": status_list(ACTIVE_STATUSES),
                },
            )
            if cur.rowcount == 0:
                return False
            await append_messages(conn, job_id, messages)
            return True

    async def request_cancel(self, job_id: str) -> tuple[Job | None, bool]:
        """Queued -> Cancelled, Executing -> Cancelling; anything else unchanged. Returns (job, changed)."""
        now = now_ms()
        async with self.db.write(job_id) as conn:
            row = await (await conn.execute(sql.SELECT_JOB_STATUS, {"job_id": job_id})).fetchone()
            if row is None:
                return None, False
            status = JobStatus(row[0])
            if status in QUEUED_STATUSES:
                job = await transition_in(
                    conn,
                    job_id,
                    JobStatus.CANCELLED,
                    sources=QUEUED_STATUSES,
                    finished_ms=now,
                    cancel_requested_ms=now,
                    messages=_info(texts.CANCEL_COMPLETE),
                )
                return job, True
            if status is JobStatus.EXECUTING:
                job = await transition_in(
                    conn, job_id, JobStatus.CANCELLING, cancel_requested_ms=now, messages=_info(texts.CANCEL_REQUESTED)
                )
                return job, True
            found = await (await conn.execute(sql.SELECT_JOB, {"job_id": job_id})).fetchone()
            assert found is not None  # its status was read above, in this transaction
            return job_from_row(found), False

    async def active_jobs(self) -> list[Job]:
        rows = await self.db.fetchall(sql.SELECT_JOBS_IN, {"statuses": status_list(ACTIVE_STATUSES)})
        return [job_from_row(r) for r in rows]

    async def orphaned_jobs(self, boot_id: str) -> list[Job]:
        """Jobs still executing/cancelling under an older server boot (their supervisor is gone)."""
        return [j for j in await self.active_jobs() if j.boot_id != boot_id]

    async def queued_count(self) -> int:
        row = await self.db.fetchone(sql.COUNT_JOBS_IN, {"statuses": status_list(QUEUED_STATUSES)})
        assert row is not None  # an aggregate query returns one row
        return int(row[0])

    async def job_counts(self) -> list[tuple[str, str, int]]:
        """(status, model_type, number of jobs) for every pair that has jobs (the metrics endpoint)."""
        return [(r[0], r[1], int(r[2])) for r in await self.db.fetchall(sql.COUNT_JOBS_BY_STATUS)]

    async def oldest_queued_ms(self) -> int | None:
        """When the longest-waiting queued job was submitted (None: nothing queued)."""
        row = await self.db.fetchone(sql.FIRST_CREATED_IN, {"statuses": status_list(QUEUED_STATUSES)})
        return None if row is None or row[0] is None else int(row[0])

    async def next_run_after(self) -> int | None:
        """The earliest run_after_ms among queued jobs (the dispatcher sleeps until then)."""
        row = await self.db.fetchone(sql.FIRST_RUN_AFTER_IN, {"statuses": status_list(QUEUED_STATUSES)})
        return None if row is None or row[0] is None else int(row[0])

    async def prune_finished(self, before_ms: int) -> list[str]:
        """Delete terminal jobs that finished before `before_ms`; returns their ids (work dirs go too)."""
        async with self.db.write() as conn:
            rows = await (
                await conn.execute(
                    sql.PRUNE_FINISHED, {"sources": status_list(TERMINAL_STATUSES), "before_ms": before_ms}
                )
            ).fetchall()
        return [r[0] for r in rows]
