"""`gpjobs` command line: one sub-command per module in gpjobs.commands.

Each command module defines `HELP`, `add_arguments(parser)` and `run(args) -> int`, and imports
nothing heavy at module level (the server never imports torch; `train`/`predict` import it in run()).
"""

from __future__ import annotations

import argparse
import importlib
import sys

COMMANDS = ("serve", "train", "inspect", "predict", "infer", "weights", "token", "migrate", "backup", "check", "cert")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gpjobs", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        module = importlib.import_module(f"gpjobs.commands.{name}")
        command = sub.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(command)
        command.set_defaults(handler=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        parser.print_help()
        return 2
    return int(args.handler(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
