"""What a fit is asked to do (FitConfig), what it returns (FitResult), and how it fails."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from gpjobs.training.engine.policy import BackbonePolicy
from gpjobs.training.lr_finder import BUDGET_SHARE, MOST_POINTS


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
    lr_find_iterations: int = MOST_POINTS  # the LR range test's most points (fastai's num_it)
    lr_find_share: float = BUDGET_SHARE  # ... and the most it may take of the job's planned training steps
    warmup_share: float = 0.3  # one-cycle: the share of the steps the rate climbs to its peak (fastai's 0.3)
    # How the backbone trains (run_job decides with backbone_policy and freezes the model accordingly);
    # the default is arcgis.learn's slice(lr/10, lr).
    backbone: BackbonePolicy = field(default_factory=lambda: BackbonePolicy(False, 0.1))
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
    lr_how: str = ""  # how the learning rate was chosen
    backbone_learning_rate: float | None = None  # the backbone's peak rate; None: no backbone group
    schedule: dict[str, Any] = field(default_factory=dict)  # the schedule as run (describe_schedule), for the card
