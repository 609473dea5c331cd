"""Learning-rate range test (fastai lr_find) and arcgis.learn's rule for picking the rate (models.md §2.3)."""

from __future__ import annotations

import copy
import math
from typing import Any, Callable

import torch


def pick_learning_rate(lrs: list[float], losses: list[float]) -> float:
    """arcgis.learn `_find_lr`: skip 5 points at each end, find the longest strictly decreasing
    subsequence of the losses, and take the point a half of the way into it (start + L/3 + L/6)."""
    if len(lrs) > 15:
        lrs, losses = lrs[5:-5], losses[5:-5]
    n = len(losses)
    if n == 0:
        raise ValueError("the learning-rate sweep produced no points")
    length = [1] * n
    prev = [-1] * n
    for i in range(n):
        for j in range(i):
            if losses[j] > losses[i] and length[j] + 1 > length[i]:
                length[i], prev[i] = length[j] + 1, j
    end = max(range(n), key=lambda i: (length[i], -i))
    start = end
    while prev[start] != -1:
        start = prev[start]
    span = end - start
    return float(lrs[start + int(span / 3) + int(span / 6)])


def lr_range_test(model: torch.nn.Module, optimizer_factory: Callable[[], torch.optim.Optimizer],
                  step: Callable[[Any], torch.Tensor], batches: Callable[[], Any], *,
                  start_lr: float = 1e-7, end_lr: float = 10.0, num_it: int = 100, beta: float = 0.98,
                  check_stop: Callable[[], None] = lambda: None,
                  on_step: Callable[[int, int], None] = lambda i, total: None) -> dict[str, Any]:
    """Sweep the learning rate exponentially over `num_it` batches (repeating epochs if needed), record the
    EMA-smoothed loss, stop when it exceeds 4x the best or turns NaN; the model's weights are restored.

    `step(batch)` returns the loss after backward; `batches()` yields training batches (called again
    when an epoch runs out). Returns {"lrs", "losses", "chosen"}.
    """
    saved = copy.deepcopy(model.state_dict())
    optimizer = optimizer_factory()
    ratio = (end_lr / start_lr) ** (1 / max(1, num_it - 1))
    lrs: list[float] = []
    losses: list[float] = []
    avg, best = 0.0, math.inf
    iterator = iter(batches())
    try:
        for i in range(num_it):
            check_stop()
            try:
                batch = next(iterator)
            except StopIteration:
                iterator = iter(batches())
                batch = next(iterator)
            lr = start_lr * ratio ** i
            for group in optimizer.param_groups:
                group["lr"] = lr
            optimizer.zero_grad(set_to_none=True)
            loss = step(batch)
            optimizer.step()
            value = float(loss.detach())
            if not math.isfinite(value):
                break
            avg = beta * avg + (1 - beta) * value
            smoothed = avg / (1 - beta ** (i + 1))
            lrs.append(lr)
            losses.append(smoothed)
            best = min(best, smoothed)
            on_step(i, num_it)
            if i > 0 and smoothed > 4 * best:
                break
    finally:
        model.load_state_dict(saved)
    if len(lrs) < 2:
        raise FloatingPointError("the learning-rate range test diverged at once; set learning_rate explicitly")
    return {"lrs": lrs, "losses": losses, "chosen": pick_learning_rate(lrs, losses)}
