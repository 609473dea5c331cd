"""One job, start to end: spec -> data -> family -> fit -> package -> `result` event (or `failed`)."""

from __future__ import annotations

import contextlib
import os
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from gpjobs.catalog import ArgumentError
from gpjobs.export import DataError
from gpjobs.paths import PathError
from gpjobs.tasks.train import TrainingRequest
from gpjobs.training.data import open_training_data
from gpjobs.training.distributed import is_main_process
from gpjobs.training.engine import (
    FitConfig,
    NaNLossError,
    OutOfMemory,
    augment_policy,
    backbone_policy,
    fit,
    seed_everything,
)
from gpjobs.training.events import Reporter, StopRequested
from gpjobs.training.metrics import scalar_metrics
from gpjobs.training.models import family_for
from gpjobs.training.package import PackageError, open_package, write_package
from gpjobs.training.pretrained import start_from_pretrained
from gpjobs.training.protocol import ExitCode, JobSpec
from gpjobs.training.weights import WeightsMissing, WeightsPolicy


def run_job(spec: JobSpec, reporter: Reporter) -> ExitCode:
    """Train and package; every outcome becomes an exit code, failures a `failed` event first."""
    try:
        result = train_job(spec, reporter)
    except StopRequested as stop:
        reporter.say("warning", str(stop))
        return stop.exit_code
    except DataError as exc:
        report = getattr(exc, "report", None)
        details = list(getattr(report, "errors", []) or [])
        return _failed(reporter, ExitCode.BAD_INPUT, f"The training data cannot be used: {exc}", details)
    except (ArgumentError, PackageError, WeightsMissing, PathError) as exc:  # PathError: a file led out of its store
        return _failed(reporter, ExitCode.BAD_INPUT, str(exc))
    except NaNLossError as exc:
        return _failed(reporter, ExitCode.NAN_LOSS, f"Training diverged: {exc}")
    except OutOfMemory as exc:
        return _failed(
            reporter,
            ExitCode.OUT_OF_MEMORY,
            f"Out of memory ({exc}). Lower batch_size (now {spec.training.batch_size}) or chip_size, "
            "or choose a smaller backbone_model.",
        )
    except Exception as exc:  # noqa: BLE001 - last line of defence; the trace goes to stderr (the log)
        traceback.print_exc()
        return _failed(reporter, ExitCode.ERROR, f"Training failed: {type(exc).__name__}: {exc}")
    reporter.emit("result", **result)
    return ExitCode.OK


def _failed(reporter: Reporter, code: ExitCode, text: str, details: list[str] | None = None) -> ExitCode:
    reporter.emit("failed", exit_code=int(code), text=text, details=details or [])
    return code


