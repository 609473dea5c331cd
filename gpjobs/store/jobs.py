"""Jobs and their messages: creation, reads, and the guarded status changes the scheduler drives.

Every status change is one `UPDATE ... WHERE job_id = ? AND status IN (<allowed sources>) RETURNING *`
inside the writer transaction; a miss raises InvalidTransition with the status actually found.
"""

from __future__ import annotations

import sqlite3
from typing import Any, Iterable, Sequence

import aiosqlite

from gpjobs.domain import (ACTIVE_STATUSES, QUEUED_STATUSES, InvalidTransition, Job, JobStatus, Message,
                           MessageType, QuotaExceeded, now_ms, sources_of)
from gpjobs.store.db import Database, dumps, loads

_JSON_COLUMNS = ("inputs", "spec", "result")
_JOB_COLUMNS = ("job_id", "owner", "status", "model_type", "inputs", "spec", "progress", "attempts",
                "max_attempts", "interruptions", "result", "error", "created_ms", "updated_ms", "started_ms",
                "finished_ms", "run_after_ms", "device", "boot_id", "pid", "heartbeat_ms", "checkpoint_epoch",
                "cancel_requested_ms")
# Columns a guarded update may set (besides status/updated_ms). "pid" is not on the Job record on purpose:
# only the scheduler and recovery care about it (fetch it with job_pid()).
_SETTABLE = frozenset(_JOB_COLUMNS) - {"job_id", "owner", "created_ms", "status", "updated_ms"}
_ORDERS = {"created_desc": "created_ms DESC, rowid DESC", "created_asc": "created_ms ASC, rowid ASC",
           "updated_desc": "updated_ms DESC, rowid DESC"}

MessageInput = tuple["MessageType | str", str]


def job_from_row(row: sqlite3.Row) -> Job:
    data = {k: row[k] for k in row.keys() if k != "pid"}
    for key in _JSON_COLUMNS:
        data[key] = loads(data[key])
    data["status"] = JobStatus(data["status"])
    return Job(**data)


def _placeholders(values: Sequence[Any]) -> str:
    return ",".join("?" * len(values))


def _status_values(statuses: Iterable[JobStatus]) -> list[str]:
    return [JobStatus(s).value for s in statuses]


async def append_messages(conn: aiosqlite.Connection, job_id: str, messages: Sequence[MessageInput],
                          time_ms: int | None = None) -> None:
    """Append messages inside an open write transaction (seq continues from the last one)."""
    if not messages:
        return
    time_ms = time_ms or now_ms()
    row = await (await conn.execute("SELECT coalesce(max(seq), 0) FROM job_messages WHERE job_id = ?",
                                    (job_id,))).fetchone()
    start = int(row[0]) + 1
    await conn.executemany(
        "INSERT INTO job_messages (job_id, seq, type, description, time_ms) VALUES (?,?,?,?,?)",
        [(job_id, start + i, MessageType(t).value, text, time_ms) for i, (t, text) in enumerate(messages)])


def _info(texts: Iterable[str]) -> list[MessageInput]:
    return [(MessageType.INFORMATIVE, t) for t in texts]


