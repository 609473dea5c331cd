"""What a fit is asked to do (FitConfig), what it returns (FitResult), and how it fails."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch


class NaNLossError(RuntimeError):
    """The loss became NaN or infinite."""


class OutOfMemory(RuntimeError):
    """The device (or host) ran out of memory."""


def is_out_of_memory(exc: BaseException) -> bool:
    """True for CUDA OOM and for the RuntimeErrors torch raises when host allocation fails."""
    if isinstance(exc, torch.cuda.OutOfMemoryError):
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)


@dataclass
class FitConfig:
    max_epochs: int = 20
    batch_size: int = 2
    learning_rate: float | None = None  # None or <= 0: LR range test
    stop_training: bool = True
    monitor: str = "valid_loss"
    patience: int = 5
    min_delta: float = 0.001
    seed: int = 42
    device: str = "cpu"
    mixed_precision: bool = True
    num_workers: int = 0
    checkpoint_path: Path | None = None
    resume: bool = True
    fingerprint: dict[str, Any] = field(default_factory=dict)  # a checkpoint of another job is not resumed
    lr_find_iterations: int = 100
    # Gradient-norm clipping: None = the `clip_grad_norm` argument, else the family's default; 0 = off.
    clip_grad_norm: float | None = None


@dataclass
class FitResult:
    history: list[dict[str, Any]]
    batch_losses: list[float]
    best_epoch: int
    best_metrics: dict[str, Any]
    best_valid_loss: float
    best_score: float
    monitor: str
    learning_rate: float
    lr_find: dict[str, Any] | None
    stopped_early: bool
    epochs_run: int
    resumed_from_epoch: int = 0
