"""Shared helpers for the engine/model tests: train tiny jobs in-process, read what they packaged, predict.

run = train_and_package(tmp, folder, "UNET", backbone_model="RESNET18", max_epochs=2)
run.epochs, run.metrics, run.emd, run.package, run.members, run.messages, run.validation_data("segmentation")
predict_json(run.package, chip, "--masks-dir", str(tmp))        # `gpjobs predict --json` lines
straight, resumed = interrupted_and_resumed(tmp, folder, "UNET", max_epochs=3)
family = build_family("UNET", "RESNET34", bands=4)              # a family on a stand-in export, no data
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
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
    values: dict[str, Any] = dict(
        in_folder=",".join(str(f) for f in kw.pop("in_folders", folders)),
        model_type=model_type,
        output_name=json.dumps({"name": kw.pop("output_name", "model")}),
        batch_size=4,
        max_epochs=3,
        learning_rate=0.01,
        validation_percent=25.0,
    )
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


@dataclass(frozen=True)
class TrainedModel:
    """One tiny job trained in-process: its spec, exit code and events; the result once it packaged."""

    spec: JobSpec
    code: ExitCode
    reporter: ListReporter

    @property
    def folder(self) -> Path:
        """The (first) export folder it trained on."""
        return Path(self.spec.request.in_folders[0].local)

    @property
    def events(self) -> list[dict[str, Any]]:
        return self.reporter.events

    @property
    def epochs(self) -> list[dict[str, Any]]:
        return epochs_of(self.reporter)

    @property
    def messages(self) -> list[str]:
        return [e.get("text", "") for e in self.events if e["type"] == "message"]

    @property
    def failures(self) -> list[dict[str, Any]]:
        """The failed and message events: what an assertion on the exit code should show."""
        return [e for e in self.events if e["type"] in ("failed", "message")]

    @property
    def failure(self) -> str:
        """The text of the (first) failed event."""
        failed = [e["text"] for e in self.events if e["type"] == "failed"]
        assert failed, self.failures
        return failed[0]

    @property
    def result(self) -> dict[str, Any]:
        return result_of(self.reporter)

    @property
    def metrics(self) -> dict[str, Any]:
        return self.result["metrics"]

    @property
    def emd(self) -> dict[str, Any]:
        """The .emd inside the package."""
        return emd_of(self.result)

    @property
    def package(self) -> str:
        return self.result["package"]

    @property
    def members(self) -> set[str]:
        return dlpk_members(self.package)

    def validation_data(self, task: str, *, augment: bool = False) -> Any:
        """The job's export split again as it split it (seed 42, its validation percent): `.valid` holds the
        chips it validated on, in order."""
        from gpjobs.training.data import open_training_data

        request = self.spec.request
        return open_training_data(
            [f.local for f in request.in_folders],
            task=task,
            validation_percent=request.validation_percent,
            seed=42,
            augment=augment,
        )

    def packaged_json(self, member: str) -> Any:
        """A JSON member of the .dlpk as written (model.emd, training_log.json)."""
        with zipfile.ZipFile(self.package) as zf:
            return json.loads(zf.read(member))


def train_and_package(
    tmp: Path,
    folders: Path | list[Path],
    model_type: str,
    *,
    reporter: ListReporter | None = None,
    expect: ExitCode | None = ExitCode.OK,
    **spec_fields: Any,
) -> TrainedModel:
    """Trains `model_type` on the export folder(s) in-process, work files under `tmp`; asserts the exit code
    is `expect` (None: any). `spec_fields` go to make_spec (backbone_model, max_epochs, arguments, ...)."""
    spec = make_spec(tmp, [folders] if isinstance(folders, Path) else list(folders), model_type, **spec_fields)
    code, reporter = train(spec, reporter)
    trained = TrainedModel(spec, code, reporter)
    if expect is not None:
        assert code == expect, trained.failures
    return trained


class CancelAfterEpoch(ListReporter):
    """Asks to stop on the main thread's event for `epoch` (the writer thread's checkpoint event can come late;
    the engine waits for the pending checkpoint write before it stops, so that epoch's checkpoint is on disk)."""

    def __init__(self, epoch: int = 1) -> None:
        super().__init__()
        self.epoch = epoch

    def emit(self, event_type: str, **fields: Any) -> None:
        super().emit(event_type, **fields)
        if event_type == "epoch" and fields["epoch"] == self.epoch:
            self.request_cancel()


def interrupted_and_resumed(
    tmp: Path, folders: Path | list[Path], model_type: str, *, after_epoch: int = 1, **spec_fields: Any
) -> tuple[TrainedModel, TrainedModel]:
    """The same job trained straight through (under tmp/a) and cancelled after `after_epoch` then resumed from
    its checkpoint (under tmp/b). Returns (straight, resumed); the resumed run's events are the second run's."""
    straight = train_and_package(tmp / "a", folders, model_type, **spec_fields)
    cancelled = train_and_package(
        tmp / "b", folders, model_type, reporter=CancelAfterEpoch(after_epoch), expect=ExitCode.CANCELLED, **spec_fields
    )
    assert cancelled.spec.checkpoint_path.is_file()
    resumed = train_and_package(tmp / "b", folders, model_type, **spec_fields)
    return straight, resumed


def build_family(
    model_type: str,
    backbone: str = "RESNET18",
    *,
    bands: int = 3,
    classes: tuple[str, ...] = ("a", "b"),
    chip_size: tuple[int, int] = (32, 32),
    export_format: str | None = None,
    arguments: dict[str, Any] | None = None,
    messages: list[tuple[str, str]] | None = None,
) -> Any:
    """A model family for `model_type` on a stand-in export (`bands` bands, classes valued 1.. in order) without
    reading data: for build/step tests. `messages` collects the family's (level, text) messages."""
    from gpjobs.catalog import lookup_model_type, parse_arguments
    from gpjobs.export import ClassInfo
    from gpjobs.training.models import family_for
    from gpjobs.training.weights import WeightsPolicy

    model = lookup_model_type(model_type)
    info = SimpleNamespace(
        bands=bands,
        extract_bands=list(range(bands)),
        classes=[ClassInfo(i, name) for i, name in enumerate(classes, 1)],
        chip_size=chip_size,
        task=model.task,
        format=export_format,
    )
    sink = messages if messages is not None else []
    return family_for(model_type)(
        model,
        info,
        backbone,
        parse_arguments(model, arguments or {}),
        WeightsPolicy(),
        lambda level, text: sink.append((level, text)),
    )


def gpjobs(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run the CLI in a fresh interpreter (proves the package stands alone)."""
    return subprocess.run(
        [sys.executable, "-m", "gpjobs.cli", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )


def predict_json(package: str | Path, *chips_and_options: str | Path, timeout: float = 300) -> list[dict[str, Any]]:
    """`gpjobs predict PACKAGE CHIPS... --json [OPTIONS]` in a fresh interpreter; asserts it succeeded and
    returns its JSON lines, one per chip."""
    done = gpjobs("predict", str(package), *map(str, chips_and_options), "--json", timeout=timeout)
    assert done.returncode == 0, done.stderr[-3000:]
    return json_lines(done.stdout)


def json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def emd_of(result: dict[str, Any]) -> dict[str, Any]:
    """The `.emd` inside the package a `result` event names."""
    with zipfile.ZipFile(result["package"]) as zf:
        name = next(n for n in zf.namelist() if n.endswith(".emd"))
        return json.loads(zf.read(name))
