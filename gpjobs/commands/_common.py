"""Options shared by the server-side commands (serve, migrate, backup, token, check)."""

from __future__ import annotations

import argparse
import sys

from gpjobs.config import Config, ConfigError, load_config, parse_named_paths


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="FILE", help="TOML config file (see config.example.toml)")
    parser.add_argument("--data-dir", metavar="DIR", help="where the database, content and job folders live")


def config_from_args(args: argparse.Namespace, **extra: object) -> Config | None:
    """load_config with the flags that were given; prints the error and returns None when invalid."""
    overrides = {"data_dir": getattr(args, "data_dir", None), **extra}
    try:
        return load_config(getattr(args, "config", None), overrides)
    except ConfigError as exc:
        print(f"gpjobs: configuration error: {exc}", file=sys.stderr)
        return None


def named_paths(entries: list[str] | None, setting: str) -> dict[str, str] | None:
    return parse_named_paths(entries, setting=setting) if entries else None
