"""The job store: the only place in gpjobs that runs SQL.

store = await Store.open(db_path)     # applies pending migrations
...
await store.close()
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from pathlib import Path

from gpjobs.store.db import Database, StoreError
from gpjobs.store.items import ItemsMixin
from gpjobs.store.jobs import JobsMixin
from gpjobs.store.migrate import MIGRATIONS_DIR, migrate, schema_version
from gpjobs.store.tokens import TokensMixin

__all__ = ["Store", "StoreError"]


class Store(JobsMixin, ItemsMixin, TokensMixin):
    """Jobs, messages, items and tokens in one SQLite file (see store/db.py for the connection rules)."""

    def __init__(self, db: Database) -> None:
        self.db = db

    @classmethod
    async def open(
        cls,
        db_path: str | Path,
        *,
        synchronous: str = "FULL",
        migrate_schema: bool = True,
        migrations_dir: Path = MIGRATIONS_DIR,
    ) -> Store:
        db = await Database.open(db_path, synchronous=synchronous)
        try:
            if migrate_schema:
                await migrate(db, migrations_dir)
        except BaseException:
            await db.close()
            raise
        return cls(db)

    async def close(self) -> None:
        await self.db.close()

    @property
    def path(self) -> Path:
        return self.db.path

    async def schema_version(self) -> int:
        return await schema_version(self.db)

    async def backup(self, target: str | Path) -> Path:
        """Online backup to `target`: copy to a temp name, integrity-check it, then rename into place."""
        target = Path(target)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(target.name + ".tmp")
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        await self.db.backup_to(tmp)
        conn = sqlite3.connect(tmp)
        try:
            result = conn.execute("PRAGMA integrity_check").fetchone()[0]
        finally:
            conn.close()
        if result != "ok":
            tmp.unlink()
            raise StoreError(f"backup failed its integrity check: {result}")
        os.replace(tmp, target)
        return target

    async def integrity_check(self) -> str:
        row = await self.db.fetchone("PRAGMA quick_check")
        return str(row[0]) if row else "no answer"
