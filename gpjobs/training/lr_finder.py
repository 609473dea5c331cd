"""Learning-rate range test (fastai's lr_find, models.md §2.3), bounded to a share of the job, and its rule.

The sweep raises the rate exponentially from 1e-7 to 10, one training batch per point, and stops early
when the loss diverges. It takes at most `BUDGET_SHARE` of the job's planned training steps (and at most
`MOST_POINTS`); a job too short for `FEWEST_POINTS` gets no sweep (the caller trains at a default rate).

The rule reads the curve smoothed by a centred running median (fastai's online EMA, 0.98 over 100 points,
lags the loss by tens of points, so its minimum sits far past the real one; a mean spreads one wild batch
over its neighbours):
- when the loss fell clearly below the start of the sweep (by more than NOISE_MARGIN x the noise of one
  batch's loss), a tenth of the rate where the fall ended (within KNEE of the lowest loss): fastai v1's
  "minimum / 10", robust to a noisy plateau after the minimum; at most HIGHEST_CHOICE (a curve that keeps
  falling to lr 1 says more about one step per rate than about training at it);
- otherwise the sweep saw only noise (too few steps for this model to learn measurably): the default
  rate, or a tenth of the rate from which the loss rose for good, if that is lower.
arcgis.learn's rule (the midpoint of the longest decreasing subsequence) picks 1e-5..1e-4 on such noisy
curves, where plain loops train well at 1e-3 (issue #17).
"""

from __future__ import annotations

import copy
import itertools
import math
import statistics
from collections.abc import Callable
from typing import Any

import torch

START_LR, END_LR = 1e-7, 10.0
BUDGET_SHARE = 0.1  # the sweep takes at most this share of the job's planned training steps
FEWEST_POINTS = 20  # below this a curve over 8 decades cannot tell a minimum from noise
MOST_POINTS = 100  # fastai's num_it
DIVERGED = 4.0  # stop when the smoothed loss exceeds this many times its best (fastai)
DEFAULT_LR = 1e-3  # Adam's customary rate: when no sweep runs or the curve shows no minimum
NOISE_MARGIN = 3.0  # a fall (or rise) counts when it exceeds this many times one batch's loss noise
KNEE = 0.1  # the descent ends where the loss is within this share of its total fall from the minimum
HIGHEST_CHOICE = 1e-2  # AdamW above this rarely trains these networks: a fall that ends past 0.1 is capped


def sweep_points(planned_steps: int, share: float = BUDGET_SHARE, most: int = MOST_POINTS) -> int:
    """Points the range test may take for a job of `planned_steps` training steps (0: too short for one)."""
    points = min(most, int(planned_steps * share))
    return points if points >= FEWEST_POINTS else 0


def smoothing_window(points: int) -> float:
    """The smoothing window in points: a tenth of the sweep (10 of fastai's 100), at least 2."""
    return max(2.0, points / 10)


