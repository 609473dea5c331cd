"""`gpjobs inspect FOLDER [FOLDER...] [--json]`: the pre-training data report, without training."""

from __future__ import annotations

import argparse
import json
import sys

HELP = "Check Export Training Data folders and print the report (format, chips, size, bands, classes, problems)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("folders", nargs="+", metavar="FOLDER", help="export folder(s), trained together")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="decode only a sample of the chips (the submit-time check) instead of all of them",
    )
    parser.add_argument("--sample", type=int, default=64, help="chips decoded with --quick (default 64)")


def run(args: argparse.Namespace) -> int:
    """Exit status 0 when the data can be trained on, 1 when the report has errors."""
    from gpjobs.export import inspect_folders

    report = inspect_folders(args.folders, full=not args.quick, sample=max(1, args.sample))
    if args.json:
        sys.stdout.write(json.dumps(report.to_dict(), indent=2) + "\n")
    else:
        sys.stdout.write(report.to_text() + "\n")
    return 0 if report.ok else 1
