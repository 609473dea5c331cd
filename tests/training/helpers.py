"""Shared helpers for the engine/model tests (train tiny jobs in-process)."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

from gpjobs.training.events import ListReporter
from gpjobs.training.protocol import ExitCode, JobSpec

REPO = Path(__file__).resolve().parents[2]


def make_spec(tmp: Path, folders: list[Path], model_type: str, **kw: Any) -> JobSpec:
    defaults: dict[str, Any] = dict(job_id="t", in_folders=[str(f) for f in folders], model_type=model_type,
                                    output_name="model", work_dir=str(tmp / "work"), batch_size=4, max_epochs=3,
                                    learning_rate=0.01, validation_percent=25.0, num_threads=1)
    defaults.update(kw)
    return JobSpec(**defaults)


def train(spec: JobSpec, reporter: ListReporter | None = None) -> tuple[ExitCode, ListReporter]:
    from gpjobs.training.run_job import run_job

    reporter = reporter or ListReporter()
    code = run_job(spec, reporter)
    return code, reporter


def result_of(reporter: ListReporter) -> dict[str, Any]:
    results = [e for e in reporter.events if e["type"] == "result"]
    assert results, [e for e in reporter.events if e["type"] in ("failed", "message")]
    return results[-1]


def epochs_of(reporter: ListReporter) -> list[dict[str, Any]]:
    return [e for e in reporter.events if e["type"] == "epoch"]


def dlpk_members(path: str | Path) -> set[str]:
    with zipfile.ZipFile(path) as zf:
        return set(zf.namelist())


def gpjobs(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run the CLI in a fresh interpreter (proves the package stands alone)."""
    return subprocess.run([sys.executable, "-m", "gpjobs.cli", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout, env={**_env(), "OMP_NUM_THREADS": "1"})


def _env() -> dict[str, str]:
    import os

    return dict(os.environ)


def json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]
