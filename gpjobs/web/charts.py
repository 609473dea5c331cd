"""The job page's live loss chart: per-epoch numbers read back from the job's epoch lines, laid out as SVG
geometry (the template draws it; nothing here is markup, so autoescaping covers every label).

The numbers come from the lines `messages.epoch_line` writes for each `epoch` event ("Epoch 3/10, train_loss
0.4100, valid_loss 0.3800, accuracy 0.9100, time 12.5 s (best so far)"); a test pins the round trip.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from gpjobs.domain import Job, Message

WIDTH, HEIGHT = 460, 200  # the SVG viewBox (about the size it is shown at: labels stay readable)
PAD_LEFT, PAD_RIGHT, PAD_TOP, PAD_BOTTOM = 44, 12, 10, 26
MAX_POINTS = 400  # a 10,000-epoch job is drawn from an even sample of its epochs (the last one always)
LOSSES = ("train_loss", "valid_loss")
COLORS = {"train_loss": "#2563eb", "valid_loss": "#ea580c"}
METRIC_COLOR = "#16a34a"
_EPOCH = re.compile(r"^Epoch (\d+)/(\d+)$")
_PAIR = re.compile(r"^([A-Za-z_][\w.-]*) (-?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?|nan|inf|-inf)$")


@dataclass(frozen=True)
class EpochPoint:
    epoch: int
    max_epochs: int
    values: dict[str, float]  # train_loss, valid_loss and every metric the line carried
    best: bool = False


def parse_epoch_line(text: str) -> EpochPoint | None:
    """One `messages.epoch_line` back into numbers; None for any other message."""
    best = text.endswith(" (best so far)")
    if best:
        text = text[: -len(" (best so far)")]
    parts = text.split(", ")
    head = _EPOCH.match(parts[0])
    if head is None:
        return None
    values: dict[str, float] = {}
    for part in parts[1:]:
        if part.startswith("time ") and part.endswith(" s"):
            continue
        pair = _PAIR.match(part)
        if pair is None:
            return None
        values[pair.group(1)] = float(pair.group(2))
    return EpochPoint(int(head.group(1)), int(head.group(2)), values, best)


def epoch_history(messages: Iterable[Message]) -> list[EpochPoint]:
    """Per-epoch points in epoch order; a rerun epoch (after a resume) keeps its latest line."""
    by_epoch: dict[int, EpochPoint] = {}
    for message in messages:
        point = parse_epoch_line(message.description)
        if point is not None:
            by_epoch[point.epoch] = point
    return [by_epoch[e] for e in sorted(by_epoch)]


def epoch_progress(history: Sequence[EpochPoint], job: Job) -> dict[str, Any]:
    """What the progress bar says: percent, and the last finished epoch of how many."""
    max_epochs = history[-1].max_epochs if history else int(job.spec.get("max_epochs") or 0)
    return {
        "done": history[-1].epoch if history else 0,
        "of": max_epochs,
        "percent": 100.0 if job.status.value == "esriJobSucceeded" else float(job.progress or 0.0),
    }


def _sample(history: Sequence[EpochPoint]) -> list[EpochPoint]:
    if len(history) <= MAX_POINTS:
        return list(history)
    step = (len(history) - 1) / (MAX_POINTS - 1)
    return [history[round(i * step)] for i in range(MAX_POINTS)]


def _nice_ticks(low: float, high: float, count: int = 4) -> list[float]:
    if high <= low:
        high = low + (abs(low) or 1.0)
    raw = (high - low) / count
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    first = math.floor(low / step) * step
    return [first + i * step for i in range(count + 2) if first + i * step <= high + step * 0.999]


def _label(value: float) -> str:
    if value == 0:
        return "0"
    if abs(value) >= 1000 or abs(value) < 0.01:
        return f"{value:.1e}"
    return f"{value:.3g}"


def chart(
    title: str, points: Sequence[EpochPoint], series: Sequence[tuple[str, str]], monitor: str = ""
) -> dict[str, Any] | None:
    """Geometry of one line chart of `series` ((value name, colour)) over the epochs; None without data.
    The `monitor`ed series is marked in the legend."""
    names = [name for name, _ in series if any(math.isfinite(p.values.get(name, math.nan)) for p in points)]
    if not points or not names:
        return None
    finite = [p.values[n] for p in points for n in names if math.isfinite(p.values.get(n, math.nan))]
    yticks = _nice_ticks(min(finite), max(finite))
    y_low, y_high = yticks[0], yticks[-1]
    first, last = points[0].epoch, max(points[-1].epoch, points[0].epoch + 1)
    plot_w, plot_h = WIDTH - PAD_LEFT - PAD_RIGHT, HEIGHT - PAD_TOP - PAD_BOTTOM

    def x(epoch: float) -> float:
        return round(PAD_LEFT + plot_w * (epoch - first) / (last - first), 1)

    def y(value: float) -> float:
        return round(PAD_TOP + plot_h * (1 - (value - y_low) / ((y_high - y_low) or 1.0)), 1)

    lines = []
    for name, color in series:
        if name not in names:
            continue
        xy = [(x(p.epoch), y(p.values[name])) for p in points if math.isfinite(p.values.get(name, math.nan))]
        lines.append(
            {
                "name": name,
                "color": color,
                "points": " ".join(f"{a},{b}" for a, b in xy),
                "monitored": name == monitor,
                "dots": xy if len(xy) <= 40 else xy[-1:],
                "last": _label(points[-1].values.get(name, math.nan)),
            }
        )
    xticks = _nice_ticks(first, last, 5)
    return {
        "title": title,
        "width": WIDTH,
        "height": HEIGHT,
        "lines": lines,
        "left": PAD_LEFT,
        "right": WIDTH - PAD_RIGHT,
        "top": PAD_TOP,
        "bottom": HEIGHT - PAD_BOTTOM,
        "yticks": [{"y": y(v), "label": _label(v)} for v in yticks],
        "xticks": [{"x": x(v), "label": str(int(v))} for v in xticks if first <= v <= last and v == int(v)],
    }


def job_charts(history: Sequence[EpochPoint], monitor: str = "") -> list[dict[str, Any]]:
    """The loss chart (train and valid) and the monitored metric's chart (the first metric when the job
    monitors a loss); empty before the first epoch ends."""
    points = _sample(history)
    charts = [chart("Loss per epoch", points, [(name, COLORS[name]) for name in LOSSES], monitor)]
    metrics = [k for k in (history[-1].values if history else {}) if k not in LOSSES]
    metric = monitor if monitor in metrics else (metrics[0] if metrics else "")
    if metric:
        charts.append(chart(f"{metric} per epoch", points, [(metric, METRIC_COLOR)], monitor))
    return [c for c in charts if c is not None]
