"""SQLite connections: one writer behind an asyncio lock (BEGIN IMMEDIATE ... COMMIT), separate readers.

aiosqlite serialises statements per connection but does not isolate transactions between coroutines that
share it (anchors.md §2.4), so every write goes through `Database.write()`, which holds the lock for the
whole transaction. Readers run with query_only=ON and see committed snapshots only (WAL).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import aiosqlite
import orjson

MIN_SQLITE = (3, 35, 0)  # UPDATE ... RETURNING
BUSY_TIMEOUT_MS = 5000  # only matters for a second process (gpjobs token/backup while the server runs)
MAX_CACHED = 10_000  # cached reads kept (entries are small: a job row, a page of messages, a rendered body)
MAX_SCOPES = 50_000  # scope versions kept before they are all forgotten (with a generation bump)


class StoreError(RuntimeError):
    """The database cannot be used (too old SQLite, edited migration, newer schema, ...)."""


def dumps(value: Any) -> str:
    return orjson.dumps(value).decode("utf-8")


def loads(text: str | bytes | None) -> Any:
    return None if text is None else orjson.loads(text)


async def _connect(path: Path, *, synchronous: str, read_only: bool) -> aiosqlite.Connection:
    # isolation_level=None: no implicit deferred BEGIN; we issue BEGIN IMMEDIATE ourselves.
    conn = await aiosqlite.connect(str(path), isolation_level=None, timeout=BUSY_TIMEOUT_MS / 1000)
    conn.row_factory = sqlite3.Row
    await conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    await conn.execute("PRAGMA foreign_keys = ON")
    await conn.execute(f"PRAGMA synchronous = {synchronous}")
    await conn.execute("PRAGMA temp_store = MEMORY")
    if read_only:
        await conn.execute("PRAGMA query_only = ON")  # a second guard: readers can never write
    return conn


class Database:
    """The connections of one database file."""

    def __init__(self, path: Path, writer: aiosqlite.Connection, readers: list[aiosqlite.Connection]) -> None:
        self.path = path
        self._writer = writer
        self._readers = readers
        self._next_reader = itertools.cycle(readers)
        self._lock = asyncio.Lock()  # binds to the running loop on first use (3.10+)
        # Read cache for hot point reads (job status polls). A write names the one job it touches (its
        # scope) or none (it may touch anything); when it ends it bumps that scope's version, or
        # `generation`, which invalidates every entry. A value is cached under the versions it was read at
        # and only if no write ended while it was read. Sound because this process is the only writer of
        # the rows it caches (jobs, messages); a test that writes behind its back bumps `generation`.
        self.generation = 0
        self._scope_versions: dict[str, int] = {}
        self._cache: dict[Any, tuple[tuple[int, int], Any]] = {}
        self._loading: dict[Any, tuple[tuple[int, int], asyncio.Future]] = {}
        self.on_write: Callable[[float], None] | None = None  # told each write transaction's seconds (metrics)

    @classmethod
    async def open(cls, path: str | Path, *, synchronous: str = "FULL", readers: int = 2) -> Database:
        if sqlite3.sqlite_version_info < MIN_SQLITE:
            raise StoreError(f"SQLite {sqlite3.sqlite_version} is too old; gpjobs needs 3.35 or newer")
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        writer = await _connect(path, synchronous=synchronous, read_only=False)
        try:
            mode = await (await writer.execute("PRAGMA journal_mode = WAL")).fetchone()
            assert mode is not None  # the pragma answers with the journal mode now in force
            if mode[0].lower() != "wal":
                raise StoreError(f"{path}: cannot switch to WAL (journal_mode={mode[0]}); use a local disk")
            try:  # status lists are one JSON-array parameter (store/sql.py)
                await writer.execute("SELECT value FROM json_each('[]')")
            except sqlite3.OperationalError:
                raise StoreError(
                    f"SQLite {sqlite3.sqlite_version} was built without its JSON functions, which "
                    "gpjobs needs; use a Python whose SQLite has them (3.38 or newer does)"
                ) from None
            reader_conns = [await _connect(path, synchronous=synchronous, read_only=True) for _ in range(readers)]
        except BaseException:
            await writer.close()
            raise
        return cls(path, writer, reader_conns)

    async def close(self) -> None:
        for conn in self._readers:
            await conn.close()
        async with self._lock:
            with contextlib.suppress(sqlite3.Error):
                await self._writer.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            await self._writer.close()

    @contextlib.asynccontextmanager
    async def write(self, scope: str | None = None) -> AsyncIterator[aiosqlite.Connection]:
        """One write transaction: lock, BEGIN IMMEDIATE, yield, COMMIT (ROLLBACK on any error).

        `scope`: the one job whose rows the transaction changes (only its cached reads are dropped);
        None when it may change anything."""
        async with self._lock:
            started = time.perf_counter()
            try:
                # BEGIN inside the try: a task cancelled while awaiting it has still queued it on the
                # connection's thread, so the ROLLBACK below must follow or the connection stays in a
                # transaction ("cannot start a transaction within a transaction" on the next write).
                await self._writer.execute("BEGIN IMMEDIATE")
                yield self._writer
            except BaseException:
                with contextlib.suppress(sqlite3.Error):
                    await self._writer.execute("ROLLBACK")
                raise
            else:
                await self._writer.execute("COMMIT")
            finally:
                self._written(scope)
                if self.on_write is not None:
                    self.on_write(time.perf_counter() - started)

    def _written(self, scope: str | None) -> None:
        if scope is None or len(self._scope_versions) >= MAX_SCOPES:
            self._scope_versions.clear()  # forgetting versions is safe only together with a generation bump
            self.generation += 1
        if scope is not None:
            self._scope_versions[scope] = self._scope_versions.get(scope, 0) + 1

    def version(self, scope: str | None = None) -> tuple[int, int]:
        """What a cached read under `scope` is valid for: changes when a write of that scope (or any
        unscoped write) ends. No I/O."""
        return self.generation, self._scope_versions.get(scope, 0) if scope is not None else 0

    async def cached(self, key: Any, load: Callable[[], Awaitable[Any]], scope: str | None = None) -> Any:
        """`await load()`, memoised until the next write of `scope` (None: of anything) ends.

        Concurrent misses of one key share one load (200 pollers after a progress write cause one read)."""
        version = self.version(scope)
        hit = self._cache.get(key)
        if hit is not None and hit[0] == version:
            return hit[1]
        loading = self._loading.get(key)
        if loading is None or loading[0] != version:
            loading = (version, asyncio.ensure_future(self._load(key, version, scope, load)))
            self._loading[key] = loading
        # shield: a caller that goes away does not cancel the load the others wait for
        return await asyncio.shield(loading[1])

    async def _load(
        self, key: Any, version: tuple[int, int], scope: str | None, load: Callable[[], Awaitable[Any]]
    ) -> Any:
        try:
            value = await load()
        finally:
            if self._loading.get(key, (None,))[0] == version:
                del self._loading[key]
        if self.version(scope) == version:
            if len(self._cache) > MAX_CACHED:
                self._cache.clear()
            self._cache[key] = (version, value)
        return value

    async def fetchall(self, sql: str, params: Mapping[str, Any] | Iterable[Any] = ()) -> list[sqlite3.Row]:
        """All rows at once: no cursor is held across awaits (that would stall WAL checkpoints)."""
        bound = params if isinstance(params, Mapping) else tuple(params)
        return list(await next(self._next_reader).execute_fetchall(sql, bound))

    async def fetchone(self, sql: str, params: Mapping[str, Any] | Iterable[Any] = ()) -> sqlite3.Row | None:
        rows = await self.fetchall(sql, params)
        return rows[0] if rows else None

    async def backup_to(self, target: Path) -> None:
        """Online backup (the SQLite backup API) into `target`."""
        dest = await aiosqlite.connect(str(target))
        try:
            async with self._lock:  # a consistent copy without racing our own writer
                await self._writer.backup(dest)
        finally:
            await dest.close()