def train_job(spec: JobSpec, reporter: Reporter) -> dict[str, Any]:
    """The work of one job, as a recipe: data -> model -> fit (resumes itself) -> package. Raises on failure;
    returns the `result` event's fields."""
    say = reporter.say
    request, runtime = spec.training, spec.runtime
    model_type, backbone, args = request.model_type, request.backbone, request.arguments
    torch.set_num_threads(max(1, int(runtime.num_threads)))
    for note in request.notes:
        say("warning", note)

    with contextlib.ExitStack() as stack:
        # A package to fine-tune from decides the chip size, bands and backbone, as arcgis.learn does.
        package_path = request.pretrained.path if request.pretrained is not None else None
        package = None
        if request.pretrained is not None:
            assert package_path is not None  # submit resolved the item to its package file
            package = stack.enter_context(open_package(package_path, request.pretrained.root))
        if package is not None:
            backbone = _check_pretrained_fits(package, request, backbone, say)
        chip_size = args["chip_size"]
        if chip_size is None and package is not None:
            chip_size = int(package.emd.get("ImageHeight") or 0) or None  # arcgis: data re-prepared at the emd size
        extract = args["extract_bands"]
        if extract is None and package is not None and package.emd.get("ExtractBands"):
            extract = [int(b) for b in package.emd["ExtractBands"]]

        # 1. data
        reporter.progress(0.0, "prepare")
        data = open_training_data(
            [f.local for f in request.in_folders],
            task=model_type.task,
            chip_size=chip_size,
            validation_percent=request.validation_percent,
            seed=int(args["seed"]),
            extract_bands=extract,
            augment=False,
            roots=[f.root for f in request.in_folders],
        )
        info = data.info
        if info.format not in model_type.formats:  # the folder changed since submit
            raise ArgumentError(
                f"{model_type.name} trains on {', '.join(sorted(model_type.formats))} exports; "
                f"the in_folder is {info.format}. Export the training data in one of those "
                "metadata formats or choose another model_type."
            )
        for warning in data.report.warnings:
            say("warning", warning)
        say(
            "info",
            f"Training data: {info.format}, {len(data.train)} training and {len(data.valid)} validation "
            f"chips of {info.chip_size[0]}x{info.chip_size[1]} px, {info.bands} bands, "
            f"{len(info.classes)} classes ({', '.join(c.name for c in info.classes)})",
        )

        # 2. model
        if package is not None:
            weights = WeightsPolicy.skip(f"fine-tuning from {Path(str(package_path)).name}")
        else:
            weights = WeightsPolicy(runtime.weights_dir, runtime.missing_weights)
        seed_everything(int(args["seed"]))
        family = family_for(model_type)(model_type, info, backbone, args, weights, say)
        family.attach_data(data)
        if package is not None and package.emd.get("Gpjobs"):
            family.fine_tune_from(package.emd)
        model = family.build()
        start_from_pretrained(model, family, package, weights, say)  # package weights, or COCO ones that fit
        pretrained = package is not None or weights.outcome.startswith("loaded")
        backbone_plan = backbone_policy(backbone, pretrained=pretrained, freeze_model=request.freeze_model)
        family.freeze(model, backbone_plan.frozen)
        if family.backbone_module(model) is not None:  # the GANs have none to freeze
            say("warning" if request.freeze_model and not pretrained else "info", backbone_plan.reason)
        augment_plan = augment_policy(args["augment"], pretrained=pretrained)
        data.train.augment = augment_plan.on  # the loaders are made in fit, after this
        say("info", augment_plan.reason)

        # 3. fit (resumes from the job's checkpoint when there is one)
        num_workers = args["num_workers"]
        config = FitConfig(
            max_epochs=request.max_epochs,
            batch_size=request.batch_size,
            learning_rate=request.learning_rate,
            stop_training=request.stop_training,
            monitor=str(args.get("monitor") or family.default_monitor),
            patience=int(args["patience"]),
            min_delta=float(args["min_delta"]),
            seed=int(args["seed"]),
            device=runtime.device,
            mixed_precision=bool(args["mixed_precision"]),
            num_workers=int(runtime.loader_workers if num_workers is None else num_workers),
            checkpoint_path=spec.checkpoint_path,
            resume=runtime.resume,
            fingerprint=_fingerprint(request),
            backbone=backbone_plan,
        )
        result = fit(family, model, data, config, reporter)
        if not is_main_process():  # on several devices rank 0 alone packages (and reports the result)
            return {}

        # 4. package
        reporter.progress(96.0, "package")
        name = request.output.name
        dlpk = write_package(
            spec.output_dir,
            name,
            family=family,
            model=model,
            fit=result,
            show_batch=_show_batch(data),
            weights_outcome=weights.outcome,
            arguments=dict(request.given_arguments),
            export_emd=data.export_emd,
            say=say,
        )
        say(
            "info",
            f"Model package written: {dlpk.name} (best epoch {result.best_epoch}, "
            f"{result.monitor} {result.best_score:.4f})",
        )
        reporter.progress(100.0, "package")
        return {
            "package": str(dlpk),
            "model_type": model_type.name,
            "backbone": backbone,
            "metrics": {"valid_loss": result.best_valid_loss, **scalar_metrics(result.best_metrics)},
            "best_epoch": result.best_epoch,
            "epochs_run": result.epochs_run,
        }


def _check_pretrained_fits(
    package: Any, request: TrainingRequest, backbone: str, say: Callable[[str, str], None]
) -> str:
    """The backbone to train: the package's. A package of another model type is a fix-it error."""
    model_type = request.model_type
    assert request.pretrained is not None and request.pretrained.path is not None
    shown = request.pretrained.alias or Path(request.pretrained.path).name
    if package.model_type != model_type.name:
        raise PackageError(
            f"pretrained_model {shown} is a {package.model_type} model; it cannot fine-tune a "
            f"{model_type.name}. Use model_type {package.model_type} or another package."
        )
    if package.backbone and package.backbone != backbone:
        say("warning", f"pretrained_model uses backbone {package.backbone}; using it instead of {backbone}")
        return str(package.backbone)
    return backbone


def _fingerprint(request: TrainingRequest) -> dict[str, Any]:
    """What must match for a checkpoint to be resumed (a checkpoint of another configuration is not)."""
    return {
        "in_folders": [f.local for f in request.in_folders],
        "model_type": request.model_type.name,
        "arguments": dict(request.given_arguments),
        "batch_size": request.batch_size,
        "max_epochs": request.max_epochs,
        "learning_rate": request.learning_rate,
        "validation_percent": request.validation_percent,
        "pretrained_model": request.pretrained.path if request.pretrained else None,
        "stop_training": request.stop_training,
        "freeze_model": request.freeze_model,
        "backbone": request.backbone,
    }


def _show_batch(data) -> Any:
    dataset = data.valid if len(data.valid) else data.train
    if not len(dataset):
        return None
    from torch.utils.data import DataLoader

    _, valid_loader = data.loaders(min(8, len(dataset)))
    loader = (
        valid_loader
        if len(data.valid)
        else DataLoader(dataset, batch_size=min(8, len(dataset)), collate_fn=valid_loader.collate_fn)
    )
    return next(iter(loader))


def child_environment_summary(device: str) -> dict[str, Any]:
    return {"pid": os.getpid(), "device": device, "torch": torch.__version__}