def running_median(values: list[float], window: float) -> list[float]:
    """Centred running median over ~`window` points: no lag, and one wild batch cannot move it."""
    half = max(1, int(window) // 2)
    return [statistics.median(values[max(0, i - half) : i + half + 1]) for i in range(len(values))]


def batch_noise(raw: list[float]) -> float:
    """The spread of one batch's loss around the curve, from successive differences (robust: MAD-based)."""
    steps = [abs(b - a) for a, b in itertools.pairwise(raw)]
    return 1.4826 * statistics.median(steps) / math.sqrt(2)


def pick_learning_rate(lrs: list[float], raw: list[float], default: float = DEFAULT_LR) -> tuple[float, str]:
    """(learning rate, why) from a sweep's raw batch losses (see the module docstring)."""
    n = len(raw)
    if n < 3:
        raise ValueError("the learning-rate sweep produced fewer than 3 points")
    smooth = running_median(raw, smoothing_window(n))
    start = statistics.median(raw[: max(3, n // 5)])  # rates too small to change anything yet
    margin = NOISE_MARGIN * batch_noise(raw)
    lowest = min(range(n), key=smooth.__getitem__)
    drop = start - smooth[lowest]
    if drop > margin:  # the sweep learned: take the end of the descent (flat or noisy after it, or diverging)
        knee = next(i for i in range(n) if smooth[i] <= smooth[lowest] + KNEE * drop)
        if lrs[knee] / 10 > HIGHEST_CHOICE:
            return HIGHEST_CHOICE, (
                f"the loss stopped falling at {lrs[knee]:.1e}; a tenth of that, capped at {HIGHEST_CHOICE:.0e}"
            )
        return lrs[knee] / 10, f"the loss stopped falling at {lrs[knee]:.1e}; a tenth of that"
    # Only noise: the loss rose for good (it stays above the start to the end of the sweep) from `rise` on.
    above = [v > start + margin for v in smooth]
    rise = next((i for i in range(n) if all(above[i:])), None)
    if rise is not None and lrs[rise] / 10 < default:
        return lrs[rise] / 10, (f"no fall beyond the noise, and the loss rose from {lrs[rise]:.1e}; a tenth of that")
    return default, f"no fall beyond the noise; the default {default:.0e}"


def lr_range_test(
    model: torch.nn.Module,
    optimizer_factory: Callable[[], torch.optim.Optimizer],
    step: Callable[[Any], torch.Tensor],
    batches: Callable[[], Any],
    *,
    num_it: int = MOST_POINTS,
    start_lr: float = START_LR,
    end_lr: float = END_LR,
    default_lr: float = DEFAULT_LR,
    check_stop: Callable[[], None] = lambda: None,
    on_step: Callable[[int, int], None] = lambda i, total: None,
) -> dict[str, Any]:
    """Sweep the learning rate exponentially over `num_it` batches (repeating epochs if needed) and stop early
    when the running smoothed loss exceeds DIVERGED x its best or turns NaN; the model's weights are restored
    and its gradients cleared.

    `step(batch)` returns the loss after backward; `batches()` yields training batches (called again when an
    epoch runs out). Returns {"lrs", "raw", "losses" (smoothed), "chosen", "reason", "points", "diverged"}.
    """
    saved = copy.deepcopy(model.state_dict())
    optimizer = optimizer_factory()
    ratio = (end_lr / start_lr) ** (1 / max(1, num_it - 1))
    beta = 1 - 1 / smoothing_window(num_it)
    lrs: list[float] = []
    raw: list[float] = []
    avg, best, diverged = 0.0, math.inf, False
    iterator = iter(batches())
    try:
        for i in range(num_it):
            check_stop()
            try:
                batch = next(iterator)
            except StopIteration:
                iterator = iter(batches())
                batch = next(iterator)
            lr = start_lr * ratio**i
            for group in optimizer.param_groups:
                group["lr"] = lr
            optimizer.zero_grad(set_to_none=True)
            loss = step(batch)
            optimizer.step()
            value = float(loss.detach())
            if not math.isfinite(value):
                diverged = True
                break
            lrs.append(lr)
            raw.append(value)
            on_step(i, num_it)
            avg = beta * avg + (1 - beta) * value
            smoothed = avg / (1 - beta ** (i + 1))
            best = min(best, smoothed)
            if i > 0 and smoothed > DIVERGED * best:
                diverged = True
                break
    finally:  # leave no trace: the weights as they were, and no gradient for the first training step to add to
        model.load_state_dict(saved)
        model.zero_grad(set_to_none=True)
    if len(lrs) < 3:
        raise FloatingPointError("the learning-rate range test diverged at once; set learning_rate explicitly")
    chosen, reason = pick_learning_rate(lrs, raw, default_lr)
    return {
        "lrs": lrs,
        "raw": raw,
        "losses": running_median(raw, smoothing_window(len(raw))),
        "chosen": chosen,
        "reason": reason,
        "points": num_it,
        "diverged": diverged,
    }
