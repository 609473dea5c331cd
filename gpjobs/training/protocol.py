"""What crosses the pipe between the server and a training child. Imports no torch.

The server starts `python -m gpjobs.training --spec <work_dir>/spec.json`, keeps the child's stdin
open as a lifeline (the child exits when it reads EOF), and reads JSON-lines events from the child's
stdout. The child re-points `sys.stdout` at stderr on start so that nothing but events reaches the pipe;
anything on stderr is free-form log text.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from enum import IntEnum
from pathlib import Path
from typing import Any

from gpjobs.tasks.inference import TASKS as INFERENCE_TASKS
from gpjobs.tasks.inference import InferenceRequest
from gpjobs.tasks.train import TASK_NAME as TRAIN_TASK
from gpjobs.tasks.train import TrainingRequest


class ExitCode(IntEnum):
    """Child exit status -> how the scheduler classifies the outcome (architecture.md, Failure classes)."""

    OK = 0
    ERROR = 1  # unexpected exception in training: Failed, no retry
    BAD_INPUT = 2  # the data or parameters are wrong: Failed, no retry, the message says how to fix it
    NAN_LOSS = 3  # training diverged: Failed, no retry
    OUT_OF_MEMORY = 4  # Failed, no retry; the message suggests a smaller batch_size / chip_size
    CANCELLED = 5  # SIGTERM honoured at a batch boundary (cancel, timeout or graceful shutdown)
    LIFELINE_LOST = 6  # stdin closed: the server is gone; resumable from the last checkpoint


@dataclass(frozen=True)
class ChildRuntime:
    """How this attempt runs, decided by the server (or `gpjobs train`), not by the user's request."""

    device: str = "cpu"  # "cpu" or "cuda:N"
    # Every device of the job, one training process (rank) each, when it has more than one (torch.distributed;
    # `device` is then rank 0's); empty: the job trains on `device` alone.
    devices: tuple[str, ...] = ()
    weights_dir: str | None = None  # torchvision-named ImageNet weight files
    missing_weights: str = "random"  # "random": train from scratch and say so; "fail": fail the job
    num_threads: int = 1  # torch.set_num_threads in the child (side-by-side children must not oversubscribe)
    loader_workers: int = 0  # data loader processes when the job's num_workers argument is unset
    heartbeat_seconds: float = 5.0
    resume: bool = True  # continue from <work_dir>/checkpoint.pt when it exists


@dataclass(frozen=True)
class JobSpec:
    """Everything a child needs to run one job: the validated request (training, or an inference task's) and
    how to run it."""

    job_id: str
    work_dir: str  # checkpoints, block journals, logs and output live here; survives restarts
    request: TrainingRequest | InferenceRequest
    runtime: ChildRuntime = field(default_factory=ChildRuntime)

    @property
    def task(self) -> str:
        return self.request.task if isinstance(self.request, InferenceRequest) else TRAIN_TASK

    @property
    def training(self) -> TrainingRequest:
        """The request of a training job (the child sends an inference spec elsewhere before training starts)."""
        if not isinstance(self.request, TrainingRequest):
            raise TypeError(f"job {self.job_id} runs {self.task}, not training")
        return self.request

    def to_json(self) -> str:
        return json.dumps(
            {
                "job_id": self.job_id,
                "work_dir": self.work_dir,
                "task": self.task,
                "request": self.request.to_json_dict(),
                "runtime": dataclasses.asdict(self.runtime),
            },
            indent=2,
        )

    @classmethod
    def from_json(cls, text: str) -> JobSpec:
        data = json.loads(text)
        task = data.get("task") or TRAIN_TASK
        reader = InferenceRequest.from_json_dict if task in INFERENCE_TASKS else TrainingRequest.from_json_dict
        return cls(
            job_id=data["job_id"],
            work_dir=data["work_dir"],
            request=reader(data["request"]),
            runtime=_runtime(data.get("runtime", {})),
        )

    @classmethod
    def load(cls, path: str | Path) -> JobSpec:
        return cls.from_json(Path(path).read_text(encoding="utf-8"))

    @property
    def checkpoint_path(self) -> Path:
        return Path(self.work_dir) / "checkpoint.pt"

    @property
    def output_dir(self) -> Path:
        return Path(self.work_dir) / "output"

    @property
    def package_path(self) -> Path:
        return self.output_dir / f"{self.request.output.name}.dlpk"


def _runtime(data: dict[str, Any]) -> ChildRuntime:
    return ChildRuntime(**{**data, "devices": tuple(data.get("devices") or ())})


# --- events (child -> server), one JSON object per line with a "type" key ----------------------
#
#   {"type": "started", "pid": 123, "device": "cpu", "torch": "2.14.1", "resumed_from_epoch": 0}
#   {"type": "message", "level": "info" | "warning" | "error", "text": "..."}
#   {"type": "progress", "percent": 42.0, "phase": "lr_find" | "train" | "validate" | "package",
#        "epoch": 3, "max_epochs": 10}
#   {"type": "epoch", "epoch": 3, "max_epochs": 10, "train_loss": 0.41, "valid_loss": 0.38,
#        "metrics": {"accuracy": 0.91}, "seconds": 12.5, "best": true}
#   {"type": "checkpoint", "epoch": 3}
#   {"type": "heartbeat"}
#   {"type": "result", "package": "/abs/out.dlpk", "model_type": "UNET", "backbone": "RESNET18",
#        "metrics": {...}, "best_epoch": 3, "epochs_run": 5}
#   inference: {"type": "result", "kind": "raster" | "features", "data": "/abs/out.tif",
#        "resources": ["/abs/out.tif.aux.xml"], "blocks": 40, "features": 0, "resumed_blocks": 12,
#        "model_type": "UNET"}
#   inference `started` adds "resumed_blocks": the blocks its journal already holds
#   {"type": "failed", "exit_code": 2, "text": "what went wrong and how to fix it", "details": ["..."]}

EVENT_TYPES = frozenset({"started", "message", "progress", "epoch", "checkpoint", "heartbeat", "result", "failed"})
MESSAGE_LEVELS = frozenset({"info", "warning", "error"})


def encode_event(event_type: str, **fields: Any) -> bytes:
    """One event as a JSON line (bytes, newline-terminated)."""
    if event_type not in EVENT_TYPES:
        raise ValueError(f"unknown event type {event_type!r}")
    return (json.dumps({"type": event_type, **fields}, default=str) + "\n").encode("utf-8")


def decode_event(line: bytes | str) -> dict[str, Any] | None:
    """The event on one line, or None for a line that is not an event (blank or stray output)."""
    text = line.decode("utf-8", "replace") if isinstance(line, bytes) else line
    text = text.strip()
    if not text.startswith("{"):
        return None
    try:
        event = json.loads(text)
    except json.JSONDecodeError:
        return None
    if not isinstance(event, dict) or event.get("type") not in EVENT_TYPES:
        return None
    return event
