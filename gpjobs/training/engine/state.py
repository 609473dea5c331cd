"""The training state: everything a run has learnt about itself, and the checkpoint that carries it.

`TrainState` is written to the checkpoint and read back from it in one place (`checkpoint` / `resume`), with
the weights, the stepper's optimizers/schedules/scaler and the RNG states beside it: a resumed run continues
exactly where the interrupted one stopped.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch

from gpjobs.training.checkpoint import cpu_state_dict, rng_state, set_rng_state
from gpjobs.training.engine.config import FitResult

CHECKPOINT_VERSION = 2  # bumped when the keys change: an older checkpoint is then not resumed


@dataclass
class TrainState:
    monitor: str  # what early stopping and the best epoch follow
    lr: float  # the peak learning rate of the run
    lr_how: str = ""  # how it was chosen
    lr_find: dict[str, Any] | None = None  # the LR range test's curve, when it chose `lr`
    epoch: int = 0  # epochs finished
    history: list[dict[str, Any]] = field(default_factory=list)  # one record per epoch
    batch_losses: list[float] = field(default_factory=list)  # every training batch's loss
    best_epoch: int = 0
    best_score: float = math.nan
    best_metrics: dict[str, Any] = field(default_factory=dict)
    best_valid_loss: float = math.nan
    best_state: dict[str, torch.Tensor] | None = None  # the best epoch's weights (CPU copy)
    # Early stopping's own reference, as fastai's EarlyStoppingCallback keeps it apart from SaveModelCallback's
    # best: the score when the monitor last improved by min_delta.
    stop_reference: float = math.nan
    bad_epochs: int = 0  # epochs since the monitor last improved by min_delta
    stopped: bool = False  # early stopping fired
    resumed_from_epoch: int = 0

    def __post_init__(self) -> None:
        if math.isnan(self.best_score):
            self.best_score = math.inf if self.minimise else -math.inf
        if math.isnan(self.stop_reference):
            self.stop_reference = self.best_score

    @property
    def minimise(self) -> bool:
        """fastai's 'auto' mode: a monitored loss goes down, any other metric up."""
        return "loss" in self.monitor

    # --- one epoch's record ----------------------------------------------------------------------

    def fall_back_to_valid_loss(self, valid_loss: float) -> None:
        """The monitor is not a metric of this family: follow valid_loss from here on."""
        self.monitor = "valid_loss"
        self.best_score = valid_loss + 1.0 if self.best_state is None else self.best_valid_loss
        self.stop_reference = self.best_score

    def end_epoch(
        self, record: dict[str, Any], metrics: dict[str, Any], score: float, model: torch.nn.Module, min_delta: float
    ) -> bool:
        """Add the epoch's record; keep its weights when the monitor is better than the best so far, by any
        margin (fastai's SaveModelCallback, which arcgis.learn's best-epoch reload uses); count the epoch against
        early stopping's patience unless it improved by min_delta (its EarlyStoppingCallback). Returns whether
        the weights were kept. With min_delta in both, an epoch that bettered the best by less was dropped for
        an older one: bench/quality.py yolov3 palms seed 43, validation AP 0.7426 at the last epoch against
        0.7418 at the fourth, held-out Esri AP / COCO mAP@0.5 0.746 / 0.618 there against 0.673 / 0.370."""
        self.epoch = record["epoch"]
        self.history.append(record)

        def beats(reference: float, margin: float) -> bool:
            return score < reference - margin if self.minimise else score > reference + margin

        improved = self.best_state is None or beats(self.best_score, 0.0)
        if improved:
            self.best_state, self.best_score, self.best_epoch = cpu_state_dict(model), score, self.epoch
            self.best_metrics, self.best_valid_loss = metrics, record["valid_loss"]
        if beats(self.stop_reference, min_delta):
            self.stop_reference, self.bad_epochs = score, 0
        else:
            self.bad_epochs += 1
        return improved

    # --- checkpoint ------------------------------------------------------------------------------

    def checkpoint(self, fingerprint: dict[str, Any], model: torch.nn.Module, stepper: Any) -> dict[str, Any]:
        """The checkpoint's contents (the writer copies the tensors before training goes on)."""
        return {
            "version": CHECKPOINT_VERSION,
            "fingerprint": fingerprint,
            "epoch": self.epoch,
            "lr": self.lr,
            "lr_how": self.lr_how,
            "lr_find": self.lr_find,
            "monitor": self.monitor,
            "history": self.history,
            "batch_losses": self.batch_losses,
            "best_epoch": self.best_epoch,
            "best_score": self.best_score,
            "best_metrics": self.best_metrics,
            "best_valid_loss": self.best_valid_loss,
            "stop_reference": self.stop_reference,
            "bad_epochs": self.bad_epochs,
            "stopped": self.stopped,
            # the best epoch is usually this one: don't write the same weights twice (its CPU copy is the model's)
            "best_state": None if self.best_epoch == self.epoch else self.best_state,
            "model": self.best_state if self._model_is_best else model.state_dict(),
            "stepper": stepper.state_dict(),
            "rng": rng_state(),
        }

    def frozen_entries(self) -> tuple[str, ...]:
        """The checkpoint entries that are already private CPU copies (the best epoch's weights, which
        `end_epoch` replaces and never modifies): the writer need not copy them again."""
        return ("best_state", "model") if self._model_is_best else ("best_state",)

    @property
    def _model_is_best(self) -> bool:
        return self.best_epoch == self.epoch and self.best_state is not None

    @staticmethod
    def resumable(saved: dict[str, Any] | None, fingerprint: dict[str, Any]) -> bool:
        """Whether `saved` is a checkpoint of this very job, in this checkpoint format."""
        return (
            saved is not None and saved.get("version") == CHECKPOINT_VERSION and saved.get("fingerprint") == fingerprint
        )

    @classmethod
    def resume(cls, saved: dict[str, Any], model: torch.nn.Module, stepper: Any) -> TrainState:
        """Load the weights, the stepper and the RNG states from `saved`; the state it recorded."""
        model.load_state_dict(saved["model"])
        stepper.load_state_dict(saved["stepper"])
        set_rng_state(saved["rng"])
        return cls(
            monitor=saved["monitor"],
            lr=float(saved["lr"]),
            lr_how=saved["lr_how"],
            lr_find=saved["lr_find"],
            epoch=saved["epoch"],
            history=saved["history"],
            batch_losses=saved["batch_losses"],
            best_epoch=saved["best_epoch"],
            best_score=saved["best_score"],
            best_metrics=saved["best_metrics"],
            best_valid_loss=saved["best_valid_loss"],
            stop_reference=saved.get("stop_reference", saved["best_score"]),  # none before it was kept apart
            bad_epochs=saved["bad_epochs"],
            stopped=saved["stopped"],
            best_state=saved["best_state"] if saved["best_state"] is not None else saved["model"],
            resumed_from_epoch=saved["epoch"],
        )

    # --- the run's record --------------------------------------------------------------------------

    def result(self, backbone_learning_rate: float | None, schedule: dict[str, Any]) -> FitResult:
        return FitResult(
            history=self.history,
            batch_losses=self.batch_losses,
            best_epoch=self.best_epoch,
            best_metrics=self.best_metrics,
            best_valid_loss=self.best_valid_loss,
            best_score=self.best_score,
            monitor=self.monitor,
            learning_rate=self.lr,
            lr_find=self.lr_find,
            stopped_early=self.stopped,
            epochs_run=self.epoch,
            resumed_from_epoch=self.resumed_from_epoch,
            lr_how=self.lr_how,
            backbone_learning_rate=backbone_learning_rate,
            schedule=schedule,
        )
