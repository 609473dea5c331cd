"""The contract for families that train several networks with several optimizers (GANs).

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

The engine (`gpjobs.training.engine.steppers.MultiNetworkStepper`) keeps everything else unchanged: epochs,
validation, early stopping on valid_loss, best-epoch restore, cancel and NaN checks at batch boundaries,
checkpoints (every optimizer and scheduler is saved and restored on resume). Each optimizer gets its own
one-cycle schedule over the whole run.
"""

from __future__ import annotations

from typing import Any


def is_multi_network(family: Any) -> bool:
    """True when the family steps its own optimizers (see the module docstring)."""
    return callable(getattr(family, "training_step", None)) and callable(getattr(family, "configure_optimizers", None))
