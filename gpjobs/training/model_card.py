"""The human side of a package: loss graph, sample results, confusion matrix, model_metrics.html."""

from __future__ import annotations

import base64
import html
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np


def _plt():
    import matplotlib

    matplotlib.use("Agg")  # no display in the child; must be chosen before pyplot is imported
    import matplotlib.pyplot as plt

    return plt


def display_rgb(image) -> np.ndarray:
    """A normalised (C, H, W) chip as an (H, W, 3) 0..1 picture (first three bands, stretched per band)."""
    arr = image.detach().float().cpu().numpy()
    arr = arr[:3] if arr.shape[0] >= 3 else np.repeat(arr[:1], 3, 0)
    lo = arr.reshape(3, -1).min(1)[:, None, None]
    hi = arr.reshape(3, -1).max(1)[:, None, None]
    return np.clip((arr - lo) / np.maximum(hi - lo, 1e-6), 0, 1).transpose(1, 2, 0)


def class_colors(classes: Sequence[Any]) -> np.ndarray:
    """Colour table by model index (0 = NoData, black), from the classes' colours."""
    from gpjobs.export.info import PALETTE

    table = [(0, 0, 0)]
    for i, c in enumerate(classes):
        table.append(tuple(c.color[:3]) if getattr(c, "color", None) else PALETTE[i % len(PALETTE)])
    return np.asarray(table, dtype=np.float32) / 255.0


