"""The loop, top to bottom: `fit` = loaders -> learning rate -> stepper -> resume -> epochs -> best weights.

Each epoch is `train_one_epoch` then `evaluate`, then the epoch's record, early stopping and the checkpoint.
"""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np
import torch

from gpjobs.training.checkpoint import CheckpointWriter, load_checkpoint
from gpjobs.training.distributed import broadcast_from_main, mean_over_ranks
from gpjobs.training.engine.config import FitConfig, FitResult, NaNLossError, OutOfMemory, is_out_of_memory
from gpjobs.training.engine.runtime import Runtime, keep_freed_memory, make_loaders, seed_epoch
from gpjobs.training.engine.schedule import (
    LR_FIND_SHARE,
    RateChoice,
    backbone_learning_rate,
    choose_learning_rate,
    describe_schedule,
)
from gpjobs.training.engine.state import TrainState
from gpjobs.training.engine.steppers import Stepper, make_stepper
from gpjobs.training.events import Reporter
from gpjobs.training.metrics import scalar_metrics
from gpjobs.training.models.base import ModelFamily

TRAIN_SHARE = 95.0  # progress percent at the end of training; packaging takes the rest


class Progress:
    """The progress bar during training: the LR range test's share (if it ran), then the epochs' batches."""

    def __init__(self, reporter: Reporter, max_epochs: int, steps: int, lr_find_ran: bool) -> None:
        self.reporter, self.max_epochs, self.steps = reporter, max_epochs, steps
        self.start = LR_FIND_SHARE if lr_find_ran else 0.0
        self.last = time.perf_counter()

    def _emit(self, epochs_done: float, epoch: int) -> None:
        percent = self.start + (TRAIN_SHARE - self.start) * epochs_done / self.max_epochs
        self.reporter.progress(percent, "train", epoch=epoch, max_epochs=self.max_epochs)

    def batch(self, epoch: int, index: int) -> None:
        """After batch `index` of `epoch`; at most one event every 2 s."""
        if time.perf_counter() - self.last > 2.0:
            self.last = time.perf_counter()
            self._emit((epoch - 1) + (index + 1) / self.steps, epoch)

    def epoch(self, epoch: int) -> None:
        self._emit(epoch, epoch)


def record_losses(pending: list[torch.Tensor], batch_losses: list[float], epoch: int, index: int) -> None:
    """Move the pending batch losses to the host (one sync) and append them; a non-finite one is a NaNLossError.
    On several ranks each loss is the mean over the ranks (the whole batch's), so every rank stops together."""
    if not pending:
        return
    values = mean_over_ranks(torch.stack(pending).float()).cpu().tolist()
    pending.clear()
    for value in values:
        if not math.isfinite(value):
            raise NaNLossError(
                f"the training loss became {value} in epoch {epoch} (batch {index + 1}); lower learning_rate, "
                "check the labels, or use a smaller batch_size"
            )
    batch_losses.extend(values)


def train_one_epoch(
    stepper: Stepper,
    loader: Any,
    epoch: int,
    batch_losses: list[float],
    *,
    runtime: Runtime,
    reporter: Reporter,
    progress: Progress,
) -> float:
    """One pass over the training batches; returns the epoch's mean training loss."""
    stepper.model.train()
    pending: list[torch.Tensor] = []
    steps = 0
    for i, batch in enumerate(loader):
        reporter.check_stop()
        pending.append(stepper.step(batch))
        if len(pending) >= runtime.sync_every:
            record_losses(pending, batch_losses, epoch, i)
        progress.batch(epoch, i)
        steps = i + 1
    record_losses(pending, batch_losses, epoch, steps)
    return float(np.mean(batch_losses[-steps:])) if steps else math.nan


def evaluate(
    family: ModelFamily, model: torch.nn.Module, loader: Any, epoch: int, runtime: Runtime
) -> tuple[float, dict[str, Any]]:
    """(validation loss, metrics) of the model in eval mode; a non-finite validation loss is a NaNLossError."""
    model.eval()
    with torch.no_grad(), runtime.autocast():
        valid_loss, metrics = family.validate(model, loader, runtime.device)
    model.train()
    if not math.isfinite(valid_loss):
        raise NaNLossError(f"the validation loss is {valid_loss} after epoch {epoch}")
    return valid_loss, metrics


def validate_on_main(
    family: ModelFamily, model: torch.nn.Module, loader: Any, epoch: int, runtime: Runtime
) -> tuple[float, dict[str, Any]]:
    """`evaluate` on rank 0 (the whole validation set), its results broadcast: every rank takes the same
    early-stopping and best-epoch decisions."""
    results = evaluate(family, model, loader, epoch, runtime) if runtime.is_main else None
    return broadcast_from_main(results)


def learning_rate(
    family: ModelFamily,
    model: torch.nn.Module,
    config: FitConfig,
    runtime: Runtime,
    data: Any,
    train_loader: Any,
    reporter: Reporter,
) -> RateChoice:
    """choose_learning_rate; on several ranks rank 0 runs it on the one-device batches and broadcasts the choice."""
    if not runtime.distributed:
        return choose_learning_rate(family, model, config, runtime, train_loader, reporter)
    choice = None
    if runtime.is_main:
        whole, _ = make_loaders(family, data, config, runtime, shard=False)
        choice = choose_learning_rate(family, model, config, runtime, whole, reporter)
    return broadcast_from_main(choice)


def read_checkpoint(config: FitConfig, reporter: Reporter) -> dict[str, Any] | None:
    """This job's checkpoint when there is one to resume; another job's (or format's) is ignored, and said so."""
    if not (config.checkpoint_path and config.resume):
        return None
    saved = load_checkpoint(config.checkpoint_path)
    if saved is not None and not TrainState.resumable(saved, config.fingerprint):
        reporter.say("warning", "a checkpoint from a different configuration was found and ignored")
        return None
    return saved


