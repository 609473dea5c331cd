"""The trained model folder and its `.dlpk` (export-format.md §3), and reading a package back.

Folder `<output>/<name>/`: `<name>.emd`, `<name>.pth` (state dict), `<name>.pt` (TorchScript, when the
family can be traced), `GpjobsInference.py` (standalone inference: torch + numpy only), `model_metrics.html`,
`training_log.json`, `ModelCharacteristics/` (loss_graph.png, show_results.png, lr_finder.png, ...).
The `.dlpk` is a ZIP of that folder with the members at the zip root, written atomically.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import tempfile
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Callable, Iterator

import torch

from gpjobs.catalog import MODEL_TYPES, lookup_model_type
from gpjobs.paths import PathError, open_in_store, read_bytes_in_store
from gpjobs.training.checkpoint import atomic_write

if TYPE_CHECKING:
    from gpjobs.training.engine import FitResult
    from gpjobs.training.models.base import ModelFamily

INFERENCE_SCRIPT = Path(__file__).parent / "inference" / "GpjobsInference.py"
GPJOBS_VERSION = "0.1.0"


class PackageError(ValueError):
    """A pretrained_model / predict package that cannot be used (names the file and what is wrong)."""


def _lr_text(lr: float) -> str:
    # arcgis.learn writes discriminative rates this way (export-format.md §3.3)
    return f"slice('{lr / 10:.4e}', '{lr:.4e}', None)"


def write_package(output_dir: Path, name: str, *, family: "ModelFamily", model: torch.nn.Module,
                  fit: "FitResult", show_batch: Any, weights_outcome: str, arguments: dict[str, Any],
                  export_emd: dict[str, Any] | None = None, say: Callable[[str, str], None] | None = None,
                  extra_emd: dict[str, Any] | None = None) -> Path:
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
    torchscript = None
    example = family.example_input()
    if example is not None:
        try:
            with torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore")  # torch.jit deprecation and tracer notes: not for users
                traced = torch.jit.trace(model, example, check_trace=False, strict=False)
            traced.save(str(folder / f"{name}.pt"))
            torchscript = f"{name}.pt"
        except Exception as exc:  # tracing is a bonus for inference; the .pth is the model
            say("warning", f"TorchScript export skipped: {type(exc).__name__}: {exc}")
    shutil.copy2(INFERENCE_SCRIPT, folder / INFERENCE_SCRIPT.name)

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
    emd.update({
        "ModelFile": f"{name}.pth",
        "ModelFormat": "NCHW",
        "ImageSpaceUsed": emd.get("ImageSpaceUsed") or export_emd.get("ImageSpaceUsed") or "MAP_SPACE",
        "LearningRate": _lr_text(fit.learning_rate),
        "backend": "pytorch",
        "backbone": family.backbone.lower(),
        f"monitored_{fit.monitor}": fit.best_score,
        "resize_to": None,
        "PretrainedWeights": weights_outcome,
        "TorchScriptFile": torchscript,
        "GpjobsVersion": GPJOBS_VERSION,
        "Gpjobs": {
            "model_type": family.model_type.name, "backbone": family.backbone, "arguments": arguments,
            "format": info.format, "task": info.task, "source_bands": info.source_bands, "dtype": info.dtype,
            "best_epoch": fit.best_epoch, "epochs_run": fit.epochs_run, "stopped_early": fit.stopped_early,
            "valid_loss": fit.best_valid_loss,
            "learning_rate": fit.learning_rate,
            "lr_finder": None if not fit.lr_find else {
                "chosen": fit.lr_find["chosen"], "points": len(fit.lr_find["lrs"]),
                "min_lr": fit.lr_find["lrs"][0], "max_lr": fit.lr_find["lrs"][-1]},
        },
    })
    for key in ("MinCellSize", "MaxCellSize"):
        if key not in emd and key in export_emd:
            emd[key] = export_emd[key]
    emd.update(extra_emd or {})
    (folder / f"{name}.emd").write_text(json.dumps(emd, indent=4, default=str), encoding="utf-8")
    (folder / "training_log.json").write_text(json.dumps({
        "history": fit.history, "batch_losses": fit.batch_losses, "lr_finder": fit.lr_find,
        "best_epoch": fit.best_epoch, "monitor": fit.monitor, "best_score": fit.best_score,
        "metrics": fit.best_metrics}, indent=1, default=str), encoding="utf-8")
    model_card.write_metrics_html(
        folder / "model_metrics.html", model_name=name, model_type=family.model_type.name,
        backbone=family.backbone.lower(), learning_rate=emd["LearningRate"], metrics=fit.best_metrics,
        history=fit.history, characteristics=chars)

    dlpk = Path(output_dir) / f"{name}.dlpk"

    def write_zip(tmp: Path) -> None:
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf:
            for path in sorted(folder.rglob("*")):
                if path.is_file():
                    # float weights and PNGs do not compress; storing them keeps packaging fast
                    stored = path.suffix.lower() in (".pth", ".pt", ".png")
                    zf.write(path, path.relative_to(folder).as_posix(),
                             compress_type=zipfile.ZIP_STORED if stored else zipfile.ZIP_DEFLATED)

    atomic_write(dlpk, write_zip)
    return dlpk


# --- reading ---------------------------------------------------------------------------------


@dataclass
class Package:
    folder: Path
    emd_path: Path
    emd: dict[str, Any]
    root: Path  # every file of the package is read inside it: its store, or the folder a .dlpk was extracted to

    @property
    def model_type(self) -> str:
        ours = self.emd.get("Gpjobs") or {}
        if ours.get("model_type"):
            return str(ours["model_type"])
        name = str(self.emd.get("ModelName", ""))
        for info in MODEL_TYPES.values():
            if info.esri_model_name and info.esri_model_name.lower() == name.lower():
                return info.name
        raise PackageError(f"{self.emd_path.name}: ModelName {name!r} is not a model type this server trains")

    @property
    def backbone(self) -> str:
        ours = self.emd.get("Gpjobs") or {}
        return str(ours.get("backbone") or (self.emd.get("ModelParameters") or {}).get("backbone") or "").upper()

    @property
    def arguments(self) -> dict[str, Any]:
        return dict((self.emd.get("Gpjobs") or {}).get("arguments") or {})

    @property
    def weights_path(self) -> Path:
        return self.emd_path.parent / str(self.emd.get("ModelFile", ""))

    def open_weights(self) -> BinaryIO:
        """The ModelFile opened for reading; PackageError when it is missing or leads outside the package's
        store (a ModelFile of "../../x" or a link out)."""
        try:
            return open_in_store(self.weights_path, self.root)
        except (PathError, OSError) as exc:
            reason = exc if isinstance(exc, PathError) else "is missing or unreadable"
            raise PackageError(f"{self.emd_path.name}: ModelFile {self.weights_path.name}: {reason}") from None


@contextlib.contextmanager
def open_package(path: str | Path, root: str | Path | None = None) -> Iterator[Package]:
    """A .dlpk (extracted to a temp dir for the duration), a model folder, or a .emd file.

    `root`: the root of the store the package lies in; its files are read only inside it (a link out is a
    PackageError naming the file). None for a package of the server's own content store or a local file:
    then nothing is read outside the package's own folder.
    """
    path = Path(path)
    if not path.exists():
        raise PackageError(f"{path}: no such package")
    confine = Path(root) if root is not None else (path if path.is_dir() else path.parent)
    with contextlib.ExitStack() as stack:
        if path.is_file() and path.suffix.lower() != ".emd":
            try:
                archive = stack.enter_context(open_in_store(path, confine))
            except PathError as exc:
                raise PackageError(f"pretrained_model: {exc}") from None
            if not zipfile.is_zipfile(archive):
                raise PackageError(f"{path.name}: not a .dlpk (ZIP) file")
            tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="gpjobs-dlpk-")))
            confine = tmp
            with zipfile.ZipFile(archive) as zf:
                for member in zf.namelist():  # refuse members escaping the folder
                    target = (tmp / member).resolve()
                    if not target.is_relative_to(tmp.resolve()):
                        raise PackageError(f"{path.name}: member {member!r} points outside the package")
                zf.extractall(tmp)
            folder = tmp
        elif path.is_dir():
            folder = path
        else:
            folder = path.parent
        emds = [path] if path.suffix.lower() == ".emd" else sorted(folder.glob("*.emd"))
        if len(emds) != 1:
            raise PackageError(f"{path.name}: a package needs exactly one .emd at its top level, found {len(emds)}")
        try:
            emd = json.loads(read_bytes_in_store(emds[0], confine).decode("utf-8-sig"))
        except PathError as exc:
            raise PackageError(f"pretrained_model: {exc}") from None
        except (OSError, ValueError, RecursionError) as exc:
            raise PackageError(f"{emds[0].name}: not a readable .emd ({exc})") from exc
        if not isinstance(emd, dict):
            raise PackageError(f"{emds[0].name}: not a readable .emd (it does not hold a JSON object)")
        yield Package(folder, emds[0], emd, confine)


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
    family = family_for(model_type.name)(model_type, info, package.backbone or model_type.default_backbone, args,
                                         WeightsPolicy.skip("weights come from the package"), say)
    model = family.build()
    with package.open_weights() as weights:
        state = torch.load(weights, map_location="cpu", weights_only=True)
    model.load_state_dict(state)
    return family, model.eval()
