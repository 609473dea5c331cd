"""The optimiser and its schedule: AdamW with discriminative groups, one-cycle, gradient clipping, and the
learning rate itself (given, the family's default, or the LR range test's choice)."""

from __future__ import annotations

import time
from typing import Any

import torch

from gpjobs.training.engine.config import FitConfig
from gpjobs.training.engine.runtime import Runtime, seed_everything
from gpjobs.training.events import Reporter
from gpjobs.training.lr_finder import lr_range_test
from gpjobs.training.models.base import ModelFamily
from gpjobs.training.multi_network import is_multi_network

LR_FIND_SHARE = 5.0  # the part of the progress bar the learning-rate range test takes when it runs

# fastai's fit_one_cycle, which arcgis.learn's fit uses (models.md §2.4)
ONE_CYCLE = {"pct_start": 0.3, "div_factor": 25.0, "final_div_factor": 1e4, "anneal_strategy": "cos"}
ADAMW = {"betas": (0.9, 0.99), "weight_decay": 0.01}


def param_groups(family: ModelFamily, model: torch.nn.Module, lr: float) -> list[dict[str, Any]]:
    """Backbone at lr / 10, everything else at lr (arcgis.learn's `slice(lr/10, lr)`); empty groups dropped."""
    backbone = family.backbone_parameters(model)
    head = family.head_parameters(model)
    groups = [{"params": backbone, "lr": lr / 10}, {"params": head, "lr": lr}]
    return [g for g in groups if g["params"]]


def make_optimizer(family: ModelFamily, model: torch.nn.Module, lr: float) -> torch.optim.Optimizer:
    return torch.optim.AdamW(param_groups(family, model, lr), lr=lr, **ADAMW)


def one_cycle(optimizer: torch.optim.Optimizer, total_steps: int, *, cycle_momentum: bool = True):
    """One-cycle over the whole run, each group peaking at its own rate (Adam's beta1 cycled 0.95 -> 0.85)."""
    momentum = {"base_momentum": 0.85, "max_momentum": 0.95} if cycle_momentum else {}
    return torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=[g["lr"] for g in optimizer.param_groups], total_steps=max(1, total_steps),
        cycle_momentum=cycle_momentum, **ONE_CYCLE, **momentum)


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


def choose_learning_rate(family: ModelFamily, model: torch.nn.Module, config: FitConfig, runtime: Runtime,
                         train_loader: Any, reporter: Reporter) -> tuple[float, dict[str, Any] | None]:
    """(peak learning rate, LR range test curve or None): the job's rate when given; the family's default for
    multi-network families (adversarial losses have no minimum to find); else the LR range test's choice."""
    if config.learning_rate and config.learning_rate > 0:
        return float(config.learning_rate), None
    if is_multi_network(family):
        lr = float(getattr(family, "default_learning_rate", 2e-4))
        reporter.say("info", f"learning_rate not set: {family.model_type.name} trains at {lr:.1e} (the LR range "
                             "test needs a loss with a minimum; adversarial losses have none)")
        return lr, None
    curve = find_learning_rate(family, model, config, runtime, train_loader, reporter)
    return float(curve["chosen"]), curve


def find_learning_rate(family: ModelFamily, model: torch.nn.Module, config: FitConfig, runtime: Runtime,
                       train_loader: Any, reporter: Reporter) -> dict[str, Any]:
    """The LR range test on the training batches (weights restored afterwards); reports its choice."""
    reporter.say("info", "learning_rate not set: running the learning-rate range test")
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

    curve = lr_range_test(model, lambda: ScaledOptimizer(make_optimizer(family, model, 1e-7)), step,
                          lambda: train_loader, num_it=config.lr_find_iterations, check_stop=reporter.check_stop,
                          on_step=on_step)
    lrs, losses = curve["lrs"], curve["losses"]
    best_i = min(range(len(losses)), key=losses.__getitem__)
    reporter.say("info", (
        f"LR finder: {len(lrs)} steps from {lrs[0]:.1e} to {lrs[-1]:.1e}; lowest smoothed loss "
        f"{losses[best_i]:.4f} at {lrs[best_i]:.1e}; chosen learning rate {curve['chosen']:.4e} "
        f"(backbone {curve['chosen'] / 10:.4e})"))
    return curve
