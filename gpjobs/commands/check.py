"""`gpjobs check`: is this machine ready to serve? torch (in a subprocess: the server never imports it),
devices, weights directory, data stores, storage folders and database health."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
from pathlib import Path
from typing import Any

from gpjobs.commands._common import add_config_arguments, config_from_args

HELP = "report torch, devices, weights, data stores and database health"

_TORCH_PROBE = (
    "import json, torch, torchvision;"
    "print(json.dumps({'torch': torch.__version__, 'torchvision': torchvision.__version__,"
    " 'cuda_available': torch.cuda.is_available(), 'cuda_devices': torch.cuda.device_count(),"
    " 'cuda_build': torch.version.cuda}))"
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser)
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--skip-torch", action="store_true", help="do not start the torch probe (~6 s)")


def run(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    if config is None:
        return 2
    checks: list[dict[str, Any]] = []

    def add(name: str, ok: bool, detail: Any) -> None:
        checks.append({"check": name, "ok": bool(ok), "detail": detail})

    if not args.skip_torch:
        add(*probe_torch(config.trainer_command))
    cuda = [d for d in config.devices if d.startswith("cuda:")]
    add("devices", True, {"slots": config.devices, "gpus": len(cuda)})
    if config.weights_dir is None:
        add(
            "weights_dir",
            config.missing_weights == "random",
            "not configured: models train from random weights"
            if config.missing_weights == "random"
            else "not configured but missing_weights = fail: every job needing weights will fail",
        )
    else:
        add("weights_dir", config.weights_dir.is_dir(), weights_report(config.weights_dir))
    for kind, stores in (("file_share", config.file_shares), ("raster_store", config.raster_stores)):
        for name, path in stores.items():
            ok = path.is_dir() and os.access(path, os.R_OK | os.X_OK)
            if not ok and kind == "file_share" and name == "default":
                ok, note = True, "created by gpjobs serve on first start"
            else:
                note = "readable" if ok else "missing or not readable"
            add(f"{kind}:{name}", ok, {"path": str(path), "status": note})
    directories: tuple[tuple[str, Path | None], ...] = (
        ("data_dir", config.data_dir),
        ("content_dir", config.content_dir),
        ("jobs_dir", config.jobs_dir),
    )
    for label, directory in directories:
        assert directory is not None
        parent = next((p for p in (directory, *directory.parents) if p.exists()), Path("/"))
        add(label, os.access(parent, os.W_OK), {"path": str(directory), "writable": os.access(parent, os.W_OK)})
    add(*asyncio.run(check_database(config)))

    if args.json:
        print(json.dumps({"ok": all(c["ok"] for c in checks), "checks": checks}, indent=2))
    else:
        for c in checks:
            print(f"[{'ok' if c['ok'] else 'FAIL':>4}] {c['check']}: {c['detail']}")
    return 0 if all(c["ok"] for c in checks) else 1


def weights_report(weights_dir: Path) -> dict[str, Any]:
    """Which ImageNet backbones and COCO models have their file (names only; `gpjobs weights list` verifies)."""
    from gpjobs.training.weights_install import inventory

    rows = inventory(weights_dir, verify=False)
    report: dict[str, Any] = {"path": str(weights_dir)}
    for kind in ("imagenet", "coco"):
        mine = [r for r in rows if r["kind"] == kind]
        report[kind] = {"present": [r["for"] for r in mine if r["present"]], "of": len(mine)}
    report["unknown_files"] = [r["file"] for r in rows if r["kind"] == "unknown"]
    report["verify"] = "gpjobs weights list"
    return report


def probe_torch(trainer_command: list[str]) -> tuple[str, bool, Any]:
    """Import torch in a child interpreter (the one the trainer uses) and report what it sees."""
    python = trainer_command[0]
    try:
        out = subprocess.run(
            [python, "-c", _TORCH_PROBE],
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, "OMP_NUM_THREADS": "1"},
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return "torch", False, f"could not run {python}: {exc}"
    if out.returncode != 0:
        return "torch", False, (out.stderr.strip().splitlines() or ["import failed"])[-1]
    return "torch", True, json.loads(out.stdout.strip().splitlines()[-1])


async def check_database(config) -> tuple[str, bool, Any]:
    from gpjobs.store import Store, StoreError
    from gpjobs.store.migrate import available_migrations

    if not Path(config.db_path).exists():
        return "database", True, {"path": str(config.db_path), "status": "not created yet (gpjobs serve creates it)"}
    try:
        store = await Store.open(config.db_path, migrate_schema=False)
    except (StoreError, OSError) as exc:
        return "database", False, {"path": str(config.db_path), "error": str(exc)}
    try:
        version = await store.schema_version()
        integrity = await store.integrity_check()
        _, total = await store.list_jobs(limit=0)
        queued = await store.queued_count()
    except Exception as exc:  # a damaged file: report it, do not crash the check
        return "database", False, {"path": str(config.db_path), "error": str(exc)}
    finally:
        await store.close()
    latest = len(available_migrations())
    ok = integrity == "ok" and version == latest
    return (
        "database",
        ok,
        {
            "path": str(config.db_path),
            "integrity": integrity,
            "schema": f"{version}/{latest}",
            "jobs": total,
            "queued": queued,
        },
    )
