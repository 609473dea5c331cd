"""`gpjobs token`: create, list and revoke API tokens (stored hashed; shown once)."""

from __future__ import annotations

import argparse
import asyncio

from gpjobs.commands._common import add_config_arguments, config_from_args

HELP = "manage API tokens: create --user NAME [--admin], list, revoke --user NAME"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser)
    parser.add_argument("action", choices=("create", "list", "revoke"))
    parser.add_argument("--user", help="user name the token acts for")
    parser.add_argument("--admin", action="store_true", help="admin role (sees every job, admin endpoints)")
    parser.add_argument("--ttl-days", type=float, help="token lifetime in days (default: no expiry)")


def run(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    if config is None:
        return 2
    if args.action in ("create", "revoke") and not args.user:
        print(f"gpjobs token {args.action}: --user NAME is required")
        return 2
    from gpjobs.app import prepare_directories
    from gpjobs.store import Store

    assert config.db_path is not None  # load_config resolves it
    db_path = config.db_path

    async def main() -> int:
        prepare_directories(config)
        store = await Store.open(db_path, synchronous=config.db_synchronous.upper())
        try:
            if args.action == "create":
                ttl = args.ttl_days * 86400 if args.ttl_days else None
                token = await store.create_token(args.user, "admin" if args.admin else "user", ttl_s=ttl)
                print(token)
            elif args.action == "revoke":
                print(f"revoked {await store.revoke_tokens(args.user)} token(s) of {args.user}")
            else:
                for user in await store.users():
                    print(f"{user['username']}\t{user['role']}\t{user['tokens']} token(s)")
        except ValueError as exc:
            print(f"gpjobs token: {exc}")
            return 2
        finally:
            await store.close()
        return 0

    return asyncio.run(main())
