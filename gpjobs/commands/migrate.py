"""`gpjobs migrate`: apply pending schema migrations to the job database (and report its version)."""

from __future__ import annotations

import argparse
import asyncio

from gpjobs.commands._common import add_config_arguments, config_from_args

HELP = "apply pending database migrations"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser)


def run(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    if config is None:
        return 2
    from gpjobs.store import Store, StoreError
    from gpjobs.store.migrate import available_migrations

    assert config.db_path is not None  # load_config resolves it
    db_path = config.db_path

    async def main() -> int:
        try:
            store = await Store.open(db_path, synchronous=config.db_synchronous.upper())
        except StoreError as exc:
            print(f"gpjobs migrate: {exc}")
            return 1
        try:
            version = await store.schema_version()
        finally:
            await store.close()
        print(f"{config.db_path}: schema version {version} of {len(available_migrations())}")
        return 0

    return asyncio.run(main())
