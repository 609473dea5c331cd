"""Shared helpers for the engine/model tests (train tiny jobs in-process)."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

from gpjobs.paths import LocalPaths
from gpjobs.tasks.train import parse_training_request
from gpjobs.training.events import ListReporter
from gpjobs.training.protocol import ChildRuntime, ExitCode, JobSpec

REPO = Path(__file__).resolve().parents[2]


_RUNTIME_KEYS = {f.name for f in dataclasses.fields(ChildRuntime)}


def make_spec(tmp: Path, folders: list[Path], model_type: str, **kw: Any) -> JobSpec:
    """A JobSpec built the way `gpjobs train` builds one: the task's parameters (by name; `arguments` as a
    dict, `pretrained_model` a local path) through the task's own parser, plus the child's runtime settings
    (device, num_threads, resume, ...). Test defaults: 4 chips a batch, 3 epochs, lr 0.01, 25 % validation."""
    runtime = {k: kw.pop(k) for k in list(kw) if k in _RUNTIME_KEYS}
    runtime.setdefault("num_threads", 1)
    job_id, work_dir = kw.pop("job_id", "t"), kw.pop("work_dir", str(tmp / "work"))
    values: dict[str, Any] = dict(in_folder=",".join(str(f) for f in kw.pop("in_folders", folders)),
                                  model_type=model_type, output_name=json.dumps({"name": kw.pop("output_name", "model")}),
                                  batch_size=4, max_epochs=3, learning_rate=0.01, validation_percent=25.0)
    values.update(kw)
    request = parse_training_request(values, LocalPaths())
    return JobSpec(job_id=job_id, work_dir=str(work_dir), request=request, runtime=ChildRuntime(**runtime))


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


def emd_of(result: dict[str, Any]) -> dict[str, Any]:
    """The `.emd` inside the package a `result` event names."""
    with zipfile.ZipFile(result["package"]) as zf:
        name = next(n for n in zf.namelist() if n.endswith(".emd"))
        return json.loads(zf.read(name))
