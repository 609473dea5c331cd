"""The trained model folder and its `.dlpk` (export-format.md §3), and loading a package's model back.

Folder `<output>/<name>/`: `<name>.emd`, `<name>.pth` (state dict), `<name>.pt` (TorchScript of the family's
deployable network: dense layers only), the Python raster function named by the .emd's `InferenceFunction`
with `gpjobs_prf_core.py` beside it (stdlib + numpy + torch only: what ArcGIS runs), `model_metrics.html`,
`training_log.json`, `ModelCharacteristics/` (loss_graph.png, show_results.png, lr_finder.png, ...).
The `.dlpk` is a ZIP of that folder with the members at the zip root, written atomically.
"""

from __future__ import annotations

import json
import shutil
import warnings
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from gpjobs.catalog import lookup_model_type
from gpjobs.inference.package import Package, PackageError, open_package
from gpjobs.training.checkpoint import atomic_write

if TYPE_CHECKING:
    from gpjobs.training.engine import FitResult
    from gpjobs.training.models.base import ModelFamily

INFERENCE_DIR = Path(__file__).parent / "inference"  # the PRFs and their shared core, shipped in packages
PRF_CORE = "gpjobs_prf_core.py"
GPJOBS_VERSION = "0.1.0"
OLDEST_TORCH = "2.0"  # the oldest torch the PRFs are tested on (make client-tools installs it)

__all__ = ["Package", "PackageError", "open_package", "write_package", "load_model"]


def _lr_text(lr: float, backbone_lr: float | None) -> str:
    # arcgis.learn writes discriminative rates as a slice, one rate as a number (export-format.md §3.3)
    if backbone_lr is None or backbone_lr == lr:
        return f"{lr:.4e}"
    return f"slice('{backbone_lr:.4e}', '{lr:.4e}', None)"


def write_package(
    output_dir: Path,
    name: str,
    *,
    family: ModelFamily,
    model: torch.nn.Module,
    fit: FitResult,
    show_batch: Any,
    weights_outcome: str,
    arguments: dict[str, Any],
    export_emd: dict[str, Any] | None = None,
    say: Callable[[str, str], None] | None = None,
    extra_emd: dict[str, Any] | None = None,
) -> Path:
    """Write the model folder and `<output_dir>/<name>.dlpk`; returns the .dlpk path."""
    from gpjobs.training import model_card

    say = say or (lambda level, text: None)
    folder = Path(output_dir) / name
    if folder.exists():
        shutil.rmtree(folder)
    chars = folder / "ModelCharacteristics"
    chars.mkdir(parents=True)
    model = model.cpu().eval()

    torch.save(model.state_dict(), folder / f"{name}.pth")
    torchscript, spec = _write_network(folder, name, family, model, say)
    for script in (family.inference_function, PRF_CORE):
        shutil.copy2(INFERENCE_DIR / script, folder / script)

    model_card.save_loss_graph(fit.batch_losses, fit.history, chars / "loss_graph.png")
    if fit.lr_find:
        model_card.save_lr_curve(fit.lr_find, chars / "lr_finder.png")
    if show_batch is not None:
        try:
            family.show_results(model, show_batch, chars / "show_results.png")
        except Exception as exc:
            say("warning", f"show_results.png skipped: {type(exc).__name__}: {exc}")
    family.extra_characteristics(model, fit.best_metrics, chars)

    info = family.info
    emd: dict[str, Any] = {**family.emd_fields(fit.best_metrics)}
    emd.update(info.to_emd())
    export_emd = export_emd or {}
    emd.update(
        {
            "ModelFile": f"{name}.pth",
            "ModelFormat": "NCHW",
            "ImageSpaceUsed": emd.get("ImageSpaceUsed") or export_emd.get("ImageSpaceUsed") or "MAP_SPACE",
            "LearningRate": _lr_text(fit.learning_rate, fit.backbone_learning_rate),
            "backend": "pytorch",
            "backbone": family.backbone.lower(),
            f"monitored_{fit.monitor}": fit.best_score,
            "resize_to": None,
            "PretrainedWeights": weights_outcome,
            "TorchScriptFile": torchscript,
            "TorchVersion": torch.__version__.split("+")[0],
            "OldestTorchVersion": OLDEST_TORCH,
            "GpjobsInference": spec,
            "GpjobsVersion": GPJOBS_VERSION,
            "Gpjobs": {
                "model_type": family.model_type.name,
                "backbone": family.backbone,
                "arguments": arguments,
                "format": info.format,
                "task": info.task,
                "source_bands": info.source_bands,
                "dtype": info.dtype,
                "best_epoch": fit.best_epoch,
                "epochs_run": fit.epochs_run,
                "stopped_early": fit.stopped_early,
                "valid_loss": fit.best_valid_loss,
                "learning_rate": fit.learning_rate,
                "lr_finder": None
                if not fit.lr_find
                else {
                    "chosen": fit.lr_find["chosen"],
                    "points": len(fit.lr_find["lrs"]),
                    "min_lr": fit.lr_find["lrs"][0],
                    "max_lr": fit.lr_find["lrs"][-1],
                },
                "schedule": fit.schedule,
            },
        }
    )
    for key in ("MinCellSize", "MaxCellSize"):
        if key not in emd and key in export_emd:
            emd[key] = export_emd[key]
    emd.update(extra_emd or {})
    (folder / f"{name}.emd").write_text(json.dumps(emd, indent=4, default=str), encoding="utf-8")
    (folder / "training_log.json").write_text(
        json.dumps(
            {
                "history": fit.history,
                "batch_losses": fit.batch_losses,
                "lr_finder": fit.lr_find,
                "best_epoch": fit.best_epoch,
                "monitor": fit.monitor,
                "best_score": fit.best_score,
                "metrics": fit.best_metrics,
            },
            indent=1,
            default=str,
        ),
        encoding="utf-8",
    )
    model_card.write_metrics_html(
        folder / "model_metrics.html",
        model_name=name,
        model_type=family.model_type.name,
        backbone=family.backbone.lower(),
        learning_rate=emd["LearningRate"],
        metrics=fit.best_metrics,
        history=fit.history,
        characteristics=chars,
        schedule=fit.schedule,
    )

    dlpk = Path(output_dir) / f"{name}.dlpk"

    def write_zip(tmp: Path) -> None:
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf:
            for path in sorted(folder.rglob("*")):
                if path.is_file():
                    # float weights and PNGs do not compress; storing them keeps packaging fast
                    stored = path.suffix.lower() in (".pth", ".pt", ".png")
                    zf.write(
                        path,
                        path.relative_to(folder).as_posix(),
                        compress_type=zipfile.ZIP_STORED if stored else zipfile.ZIP_DEFLATED,
                    )

    atomic_write(dlpk, write_zip)
    return dlpk


