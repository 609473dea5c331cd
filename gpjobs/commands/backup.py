"""`gpjobs backup DEST`: an online, integrity-checked copy of the job database (safe while serving);
with --content, the published packages are copied after the database (so every item the copy
references is in the file copy)."""

from __future__ import annotations

import argparse
import asyncio
import shutil
import time
from pathlib import Path

from gpjobs.commands._common import add_config_arguments, config_from_args

HELP = "back up the job database (online) and optionally the content store"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser)
    parser.add_argument("dest", help="backup file, or a folder (a timestamped file is created in it)")
    parser.add_argument("--content", action="store_true", help="also copy the content store next to it")


def run(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    if config is None:
        return 2
    from gpjobs.store import Store, StoreError

    dest = Path(args.dest)
    if dest.is_dir() or args.dest.endswith("/"):
        dest = dest / time.strftime("gpjobs-%Y%m%d-%H%M%S.sqlite3")
    db_path = config.db_path
    assert db_path is not None  # load_config resolves it
    if not db_path.exists():
        print(f"gpjobs backup: no database at {db_path}")
        return 1

    async def main() -> int:
        try:
            store = await Store.open(db_path, migrate_schema=False)
        except StoreError as exc:
            print(f"gpjobs backup: {exc}")
            return 1
        try:
            await store.backup(dest)
        finally:
            await store.close()
        print(f"database backed up to {dest}")
        return 0

    rc = asyncio.run(main())
    if rc == 0 and args.content and config.content_dir and config.content_dir.is_dir():
        target = dest.with_suffix(".content")
        shutil.copytree(config.content_dir, target, dirs_exist_ok=True)
        print(f"content store copied to {target}")
    return rc