class JobsMixin:
    db: Database

    # --- creation and reads ----------------------------------------------------------------------

    async def create_job(self, job: Job, messages: Sequence[str | MessageInput] = ("Submitted.",), *,
                         max_queued_per_user: int = 0) -> Job:
        """Insert a job and its first messages in one transaction (an acknowledged job is never lost).

        With `max_queued_per_user` > 0, refuses (QuotaExceeded) when the owner already has that many jobs
        queued or running; the count and the insert share the transaction, so concurrent submits cannot
        overshoot.
        """
        now = now_ms()
        job = job.replace(created_ms=job.created_ms or now, updated_ms=now)
        msgs = [(MessageType.INFORMATIVE, m) if isinstance(m, str) else m for m in messages]
        async with self.db.write() as conn:
            if max_queued_per_user > 0:
                busy = _status_values(QUEUED_STATUSES | ACTIVE_STATUSES)
                row = await (await conn.execute(
                    f"SELECT count(*) FROM jobs WHERE owner = ? AND status IN ({_placeholders(busy)})",
                    (job.owner, *busy))).fetchone()
                if row[0] >= max_queued_per_user:
                    raise QuotaExceeded(
                        f"user {job.owner!r} already has {row[0]} queued or running jobs (limit "
                        f"{max_queued_per_user}); wait for some to finish or cancel them")
            values = {c: getattr(job, c, None) for c in _JOB_COLUMNS}
            values["status"] = job.status.value
            for key in _JSON_COLUMNS:
                values[key] = None if values[key] is None else dumps(values[key])
            await conn.execute(f"INSERT INTO jobs ({','.join(values)}) VALUES ({_placeholders(values)})",
                               tuple(values.values()))
            await append_messages(conn, job.job_id, msgs, now)
        return job

    async def get_job(self, job_id: str) -> Job | None:
        """The job, or None. Served from memory until the next write (polls never queue behind training)."""
        async def load() -> Job | None:
            row = await self.db.fetchone("SELECT * FROM jobs WHERE job_id = ?", (job_id,))
            return job_from_row(row) if row else None
        return await self.db.cached(("job", job_id), load)

    async def get_job_with_messages(self, job_id: str, since_seq: int = 0) -> tuple[Job | None, list[Message]]:
        """The job, then its messages (append-only, so they are never older than the status read first)."""
        job = await self.get_job(job_id)
        if job is None:
            return None, []
        return job, await self.get_messages(job_id, since_seq)

    async def job_pid(self, job_id: str) -> int | None:
        row = await self.db.fetchone("SELECT pid FROM jobs WHERE job_id = ?", (job_id,))
        return row[0] if row else None

    async def list_jobs(self, *, owner: str | None = None, statuses: Iterable[JobStatus] | None = None,
                        model_type: str | None = None, since_ms: int | None = None, until_ms: int | None = None,
                        order: str = "created_desc", limit: int = 100, offset: int = 0) -> tuple[list[Job], int]:
        """A page of jobs matching the filters, and the total count of matches."""
        where, params = [], []
        if owner is not None:
            where.append("owner = ?")
            params.append(owner)
        if statuses is not None:
            values = _status_values(statuses)
            if not values:
                return [], 0
            where.append(f"status IN ({_placeholders(values)})")
            params.extend(values)
        if model_type is not None:
            where.append("model_type = ?")
            params.append(model_type)
        if since_ms is not None:
            where.append("created_ms >= ?")
            params.append(since_ms)
        if until_ms is not None:
            where.append("created_ms <= ?")
            params.append(until_ms)
        if order not in _ORDERS:
            raise ValueError(f"order must be one of {sorted(_ORDERS)}")
        clause = f" WHERE {' AND '.join(where)}" if where else ""
        total = await self.db.fetchone(f"SELECT count(*) FROM jobs{clause}", params)
        rows = await self.db.fetchall(f"SELECT * FROM jobs{clause} ORDER BY {_ORDERS[order]} LIMIT ? OFFSET ?",
                                      [*params, max(0, int(limit)), max(0, int(offset))])
        return [job_from_row(r) for r in rows], int(total[0])

    async def get_messages(self, job_id: str, since_seq: int = 0) -> list[Message]:
        """Messages after `since_seq`, in order (cached like get_job)."""
        async def load() -> tuple[Message, ...]:
            rows = await self.db.fetchall(
                "SELECT seq, type, description, time_ms FROM job_messages WHERE job_id = ? ORDER BY seq", (job_id,))
            return tuple(Message(r[0], MessageType(r[1]), r[2], r[3]) for r in rows)
        messages = await self.db.cached(("messages", job_id), load)
        return [m for m in messages if m.seq > since_seq]

    async def add_messages(self, job_id: str, messages: Sequence[MessageInput]) -> None:
        async with self.db.write() as conn:
            await append_messages(conn, job_id, messages)

    async def delete_job(self, job_id: str) -> bool:
        """Delete a job and its messages (items it published stay, with job_id cleared)."""
        async with self.db.write() as conn:
            cur = await conn.execute("DELETE FROM jobs WHERE job_id = ?", (job_id,))
            return cur.rowcount > 0

    # --- guarded status changes (called by the scheduler, never by web handlers) -----------------

    async def transition(self, job_id: str, target: JobStatus, *, sources: Iterable[JobStatus] | None = None,
                         messages: Sequence[MessageInput] = (), conn: aiosqlite.Connection | None = None,
                         **fields: Any) -> Job:
        """Move a job to `target` if it is in one of `sources` (default: every allowed source).

        Extra keyword arguments set columns in the same statement; `messages` are appended in the same
        transaction. Raises InvalidTransition (with the status found) when the guard does not match.
        """
        allowed = _status_values(sources if sources is not None else sources_of(target))
        bad = set(fields) - _SETTABLE
        if bad:
            raise ValueError(f"cannot set {sorted(bad)} in a transition")
        now = now_ms()
        sets = {"status": JobStatus(target).value, "updated_ms": now}
        for key, value in fields.items():
            sets[key] = dumps(value) if key in _JSON_COLUMNS and value is not None else value
        sql = (f"UPDATE jobs SET {', '.join(f'{k} = ?' for k in sets)} "
               f"WHERE job_id = ? AND status IN ({_placeholders(allowed)}) RETURNING *")
        params = (*sets.values(), job_id, *allowed)
        if conn is not None:
            return await self._transition_in(conn, job_id, target, sql, params, messages, now)
        async with self.db.write() as conn:
            return await self._transition_in(conn, job_id, target, sql, params, messages, now)

    async def _transition_in(self, conn: aiosqlite.Connection, job_id: str, target: JobStatus, sql: str,
                             params: tuple, messages: Sequence[MessageInput], now: int) -> Job:
        row = await (await conn.execute(sql, params)).fetchone()
        if row is None:
            found = await (await conn.execute("SELECT status FROM jobs WHERE job_id = ?", (job_id,))).fetchone()
            raise InvalidTransition(job_id, JobStatus(found[0]) if found else None, target)
        await append_messages(conn, job_id, messages, now)
        return job_from_row(row)

    async def claim_next_job(self, device: str, boot_id: str, *, now: int | None = None) -> Job | None:
        """Claim the oldest claimable queued job for `device` (FIFO), or None. One guarded statement."""
        now = now or now_ms()
        queued = _status_values(QUEUED_STATUSES)
        async with self.db.write() as conn:
            row = await (await conn.execute(
                f"""UPDATE jobs SET status = 'esriJobExecuting', attempts = attempts + 1, started_ms = ?,
                        heartbeat_ms = ?, updated_ms = ?, boot_id = ?, device = ?, pid = NULL,
                        progress = coalesce(progress, 0), cancel_requested_ms = NULL
                    WHERE job_id = (SELECT job_id FROM jobs WHERE status IN ({_placeholders(queued)})
                                    AND run_after_ms <= ? ORDER BY created_ms, rowid LIMIT 1)
                      AND status IN ({_placeholders(queued)})
                    RETURNING *""",
                (now, now, now, boot_id, device, *queued, now, *queued))).fetchone()
            if row is None:
                return None
            job = job_from_row(row)
            if job.attempts == 1 and job.interruptions == 0:
                await append_messages(conn, job.job_id, _info(["Executing..."]), now)
            return job

    async def mark_waiting(self) -> int:
        """Submitted jobs that found every slot busy show esriJobWaiting ("queued for a worker"); claim takes both."""
        async with self.db.write() as conn:
            cursor = await conn.execute(
                "UPDATE jobs SET status = ?, updated_ms = ? WHERE status = ?",
                (JobStatus.WAITING.value, now_ms(), JobStatus.SUBMITTED.value))
            return cursor.rowcount

    async def record_progress(self, job_id: str, *, messages: Sequence[MessageInput] = (),
                              progress: float | None = None, heartbeat_ms: int | None = None,
                              checkpoint_epoch: int | None = None, pid: int | None = None) -> bool:
        """Batched child news for a running job in one transaction; False when the job is no longer running."""
        sets, params = ["updated_ms = ?"], [now_ms()]
        for column, value in (("progress", progress), ("heartbeat_ms", heartbeat_ms),
                              ("checkpoint_epoch", checkpoint_epoch), ("pid", pid)):
            if value is not None:
                sets.append(f"{column} = ?")
                params.append(value)
        active = _status_values(ACTIVE_STATUSES)
        async with self.db.write() as conn:
            cur = await conn.execute(
                f"UPDATE jobs SET {', '.join(sets)} WHERE job_id = ? AND status IN ({_placeholders(active)})",
                (*params, job_id, *active))
            if cur.rowcount == 0:
                return False
            await append_messages(conn, job_id, messages)
            return True

    async def request_cancel(self, job_id: str) -> tuple[Job | None, bool]:
        """Queued -> Cancelled, Executing -> Cancelling; anything else unchanged. Returns (job, changed)."""
        now = now_ms()
        async with self.db.write() as conn:
            row = await (await conn.execute("SELECT status FROM jobs WHERE job_id = ?", (job_id,))).fetchone()
            if row is None:
                return None, False
            status = JobStatus(row[0])
            if status in QUEUED_STATUSES:
                job = await self.transition(job_id, JobStatus.CANCELLED, conn=conn, finished_ms=now,
                                            cancel_requested_ms=now, progress=None,
                                            messages=_info(["Cancel complete."]))
                return job, True
            if status is JobStatus.EXECUTING:
                job = await self.transition(job_id, JobStatus.CANCELLING, conn=conn, cancel_requested_ms=now,
                                            messages=_info(["Cancel requested."]))
                return job, True
            found = await (await conn.execute("SELECT * FROM jobs WHERE job_id = ?", (job_id,))).fetchone()
            return job_from_row(found), False

    async def active_jobs(self) -> list[Job]:
        active = _status_values(ACTIVE_STATUSES)
        rows = await self.db.fetchall(f"SELECT * FROM jobs WHERE status IN ({_placeholders(active)})", active)
        return [job_from_row(r) for r in rows]

    async def orphaned_jobs(self, boot_id: str) -> list[Job]:
        """Jobs still executing/cancelling under an older server boot (their supervisor is gone)."""
        return [j for j in await self.active_jobs() if j.boot_id != boot_id]

    async def queued_count(self) -> int:
        queued = _status_values(QUEUED_STATUSES)
        row = await self.db.fetchone(f"SELECT count(*) FROM jobs WHERE status IN ({_placeholders(queued)})",
                                     queued)
        return int(row[0])

    async def next_run_after(self) -> int | None:
        """The earliest run_after_ms among queued jobs (the dispatcher sleeps until then)."""
        queued = _status_values(QUEUED_STATUSES)
        row = await self.db.fetchone(
            f"SELECT min(run_after_ms) FROM jobs WHERE status IN ({_placeholders(queued)})", queued)
        return None if row is None or row[0] is None else int(row[0])

    async def prune_finished(self, before_ms: int) -> list[str]:
        """Delete terminal jobs that finished before `before_ms`; returns their ids (work dirs go too)."""
        terminal = _status_values([JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.TIMED_OUT,
                                   JobStatus.CANCELLED])
        async with self.db.write() as conn:
            rows = await (await conn.execute(
                f"DELETE FROM jobs WHERE status IN ({_placeholders(terminal)}) AND finished_ms < ? RETURNING job_id",
                (*terminal, before_ms))).fetchall()
        return [r[0] for r in rows]