def save_segmentation_grid(images, truth, pred, colors: np.ndarray, path: Path, rows: int = 4) -> None:
    plt = _plt()
    n = min(rows, images.shape[0])
    fig, axes = plt.subplots(n, 3, figsize=(7.5, 2.5 * n), squeeze=False)
    for i in range(n):
        picture = display_rgb(images[i])
        for ax, (title, shown) in zip(
            axes[i],
            (
                ("image", picture),
                ("ground truth", colors[truth[i].cpu().numpy()]),
                ("prediction", colors[pred[i].cpu().numpy()]),
            ),
        ):
            ax.imshow(shown, interpolation="nearest")
            ax.set_title(title, fontsize=8)
            ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def save_classification_grid(images, truth: Sequence[str], pred: Sequence[str], path: Path, n: int = 8) -> None:
    plt = _plt()
    n = min(n, images.shape[0])
    cols = min(4, n)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(2.4 * cols, 2.6 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for i in range(n):
        ax = axes.flat[i]
        ax.imshow(display_rgb(images[i]))
        ok = truth[i] == pred[i]
        ax.set_title(f"truth: {truth[i]}\npred: {pred[i]}", fontsize=7, color="green" if ok else "red")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def save_confusion_matrix(matrix: Sequence[Sequence[int]], names: Sequence[str], path: Path) -> None:
    plt = _plt()
    m = np.asarray(matrix)
    fig, ax = plt.subplots(figsize=(1.2 + 0.6 * len(names), 1.0 + 0.6 * len(names)))
    ax.imshow(m, cmap="Blues")
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(len(names)), names, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("actual")
    for (r, c), v in np.ndenumerate(m):
        ax.text(c, r, str(v), ha="center", va="center", fontsize=8, color="white" if v > m.max() / 2 else "black")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def save_loss_graph(batch_losses: Sequence[float], history: Sequence[dict[str, Any]], path: Path) -> None:
    """Training loss per batch and validation loss per epoch (fastai's plot_losses)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4))
    if batch_losses:
        ax.plot(range(1, len(batch_losses) + 1), batch_losses, label="Train", linewidth=1)
    if history:
        per_epoch = max(1, len(batch_losses) // max(1, len(history)))
        xs = [h["epoch"] * per_epoch for h in history]
        ax.plot(xs, [h["valid_loss"] for h in history], marker="o", label="Validation")
    ax.set_xlabel("Batches processed")
    ax.set_ylabel("Loss")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def save_lr_curve(curve: dict[str, Any], path: Path) -> None:
    """The range test's batch losses and their smoothed curve, with the chosen rate marked."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4))
    if curve.get("raw"):
        ax.plot(curve["lrs"], curve["raw"], color="lightgray", linewidth=1, label="batch loss")
    ax.plot(curve["lrs"], curve["losses"], label="smoothed")
    ax.axvline(curve["chosen"], color="red", linestyle="--", label=f"chosen {curve['chosen']:.2e}")
    ax.set_xscale("log")
    ax.set_xlabel("Learning rate")
    ax.set_ylabel("Loss (smoothed)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def _img(path: Path) -> str:
    if not path.is_file():
        return ""
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<p><img src="data:image/png;base64,{data}"></p>'


def _per_class_tables(metrics: dict[str, Any]) -> list[str]:
    """Per-class tables: precision/recall/f1(/iou) rows, and per-class AP columns for detectors."""
    e = html.escape
    tables = []
    per_class = metrics.get("per_class_metrics")
    if isinstance(per_class, str):
        per_class = json.loads(per_class)
    if isinstance(per_class, dict) and per_class:
        cols = list(next(iter(per_class.values())).keys())
        tables.append(
            "<table border='1'><tr><th>class</th>"
            + "".join(f"<th>{e(c)}</th>" for c in cols)
            + "</tr>"
            + "".join(
                f"<tr><td>{e(name)}</td>" + "".join(f"<td>{row[c]:.4f}</td>" for c in cols) + "</tr>"
                for name, row in per_class.items()
            )
            + "</table>"
        )
    ap = {
        key: value
        for key, value in metrics.items()
        if key.endswith("average_precision_score") and isinstance(value, dict) and value
    }
    if ap:
        names = list(next(iter(ap.values())))
        tables.append(
            "<table border='1'><tr><th>class</th>"
            + "".join(f"<th>{e(k)}</th>" for k in ap)
            + "</tr>"
            + "".join(
                f"<tr><td>{e(str(name))}</td>"
                + "".join(f"<td>{float(values.get(name, 0.0)):.4f}</td>" for values in ap.values())
                + "</tr>"
                for name in names
            )
            + "</table>"
        )
    return tables


def _rate(value: float | None) -> str:
    return "" if value is None else f"{value:.4e}"


def schedule_rows(schedule: dict[str, Any]) -> list[tuple[str, str]]:
    """The training schedule as (label, text) rows: what a user compares two runs by."""
    rows = [("learning rate", f"{_rate(schedule['learning_rate'])} ({schedule['learning_rate_how']})")]
    backbone = schedule.get("backbone")
    if backbone is not None:
        rows.append(
            (
                "backbone",
                f"{'frozen' if backbone['frozen'] else 'trained'}, learning rate "
                f"{_rate(schedule['backbone_learning_rate'])}"
                + (f": {backbone['why']}" if backbone.get("why") else ""),
            )
        )
    finder = schedule.get("lr_finder")
    if finder:
        rows.append(
            (
                "learning-rate range test",
                f"{finder['steps']} of at most {finder['most_steps']} steps from {finder['from']:.1e} to "
                f"{finder['to']:.1e}"
                + (" (stopped: the loss diverged)" if finder["diverged"] else "")
                + f"; chose {finder['chosen']:.4e}: {finder['rule']}",
            )
        )
    cycle = schedule["one_cycle"]
    rows.append(("optimizer", schedule["optimizer"]))
    rows.append(
        (
            "one-cycle schedule",
            f"{cycle['steps']} steps; warm-up over the first {cycle['warmup_share']:.0%} from "
            f"{cycle['start_lr']:.2e} to the peak, then cosine down to {cycle['final_lr']:.2e}"
            + (f"; Adam beta1 {cycle['beta1']}" if cycle.get("beta1") else ""),
        )
    )
    if schedule.get("clip_grad_norm"):
        rows.append(("gradient clipping", f"norm {schedule['clip_grad_norm']:g}"))
    chips = ""
    if schedule.get("training_chips") is not None:
        chips = (
            f"; {schedule['training_chips']} training chips, {schedule['validation_chips']} validation chips "
            "(held out of training)"
        )
    rows.append(("batches", f"{schedule['batches_per_epoch']} per epoch of {schedule['batch_size']}{chips}"))
    if schedule.get("augment") is not None:
        rows.append(
            (
                "augmentation",
                "flips and 90-degree turns of the training chips"
                if schedule["augment"]
                else "none (training chips as they are)",
            )
        )
    stop = schedule["early_stopping"]
    rows.append(
        (
            "epochs",
            f"{schedule['epochs_run']} run of {schedule['max_epochs']}; best epoch "
            f"{schedule['best_epoch']} (by {stop['monitor']})"
            + (f"; resumed after epoch {schedule['resumed_from_epoch']}" if schedule.get("resumed_from_epoch") else ""),
        )
    )
    rows.append(
        (
            "early stopping",
            "off"
            if not stop["enabled"]
            else (
                f"patience {stop['patience']} epochs, min_delta {stop['min_delta']:g} on {stop['monitor']}"
                + ("; stopped early" if stop["stopped"] else "; did not trigger")
            ),
        )
    )
    rows.append(("seed", str(schedule["seed"])))
    return rows


def write_metrics_html(
    path: Path,
    *,
    model_name: str,
    model_type: str,
    backbone: str,
    learning_rate: str,
    metrics: dict[str, Any],
    history: Sequence[dict[str, Any]],
    characteristics: Path,
    schedule: dict[str, Any] | None = None,
) -> None:
    """model_metrics.html: an HTML fragment like arcgis.learn's (export-format.md §3.5), plus the validation
    metrics per class and the training schedule that produced them."""
    e = html.escape
    parts = [
        f"<h2>{e(model_name)}</h2>",
        (
            f"<p><b>Model type:</b> {e(model_type)}<br><b>Backbone:</b> {e(backbone)}<br>"
            f"<b>Learning rate:</b> {e(learning_rate)}</p>"
        ),
        "<h3>Training and Validation loss</h3>",
        _img(characteristics / "loss_graph.png"),
    ]
    scalars = {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    where = ""
    if schedule:
        chips = schedule.get("validation_chips")
        where = (f"<p>On the {chips} validation chips" if chips is not None else "<p>On the validation chips") + (
            f", held out of training, at the best epoch ({schedule['best_epoch']}, chosen on them by "
            f"{e(schedule['early_stopping']['monitor'])}).</p>"
        )
    parts.append(
        "<h3>Analysis of the model</h3>"
        + where
        + "<table border='1'>"
        + "".join(f"<tr><td>{e(k)}</td><td>{v:.4f}</td></tr>" for k, v in scalars.items())
        + "</table>"
    )
    parts.extend(_per_class_tables(metrics))
    if schedule:
        parts.append(
            "<h3>Training schedule</h3><table border='1'>"
            + "".join(f"<tr><td>{e(label)}</td><td>{e(text)}</td></tr>" for label, text in schedule_rows(schedule))
            + "</table>"
        )
    if history:
        keys = [k for k in history[0] if k not in ("epoch", "seconds")]
        parts.append(
            "<h3>Epochs</h3><table border='1'><tr><th>epoch</th>"
            + "".join(f"<th>{e(k)}</th>" for k in keys)
            + "</tr>"
            + "".join(
                f"<tr><td>{h['epoch']}</td>"
                + "".join(f"<td>{h[k]:.4f}</td>" if isinstance(h.get(k), (int, float)) else "<td></td>" for k in keys)
                + "</tr>"
                for h in history
            )
            + "</table>"
        )
    if (characteristics / "lr_finder.png").is_file():
        parts.append("<h3>Learning-rate range test</h3>" + _img(characteristics / "lr_finder.png"))
    parts.append("<h3>Sample Results</h3>" + _img(characteristics / "show_results.png"))
    if (characteristics / "confusion_matrix.png").is_file():
        parts.append("<h3>Confusion matrix</h3>" + _img(characteristics / "confusion_matrix.png"))
    path.write_text("\n".join(parts), encoding="utf-8")
