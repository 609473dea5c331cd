"""Schema migrations: `migrations/NNNN_name.sql`, applied in order, each in one transaction, checksums recorded.

The store refuses a database whose recorded checksum differs from the file (someone edited a shipped
migration) or that records a version this code does not have (a newer gpjobs wrote it).
"""

from __future__ import annotations

import hashlib
import re
import sqlite3
from dataclasses import dataclass
from pathlib import Path

import aiosqlite

from gpjobs.domain import now_ms
from gpjobs.store import sql
from gpjobs.store.db import Database, StoreError

MIGRATIONS_DIR = Path(__file__).resolve().parents[2] / "migrations"
_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.sql.encode("utf-8")).hexdigest()


def available_migrations(directory: Path = MIGRATIONS_DIR) -> list[Migration]:
    """The migration files in version order; a gap or duplicate version is a packaging bug."""
    found = []
    for path in sorted(directory.glob("*.sql")):
        match = _NAME.match(path.name)
        if not match:
            raise StoreError(f"migration file {path.name} is not named NNNN_name.sql")
        found.append(Migration(int(match[1]), match[2], path.read_text(encoding="utf-8")))
    versions = [m.version for m in found]
    if versions != list(range(1, len(found) + 1)):
        raise StoreError(f"migrations in {directory} must be numbered 1..N without gaps, found {versions}")
    return found


async def _applied(conn: aiosqlite.Connection) -> dict[int, str]:
    await conn.execute(sql.CREATE_MIGRATIONS_TABLE)
    rows = await conn.execute_fetchall(sql.APPLIED_MIGRATIONS)
    return {int(r[0]): r[1] for r in rows}


async def migrate(db: Database, directory: Path = MIGRATIONS_DIR) -> list[int]:
    """Apply every pending migration; return the versions applied. Raises StoreError on a mismatch."""
    migrations = available_migrations(directory)
    async with db.write() as conn:
        applied = await _applied(conn)
    known = {m.version: m for m in migrations}
    newer = sorted(v for v in applied if v not in known)
    if newer:
        raise StoreError(
            f"{db.path} has schema version {max(newer)}, newer than this gpjobs knows "
            f"({len(migrations)}); upgrade gpjobs or restore a backup"
        )
    for version, digest in applied.items():
        if known[version].sha256 != digest:
            raise StoreError(
                f"migration {version:04d}_{known[version].name}.sql was edited after it was "
                f"applied to {db.path}; restore the original file (migrations are append-only)"
            )
    done = []
    for migration in migrations:
        if migration.version in applied:
            continue
        async with db.write() as conn:
            # executescript would COMMIT our BEGIN IMMEDIATE; run the statements one by one instead.
            for statement in split_statements(migration.sql):
                await conn.execute(statement)
            await conn.execute(
                sql.RECORD_MIGRATION,
                {
                    "version": migration.version,
                    "name": migration.name,
                    "sha256": migration.sha256,
                    "applied_ms": now_ms(),
                },
            )
        done.append(migration.version)
    return done


def split_statements(sql: str) -> list[str]:
    """Split a migration into complete statements (sqlite3.complete_statement handles ';' in strings)."""
    out, buf = [], ""
    for line in sql.splitlines(keepends=True):
        if not buf and line.strip().startswith("--"):
            continue
        buf += line
        if sqlite3.complete_statement(buf):
            if buf.strip():
                out.append(buf.strip())
            buf = ""
    if buf.strip() and not all(line.strip().startswith("--") or not line.strip() for line in buf.splitlines()):
        raise StoreError(f"incomplete SQL statement at the end of a migration: {buf.strip()[:80]!r}")
    return out


async def schema_version(db: Database) -> int:
    row = await db.fetchone(sql.SCHEMA_VERSION)
    return int(row[0]) if row else 0
