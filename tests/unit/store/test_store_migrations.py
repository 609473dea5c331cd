"""Migrations: applied once with checksums; an edited or newer schema is refused; backup is usable."""

from __future__ import annotations

import shutil
import sqlite3

import pytest

from gpjobs.store import Store, StoreError
from gpjobs.store.migrate import MIGRATIONS_DIR, available_migrations, split_statements


def test_migration_files_are_numbered_and_split_into_statements():
    migrations = available_migrations()
    assert [m.version for m in migrations] == list(range(1, len(migrations) + 1))
    statements = split_statements(migrations[0].sql)
    assert any(s.startswith("CREATE TABLE jobs") for s in statements)
    assert all(sqlite3.complete_statement(s) for s in statements)


async def test_fresh_database_has_schema_and_pragmas(tmp_path):
    store = await Store.open(tmp_path / "db.sqlite3")
    try:
        assert await store.schema_version() == len(available_migrations())
        assert await store.integrity_check() == "ok"
    finally:
        await store.close()
    conn = sqlite3.connect(tmp_path / "db.sqlite3")
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_schema WHERE type = 'table'")}
    assert {"jobs", "job_messages", "items", "tokens", "schema_migrations"} <= tables
    conn.close()


async def test_reopen_applies_nothing_twice(tmp_path):
    for _ in range(2):
        store = await Store.open(tmp_path / "db.sqlite3")
        await store.close()
    rows = sqlite3.connect(tmp_path / "db.sqlite3").execute("SELECT version FROM schema_migrations").fetchall()
    assert rows == [(m.version,) for m in available_migrations()]


async def test_edited_migration_is_refused(tmp_path):
    mdir = tmp_path / "migrations"
    shutil.copytree(MIGRATIONS_DIR, mdir)
    store = await Store.open(tmp_path / "db.sqlite3", migrations_dir=mdir)
    await store.close()
    first = sorted(mdir.glob("0001_*.sql"))[0]
    first.write_text(first.read_text() + "\n-- edited\n")
    with pytest.raises(StoreError, match="edited"):
        await Store.open(tmp_path / "db.sqlite3", migrations_dir=mdir)


async def test_newer_schema_is_refused_and_new_migration_applies(tmp_path):
    mdir = tmp_path / "migrations"
    shutil.copytree(MIGRATIONS_DIR, mdir)
    n = len(available_migrations(mdir))
    (mdir / f"{n + 1:04d}_extra.sql").write_text("CREATE TABLE extra (x INTEGER);\n")
    store = await Store.open(tmp_path / "db.sqlite3", migrations_dir=mdir)
    assert await store.schema_version() == n + 1
    await store.close()
    with pytest.raises(StoreError, match="newer"):
        await Store.open(tmp_path / "db.sqlite3")  # the real dir does not know version n+1


async def test_failed_migration_rolls_back(tmp_path):
    mdir = tmp_path / "migrations"
    shutil.copytree(MIGRATIONS_DIR, mdir)
    n = len(available_migrations(mdir))
    (mdir / f"{n + 1:04d}_broken.sql").write_text("CREATE TABLE half (x INTEGER);\nTHIS IS NOT SQL;\n")
    with pytest.raises(sqlite3.OperationalError):
        await Store.open(tmp_path / "db.sqlite3", migrations_dir=mdir)
    conn = sqlite3.connect(tmp_path / "db.sqlite3")
    assert conn.execute("SELECT count(*) FROM sqlite_schema WHERE name = 'half'").fetchone()[0] == 0
    assert conn.execute("SELECT max(version) FROM schema_migrations").fetchone()[0] == n


async def test_online_backup_is_a_consistent_copy(store, make_job):
    job = await store.create_job(make_job())
    target = await store.backup(store.path.parent / "backup" / "copy.sqlite3")
    copy = await Store.open(target)
    try:
        assert (await copy.get_job(job.job_id)).job_id == job.job_id
    finally:
        await copy.close()
