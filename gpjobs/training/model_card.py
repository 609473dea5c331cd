"""The human side of a package: loss graph, sample results, confusion matrix, model_metrics.html."""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path
from typing import Any, Sequence

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
        for ax, (title, shown) in zip(axes[i], (("image", picture),
                                                ("ground truth", colors[truth[i].cpu().numpy()]),
                                                ("prediction", colors[pred[i].cpu().numpy()]))):
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
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(curve["lrs"], curve["losses"])
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


def write_metrics_html(path: Path, *, model_name: str, model_type: str, backbone: str, learning_rate: str,
                       metrics: dict[str, Any], history: Sequence[dict[str, Any]], characteristics: Path) -> None:
    """model_metrics.html: an HTML fragment like arcgis.learn's (export-format.md §3.5)."""
    e = html.escape
    parts = [f"<h2>{e(model_name)}</h2>",
             f"<p><b>Model type:</b> {e(model_type)}<br><b>Backbone:</b> {e(backbone)}<br>"
             f"<b>Learning rate:</b> {e(learning_rate)}</p>",
             "<h3>Training and Validation loss</h3>", _img(characteristics / "loss_graph.png")]
    scalars = {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    parts.append("<h3>Analysis of the model</h3><table border='1'>"
                 + "".join(f"<tr><td>{e(k)}</td><td>{v:.4f}</td></tr>" for k, v in scalars.items()) + "</table>")
    per_class = metrics.get("per_class_metrics")
    if isinstance(per_class, str):
        per_class = json.loads(per_class)
    if isinstance(per_class, dict) and per_class:
        cols = list(next(iter(per_class.values())).keys())
        parts.append("<table border='1'><tr><th>class</th>" + "".join(f"<th>{e(c)}</th>" for c in cols) + "</tr>"
                     + "".join(f"<tr><td>{e(name)}</td>" + "".join(f"<td>{row[c]:.4f}</td>" for c in cols) + "</tr>"
                               for name, row in per_class.items()) + "</table>")
    if history:
        keys = [k for k in history[0] if k not in ("epoch", "seconds")]
        parts.append("<h3>Epochs</h3><table border='1'><tr><th>epoch</th>"
                     + "".join(f"<th>{e(k)}</th>" for k in keys) + "</tr>"
                     + "".join(f"<tr><td>{h['epoch']}</td>" + "".join(
                         f"<td>{h[k]:.4f}</td>" if isinstance(h.get(k), (int, float)) else "<td></td>" for k in keys)
                               + "</tr>" for h in history) + "</table>")
    parts.append("<h3>Sample Results</h3>" + _img(characteristics / "show_results.png"))
    if (characteristics / "confusion_matrix.png").is_file():
        parts.append("<h3>Confusion matrix</h3>" + _img(characteristics / "confusion_matrix.png"))
    path.write_text("\n".join(parts), encoding="utf-8")