def fit(family: ModelFamily, model: torch.nn.Module, data: Any, config: FitConfig, reporter: Reporter) -> FitResult:
    """Train `model` (in place) and return the run's record; the model ends with the best epoch's weights."""
    runtime = Runtime.for_config(config)
    if runtime.device.type == "cpu":
        keep_freed_memory()
    model.to(runtime.device)
    train_loader, valid_loader = make_loaders(family, data, config, runtime)
    steps = len(train_loader)
    if steps == 0:
        raise ValueError("no training batches: fewer training chips than batch_size")

    saved = read_checkpoint(config, reporter)
    rate = (
        RateChoice(float(saved["lr"]), saved["lr_how"], saved["lr_find"])
        if saved is not None
        else learning_rate(family, model, config, runtime, data, train_loader, reporter)
    )
    lr = rate.lr
    stepper = make_stepper(family, model, lr, config.max_epochs * steps, config, runtime)
    if saved is not None:
        state = TrainState.resume(saved, model, stepper)
        reporter.say("info", f"resumed from the checkpoint after epoch {state.epoch}")
    else:
        state = TrainState(monitor=config.monitor or "valid_loss", lr=lr, lr_how=rate.how, lr_find=rate.curve)

    backbone_lr = backbone_learning_rate(family, model, lr, config)
    reporter.say(
        "info",
        (
            f"Training {family.model_type.name} ({family.backbone}) for up to {config.max_epochs} "
            f"epochs, {steps} batches of {config.batch_size} per epoch, learning rate {lr:.4e}"
            + (f" (backbone {backbone_lr:.4e})" if backbone_lr is not None else "")
            + f", on {runtime.describe()}"
        ),
    )
    progress = Progress(reporter, config.max_epochs, steps, rate.curve is not None)
    writer = (
        CheckpointWriter(
            config.checkpoint_path,
            lambda e: reporter.emit("checkpoint", epoch=e),
            serialize_now=runtime.device.type == "cpu",
        )
        if config.checkpoint_path and runtime.is_main
        else None
    )  # rank 0 alone writes the checkpoints
    try:
        while not state.stopped and state.epoch < config.max_epochs:
            epoch = state.epoch + 1
            started = time.perf_counter()
            seed_epoch(config.seed, epoch, train_loader)
            train_loss = train_one_epoch(
                stepper, train_loader, epoch, state.batch_losses, runtime=runtime, reporter=reporter, progress=progress
            )
            reporter.check_stop()
            valid_loss, metrics = validate_on_main(family, model, valid_loader, epoch, runtime)
            end_epoch(
                family,
                model,
                state,
                config,
                reporter,
                epoch=epoch,
                train_loss=train_loss,
                valid_loss=valid_loss,
                metrics=metrics,
                extra=stepper.epoch_means(),
                seconds=time.perf_counter() - started,
            )
            if writer is not None:
                contents = state.checkpoint(config.fingerprint, model, stepper)
                writer.submit(epoch, contents, frozen=state.frozen_entries())
            progress.epoch(epoch)
    except (RuntimeError, MemoryError) as exc:
        if isinstance(exc, MemoryError) or is_out_of_memory(exc):
            raise OutOfMemory(str(exc).splitlines()[0] if str(exc) else "out of memory") from exc
        raise
    finally:
        if writer is not None:  # the last epoch's checkpoint is on disk before we return or fail
            writer.wait()
    if state.best_state is not None:
        model.load_state_dict(state.best_state)
        if state.best_epoch != state.epoch:
            reporter.say(
                "info", f"Restored the best epoch ({state.best_epoch}, {state.monitor} {state.best_score:.4f})"
            )
    return state.result(backbone_lr, describe_schedule(family, config, state, steps, backbone_lr, data))


def end_epoch(
    family: ModelFamily,
    model: torch.nn.Module,
    state: TrainState,
    config: FitConfig,
    reporter: Reporter,
    *,
    epoch: int,
    train_loss: float,
    valid_loss: float,
    metrics: dict[str, Any],
    extra: dict[str, float],
    seconds: float,
) -> None:
    """Record the epoch, keep the best weights, report it, and decide on early stopping."""
    scalars = scalar_metrics(metrics)
    if state.monitor != "valid_loss" and state.monitor not in scalars:
        reporter.say(
            "warning",
            f"monitor '{state.monitor}' is not a metric of {family.model_type.name} "
            f"(available: valid_loss, {', '.join(scalars)}); using valid_loss",
        )
        state.fall_back_to_valid_loss(valid_loss)
    score = valid_loss if state.monitor == "valid_loss" else scalars[state.monitor]
    record = {
        "epoch": epoch,
        "train_loss": train_loss,
        "valid_loss": valid_loss,
        **scalars,
        **extra,
        "seconds": round(seconds, 3),
    }
    best = state.end_epoch(record, metrics, score, model, config.min_delta)
    # The server (and the console reporter) render this as "Epoch 3/10: train_loss ..." lines.
    reporter.emit(
        "epoch",
        epoch=epoch,
        max_epochs=config.max_epochs,
        train_loss=train_loss,
        valid_loss=valid_loss,
        metrics=scalars,
        seconds=round(seconds, 3),
        best=best,
    )
    if config.stop_training and state.bad_epochs >= config.patience and epoch < config.max_epochs:
        state.stopped = True
        reporter.say(
            "info",
            f"Early stopping: {state.monitor} did not improve by {config.min_delta} for "
            f"{config.patience} epochs; best epoch {state.best_epoch} ({state.monitor} "
            f"{state.best_score:.4f})",
        )
