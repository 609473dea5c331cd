"""The engine's hook for families that train several networks with several optimizers (GANs).

A family opts in by defining, next to the usual ModelFamily methods:

    configure_optimizers(model, lr) -> dict[str, torch.optim.Optimizer]
        one optimizer per network (param group "lr" = that network's peak learning rate);
    training_step(model, batch, device, optimizers, scaler) -> dict[str, Tensor]
        one batch: forward, `scaler.scale(loss).backward()` and `scaler.step(opt)` for each optimizer
        in the order the method needs (e.g. D then G), zeroing its own gradients; returns detached
        scalar losses, with "loss" = the value recorded as the training loss (the generator objective);
    default_learning_rate: float   used when the job gives no learning_rate (no LR range test: the
        adversarial losses have no minimum to find);
    cycle_momentum: bool           whether one-cycle also cycles Adam's beta1 (off for GANs, which use
        beta1 = 0.5).

The engine keeps everything else unchanged: epochs, validation, early stopping on valid_loss, best-epoch
restore, cancel and NaN checks at batch boundaries, checkpoints (every optimizer and scheduler is saved
and restored on resume). Each optimizer gets its own one-cycle schedule over the whole run.
"""

from __future__ import annotations

from typing import Any, Callable

import torch


def is_multi_network(family: Any) -> bool:
    """True when the family steps its own optimizers (see the module docstring)."""
    return callable(getattr(family, "training_step", None)) and callable(getattr(family, "configure_optimizers", None))


class MultiNetworkStepper:
    """Owns the optimizers and schedulers of a multi-network family for one fit."""

    def __init__(self, family: Any, model: torch.nn.Module, lr: float, total_steps: int, device: torch.device,
                 scaler: "torch.amp.GradScaler", autocast: Callable[[], Any]) -> None:
        self.family, self.model, self.device, self.scaler, self.autocast = family, model, device, scaler, autocast
        self.optimizers: dict[str, torch.optim.Optimizer] = dict(family.configure_optimizers(model, lr))
        if not self.optimizers:
            raise ValueError(f"{type(family).__name__}.configure_optimizers returned no optimizer")
        cycle = bool(getattr(family, "cycle_momentum", False))
        self.schedulers = {
            name: torch.optim.lr_scheduler.OneCycleLR(
                opt, max_lr=[g["lr"] for g in opt.param_groups], total_steps=max(1, total_steps), pct_start=0.3,
                div_factor=25.0, final_div_factor=1e4, anneal_strategy="cos", cycle_momentum=cycle)
            for name, opt in self.optimizers.items()}
        self._parts: list[dict[str, torch.Tensor]] = []

    def step(self, batch: Any) -> torch.Tensor:
        """One batch through the family's training_step; returns the recorded loss (a detached scalar).

        Any non-finite part makes the returned value non-finite, so the engine's NaN check sees a
        diverging discriminator too (NaN * 0 stays NaN; finite parts add exactly 0).
        """
        with self.autocast():
            losses = self.family.training_step(self.model, batch, self.device, self.optimizers, self.scaler)
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
        means = torch.stack([torch.stack([p[k] for p in self._parts]).mean() for k in names]).cpu().tolist() \
            if names else []
        self._parts.clear()
        return {f"train_{k}": float(v) for k, v in zip(names, means)}

    def state_dict(self) -> dict[str, Any]:
        return {"optimizers": {k: o.state_dict() for k, o in self.optimizers.items()},
                "schedulers": {k: s.state_dict() for k, s in self.schedulers.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for name, opt in self.optimizers.items():
            opt.load_state_dict(state["optimizers"][name])
        for name, scheduler in self.schedulers.items():
            scheduler.load_state_dict(state["schedulers"][name])
