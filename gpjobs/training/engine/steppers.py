"""One training step per batch: forward, backward, clip, optimizer and schedule step, as one object per fit.

`SingleNetworkStepper` drives the usual one-optimizer families; `MultiNetworkStepper` the families that step
several networks themselves (`gpjobs.training.multi_network`). Both return the batch's detached loss, keep
per-part means for the epoch record, and save/restore everything they own for the checkpoint. On several
ranks both step through DistributedDataParallel (gpjobs.training.distributed): the single-network stepper
runs the family's whole loss as one DDP forward, the multi-network one hands the family a view of the model
whose sub-networks are each DDP-wrapped; gradients are averaged over the ranks before any optimizer steps.
"""

from __future__ import annotations

from typing import Any

import torch

from gpjobs.training.distributed import ddp_networks, ddp_training_loss
from gpjobs.training.engine.config import FitConfig
from gpjobs.training.engine.runtime import Runtime
from gpjobs.training.engine.schedule import clip_norm, make_optimizer, one_cycle
from gpjobs.training.models.base import ModelFamily
from gpjobs.training.multi_network import is_multi_network


class SingleNetworkStepper:
    """AdamW over the backbone/head groups on one one-cycle schedule, with AMP loss scaling and clipping."""

    def __init__(
        self,
        family: ModelFamily,
        model: torch.nn.Module,
        lr: float,
        total_steps: int,
        runtime: Runtime,
        clip: float,
        backbone_lr_factor: float,
        warmup_share: float,
    ) -> None:
        self.family, self.model, self.runtime, self.clip = family, model, runtime, clip
        self.optimizer = make_optimizer(family, model, lr, backbone_lr_factor)
        self.scheduler = one_cycle(self.optimizer, total_steps, warmup_share=warmup_share)
        self.scaler = runtime.grad_scaler()
        self.ddp = ddp_training_loss(family, model, runtime.device) if runtime.distributed else None

    def step(self, batch: Any) -> torch.Tensor:
        with self.runtime.autocast():
            if self.ddp is not None:
                loss = self.ddp(batch)
            else:
                loss = self.family.training_loss(self.model, batch, self.runtime.device)
        self.scaler.scale(loss).backward()
        if self.clip > 0:
            self.scaler.unscale_(self.optimizer)  # clip the true gradients, not the loss-scaled ones
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        return loss.detach()

    def epoch_means(self) -> dict[str, float]:
        return {}

    def state_dict(self) -> dict[str, Any]:
        return {
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])


class MultiNetworkStepper:
    """The optimizers of a multi-network family (its `configure_optimizers`), each on its own one-cycle
    schedule over the whole run; the family's `training_step` does the backward passes and optimizer steps."""

    def __init__(
        self, family: Any, model: torch.nn.Module, lr: float, total_steps: int, runtime: Runtime, warmup_share: float
    ) -> None:
        self.family, self.model, self.runtime = family, model, runtime
        self.networks = ddp_networks(model, runtime.device) if runtime.distributed else model  # what steps
        self.scaler = runtime.grad_scaler()
        self.optimizers: dict[str, torch.optim.Optimizer] = dict(family.configure_optimizers(model, lr))
        if not self.optimizers:
            raise ValueError(f"{type(family).__name__}.configure_optimizers returned no optimizer")
        cycle = bool(getattr(family, "cycle_momentum", False))
        self.schedulers = {
            name: one_cycle(opt, total_steps, warmup_share=warmup_share, cycle_momentum=cycle)
            for name, opt in self.optimizers.items()
        }
        self._parts: list[dict[str, torch.Tensor]] = []

    def step(self, batch: Any) -> torch.Tensor:
        """One batch through the family's training_step; returns the recorded loss (a detached scalar).

        Any non-finite part makes the returned value non-finite, so the engine's NaN check sees a
        diverging discriminator too (NaN * 0 stays NaN; finite parts add exactly 0).
        """
        with self.runtime.autocast():
            losses = self.family.training_step(self.networks, batch, self.runtime.device, self.optimizers, self.scaler)
        if "loss" not in losses:
            raise KeyError(f"{type(self.family).__name__}.training_step must return a 'loss' entry")
        self.scaler.update()
        for scheduler in self.schedulers.values():
            scheduler.step()
        parts = {k: v.detach().float() for k, v in losses.items()}
        self._parts.append(parts)
        guard = sum((v * 0.0 for k, v in parts.items() if k != "loss"), torch.zeros((), device=parts["loss"].device))
        return parts["loss"] + guard

    def epoch_means(self) -> dict[str, float]:
        """Mean of every loss part over the batches since the last call, as `train_<part>` (one host sync)."""
        if not self._parts:
            return {}
        names = [k for k in self._parts[0] if k != "loss"]
        means = (
            torch.stack([torch.stack([p[k] for p in self._parts]).mean() for k in names]).cpu().tolist()
            if names
            else []
        )
        self._parts.clear()
        return {f"train_{k}": float(v) for k, v in zip(names, means)}

    def state_dict(self) -> dict[str, Any]:
        return {
            "optimizers": {k: o.state_dict() for k, o in self.optimizers.items()},
            "schedulers": {k: s.state_dict() for k, s in self.schedulers.items()},
            "scaler": self.scaler.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for name, opt in self.optimizers.items():
            opt.load_state_dict(state["optimizers"][name])
        for name, scheduler in self.schedulers.items():
            scheduler.load_state_dict(state["schedulers"][name])
        self.scaler.load_state_dict(state["scaler"])


Stepper = SingleNetworkStepper | MultiNetworkStepper


def make_stepper(
    family: ModelFamily, model: torch.nn.Module, lr: float, total_steps: int, config: FitConfig, runtime: Runtime
) -> Stepper:
    if is_multi_network(family):
        return MultiNetworkStepper(family, model, lr, total_steps, runtime, config.warmup_share)
    return SingleNetworkStepper(
        family,
        model,
        lr,
        total_steps,
        runtime,
        clip_norm(family, config),
        config.backbone.lr_factor,
        config.warmup_share,
    )
