"""The optimiser and its schedule: AdamW with discriminative groups, one-cycle, gradient clipping, and the
learning rate itself (given, the family's default, or the LR range test's choice)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch

from gpjobs.training.engine.config import FitConfig
from gpjobs.training.engine.runtime import Runtime, seed_everything
from gpjobs.training.events import Reporter
from gpjobs.training.lr_finder import DEFAULT_LR, FEWEST_POINTS, START_LR, lr_range_test, sweep_points
from gpjobs.training.models.base import ModelFamily
from gpjobs.training.multi_network import is_multi_network

LR_FIND_SHARE = 5.0  # the part of the progress bar the learning-rate range test takes when it runs

# fastai's fit_one_cycle, which arcgis.learn's fit uses (models.md §2.4)
ONE_CYCLE = {"div_factor": 25.0, "final_div_factor": 1e4, "anneal_strategy": "cos"}
ADAMW = {"betas": (0.9, 0.99), "weight_decay": 0.01}


def param_groups(
    family: ModelFamily, model: torch.nn.Module, lr: float, backbone_lr_factor: float
) -> list[dict[str, Any]]:
    """Backbone at lr * backbone_lr_factor (arcgis.learn's `slice(lr/10, lr)` when 0.1), everything else at
    lr; empty groups dropped."""
    backbone = family.backbone_parameters(model)
    head = family.head_parameters(model)
    groups = [{"params": backbone, "lr": lr * backbone_lr_factor}, {"params": head, "lr": lr}]
    return [g for g in groups if g["params"]]


def make_optimizer(
    family: ModelFamily, model: torch.nn.Module, lr: float, backbone_lr_factor: float
) -> torch.optim.Optimizer:
    return torch.optim.AdamW(param_groups(family, model, lr, backbone_lr_factor), lr=lr, **ADAMW)


def one_cycle(optimizer: torch.optim.Optimizer, total_steps: int, *, warmup_share: float, cycle_momentum: bool = True):
    """One-cycle over the whole run, each group peaking at its own rate after `warmup_share` of the steps
    (Adam's beta1 cycled 0.95 -> 0.85 -> 0.95 unless cycle_momentum is off)."""
    momentum = {"base_momentum": 0.85, "max_momentum": 0.95} if cycle_momentum else {}
    return torch.optim.lr_scheduler.OneCycleLR(
        optimizer,
        max_lr=[g["lr"] for g in optimizer.param_groups],
        total_steps=max(1, total_steps),
        pct_start=warmup_share,
        cycle_momentum=cycle_momentum,
        **ONE_CYCLE,
        **momentum,
    )


def clip_norm(family: ModelFamily, config: FitConfig) -> float:
    """Max gradient norm per step (0: no clipping): the config's, else the `clip_grad_norm` argument, else the
    family's default. Detectors clip by default: their box/class losses spike in the first steps of a
    random-initialised network and one spike can wreck the Adam moments."""
    value = config.clip_grad_norm
    if value is None:
        value = (getattr(family, "args", None) or {}).get("clip_grad_norm")
    if value is None:
        value = getattr(family, "default_clip_grad_norm", None)
    return float(value or 0.0)


def backbone_learning_rate(family: ModelFamily, model: torch.nn.Module, lr: float, config: FitConfig) -> float | None:
    """The backbone group's peak rate, or None when the optimizer has no backbone group."""
    if is_multi_network(family) or not family.backbone_parameters(model):
        return None
    return lr * config.backbone.lr_factor


def describe_schedule(
    family: ModelFamily, config: FitConfig, state: Any, steps: int, backbone_lr: float | None, data: Any
) -> dict[str, Any]:
    """The training schedule as it ran, JSON-able: what a user compares runs by (the model card, the .emd)."""
    curve = state.lr_find
    multi = is_multi_network(family)
    return {
        "learning_rate": state.lr,
        "learning_rate_how": state.lr_how,
        "backbone_learning_rate": backbone_lr,
        "backbone": None if backbone_lr is None else {"frozen": config.backbone.frozen, "why": config.backbone.reason},
        "lr_finder": None
        if curve is None
        else {
            "chosen": curve["chosen"],
            "rule": curve["reason"],
            "steps": len(curve["lrs"]),
            "most_steps": curve["points"],
            "diverged": curve["diverged"],
            "from": curve["lrs"][0],
            "to": curve["lrs"][-1],
        },
        "optimizer": (
            f"{type(family).__name__}'s optimizers" if multi else "AdamW (betas 0.9/0.99, weight decay 0.01)"
        ),
        "one_cycle": {
            "warmup_share": config.warmup_share,
            "start_lr": state.lr / ONE_CYCLE["div_factor"],
            "final_lr": state.lr / ONE_CYCLE["div_factor"] / ONE_CYCLE["final_div_factor"],
            "steps": config.max_epochs * steps,
            "beta1": None if multi else "0.95 -> 0.85 -> 0.95",
        },
        "clip_grad_norm": None if multi else clip_norm(family, config) or None,
        "batch_size": config.batch_size,
        "batches_per_epoch": steps,
        "training_chips": _length(getattr(data, "train", None)),
        "validation_chips": _length(getattr(data, "valid", None)),
        "augment": getattr(getattr(data, "train", None), "augment", None),  # flips and 90-degree turns
        "max_epochs": config.max_epochs,
        "epochs_run": state.epoch,
        "best_epoch": state.best_epoch,
        "early_stopping": {
            "enabled": config.stop_training,
            "monitor": state.monitor,
            "patience": config.patience,
            "min_delta": config.min_delta,
            "stopped": state.stopped,
        },
        "resumed_from_epoch": state.resumed_from_epoch,
        "seed": config.seed,
    }


def _length(dataset: Any) -> int | None:
    try:
        return len(dataset)
    except TypeError:
        return None


@dataclass(frozen=True)
class RateChoice:
    """The run's peak learning rate, how it was chosen (for the messages and the model card), and the LR range
    test's curve when one ran."""

    lr: float
    how: str
    curve: dict[str, Any] | None = None


def choose_learning_rate(
    family: ModelFamily,
    model: torch.nn.Module,
    config: FitConfig,
    runtime: Runtime,
    train_loader: Any,
    reporter: Reporter,
) -> RateChoice:
    """The job's rate when given; the family's default for multi-network families (adversarial losses have no
    minimum to find) and for jobs too short for a range test within its share of the job; else the LR range
    test's choice."""
    if config.learning_rate and config.learning_rate > 0:
        return RateChoice(float(config.learning_rate), "given (learning_rate)")
    default = float(getattr(family, "default_learning_rate", DEFAULT_LR))
    if is_multi_network(family):
        reporter.say(
            "info",
            f"learning_rate not set: {family.model_type.name} trains at {default:.1e} (the LR "
            "range test needs a loss with a minimum; adversarial losses have none)",
        )
        return RateChoice(default, f"default for {family.model_type.name} (adversarial losses have no minimum)")
    planned = config.max_epochs * len(train_loader)
    points = sweep_points(planned, config.lr_find_share, config.lr_find_iterations)
    if points == 0:
        why = (
            f"the job plans {planned} training steps, too few for a learning-rate range test within "
            f"{config.lr_find_share:.0%} of them (it needs {FEWEST_POINTS})"
        )
        reporter.say("info", f"learning_rate not set: {why}; training at {default:.1e}")
        return RateChoice(default, f"default: {why}")
    curve = find_learning_rate(family, model, config, runtime, train_loader, reporter, points, default)
    return RateChoice(float(curve["chosen"]), f"LR range test: {curve['reason']}", curve)


def find_learning_rate(
    family: ModelFamily,
    model: torch.nn.Module,
    config: FitConfig,
    runtime: Runtime,
    train_loader: Any,
    reporter: Reporter,
    points: int,
    default: float,
) -> dict[str, Any]:
    """The LR range test on `points` training batches (weights restored afterwards); reports its choice."""
    reporter.say(
        "info",
        f"learning_rate not set: running the learning-rate range test ({points} steps, at most "
        f"{config.lr_find_share:.0%} of the job's {config.max_epochs * len(train_loader)})",
    )
    reporter.progress(0.0, "lr_find")
    seed_everything(config.seed)
    scaler = runtime.grad_scaler()

    def step(batch: Any) -> torch.Tensor:
        with runtime.autocast():
            loss = family.training_loss(model, batch, runtime.device)
        scaler.scale(loss).backward()
        return loss

    class ScaledOptimizer:  # route optimizer.step through the grad scaler
        def __init__(self, opt: torch.optim.Optimizer) -> None:
            self.opt, self.param_groups = opt, opt.param_groups

        def zero_grad(self, set_to_none: bool = True) -> None:
            self.opt.zero_grad(set_to_none=set_to_none)

        def step(self) -> None:
            scaler.step(self.opt)
            scaler.update()

    model.train()
    last = [time.perf_counter()]

    def on_step(i: int, total: int) -> None:  # keep the poller's progress moving during the sweep
        if time.perf_counter() - last[0] > 2.0:
            last[0] = time.perf_counter()
            reporter.progress(LR_FIND_SHARE * (i + 1) / total, "lr_find")

    curve = lr_range_test(
        model,
        lambda: ScaledOptimizer(make_optimizer(family, model, START_LR, 1.0)),
        step,
        lambda: train_loader,
        num_it=points,
        default_lr=default,
        check_stop=reporter.check_stop,
        on_step=on_step,
    )
    lrs, losses = curve["lrs"], curve["losses"]
    best_i = min(range(len(losses)), key=losses.__getitem__)
    reporter.say(
        "info",
        (
            f"LR finder: {len(lrs)} steps from {lrs[0]:.1e} to {lrs[-1]:.1e}"
            + (" (stopped: the loss diverged)" if curve["diverged"] else "")
            + f"; lowest smoothed loss {losses[best_i]:.4f} at {lrs[best_i]:.1e}; chosen learning rate "
            f"{curve['chosen']:.4e} ({curve['reason']})"
        ),
    )
    return curve