def _write_network(
    folder: Path, name: str, family: ModelFamily, model: torch.nn.Module, say: Callable[[str, str], None]
) -> tuple[str | None, dict[str, Any] | None]:
    """`<name>.pt`: the family's deployable network traced; returns (file name, GpjobsInference spec)."""
    try:
        network = family.deployable(model).eval()
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.jit deprecation and tracer notes: not for users
            traced = family.trace(network)
        if traced is None:
            return None, None
        traced.save(str(folder / f"{name}.pt"))
        return f"{name}.pt", {"interface": 1, **family.inference_spec(network)}
    except Exception as exc:  # the .pth still holds the model (gpjobs predict, fine-tuning); ArcGIS cannot run it
        say(
            "warning",
            f"TorchScript export failed, so ArcGIS cannot run this package ({family.inference_function} "
            f"needs {name}.pt): {type(exc).__name__}: {exc}",
        )
        return None, None


# --- reading ---------------------------------------------------------------------------------


def load_model(package: Package, *, say: Callable[[str, str], None] | None = None):
    """(family, model) rebuilt from a package alone, weights loaded, model in eval mode on the CPU."""
    from gpjobs.export.info import DataInfo
    from gpjobs.training.models import family_for
    from gpjobs.training.weights import WeightsPolicy

    say = say or (lambda level, text: None)
    model_type = lookup_model_type(package.model_type)
    info = DataInfo.from_emd(package.emd)
    ours = package.emd.get("Gpjobs") or {}
    if ours.get("task"):
        info.task = ours["task"]
    if ours.get("source_bands"):
        info.source_bands = int(ours["source_bands"])
    from gpjobs.catalog import parse_arguments

    args = parse_arguments(model_type, package.arguments)
    backbone = package.backbone or model_type.default_backbone or ""  # "": a fixed network (resolve_backbone)
    family = family_for(model_type.name)(
        model_type, info, backbone, args, WeightsPolicy.skip("weights come from the package"), say
    )
    family.load_emd(package.emd)
    model = family.build()
    with package.open_weights() as weights:
        state = torch.load(weights, map_location="cpu", weights_only=True)
    model.load_state_dict(state)
    return family, model.eval()
