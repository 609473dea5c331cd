"""One job, start to end: spec -> data -> family -> fit -> package -> `result` event (or `failed`)."""

from __future__ import annotations

import os
import traceback
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from gpjobs.catalog import ArgumentError, lookup_model_type, parse_arguments, resolve_backbone
from gpjobs.training.events import Reporter, StopRequested
from gpjobs.training.protocol import ExitCode, JobSpec


def run_job(spec: JobSpec, reporter: Reporter) -> ExitCode:
    """Train and package; every outcome becomes an exit code, failures a `failed` event first."""
    from gpjobs.export import DataError
    from gpjobs.training.engine import NaNLossError, OutOfMemory
    from gpjobs.training.package import PackageError
    from gpjobs.training.weights import WeightsMissing

    try:
        result = train_job(spec, reporter)
    except StopRequested as stop:
        reporter.say("warning", str(stop))
        return stop.exit_code
    except DataError as exc:
        report = getattr(exc, "report", None)
        details = list(getattr(report, "errors", []) or [])
        return _failed(reporter, ExitCode.BAD_INPUT, f"The training data cannot be used: {exc}", details)
    except (ArgumentError, PackageError, WeightsMissing) as exc:
        return _failed(reporter, ExitCode.BAD_INPUT, str(exc))
    except NaNLossError as exc:
        return _failed(reporter, ExitCode.NAN_LOSS, f"Training diverged: {exc}")
    except OutOfMemory as exc:
        return _failed(reporter, ExitCode.OUT_OF_MEMORY,
                       f"Out of memory ({exc}). Lower batch_size (now {spec.batch_size}) or chip_size, "
                       "or choose a smaller backbone_model.")
    except Exception as exc:  # noqa: BLE001 - last line of defence; the trace goes to stderr (the log)
        traceback.print_exc()
        return _failed(reporter, ExitCode.ERROR, f"Training failed: {type(exc).__name__}: {exc}")
    reporter.emit("result", **result)
    return ExitCode.OK


def _failed(reporter: Reporter, code: ExitCode, text: str, details: list[str] | None = None) -> ExitCode:
    reporter.emit("failed", exit_code=int(code), text=text, details=details or [])
    return code


def train_job(spec: JobSpec, reporter: Reporter) -> dict[str, Any]:
    """The work of one job; raises on failure. Returns the `result` event's fields."""
    from gpjobs.training.data import open_training_data
    from gpjobs.training.engine import FitConfig, fit, seed_everything
    from gpjobs.training.metrics import scalar_metrics
    from gpjobs.training.models import family_for
    from gpjobs.training.package import PackageError, load_model, open_package, write_package
    from gpjobs.training.weights import WeightsPolicy

    say = reporter.say
    torch.set_num_threads(max(1, int(spec.num_threads)))
    model_type = lookup_model_type(spec.model_type)
    args = parse_arguments(model_type, spec.arguments)
    backbone = resolve_backbone(model_type, spec.backbone_model)
    if not spec.in_folders:
        raise ArgumentError("in_folder is empty: give at least one Export Training Data folder")

    import contextlib

    with contextlib.ExitStack() as stack:
        package = None
        if spec.pretrained_model:
            package = stack.enter_context(open_package(spec.pretrained_model))
            if package.model_type != model_type.name:
                raise PackageError(f"pretrained_model {Path(spec.pretrained_model).name} is a {package.model_type} "
                                   f"model; it cannot fine-tune a {model_type.name}. Use model_type "
                                   f"{package.model_type} or another package.")
            if package.backbone and package.backbone != backbone:
                say("warning", f"pretrained_model uses backbone {package.backbone}; using it instead of {backbone}")
                backbone = package.backbone
        chip_size = args.get("chip_size")
        if chip_size is None and package is not None:
            chip_size = int(package.emd.get("ImageHeight") or 0) or None  # arcgis: data re-prepared at the emd size
        extract = args.get("extract_bands")
        if extract is None and package is not None and package.emd.get("ExtractBands"):
            extract = [int(b) for b in package.emd["ExtractBands"]]

        reporter.progress(0.0, "prepare")
        data = open_training_data(spec.in_folders, task=model_type.task, chip_size=chip_size,
                                  validation_percent=spec.validation_percent, seed=int(args["seed"]),
                                  extract_bands=extract, augment=bool(args["augment"]))
        info = data.info
        if info.format not in model_type.formats:
            raise ArgumentError(f"{model_type.name} trains on {', '.join(sorted(model_type.formats))} exports; "
                                f"the in_folder is {info.format}. Export the training data in one of those "
                                "metadata formats or choose another model_type.")
        for warning in data.report.warnings:
            say("warning", warning)
        say("info", f"Training data: {info.format}, {len(data.train)} training and {len(data.valid)} validation "
                    f"chips of {info.chip_size[0]}x{info.chip_size[1]} px, {info.bands} bands, "
                    f"{len(info.classes)} classes ({', '.join(c.name for c in info.classes)})")
        if package is not None:
            weights = WeightsPolicy.skip(f"fine-tuning from {Path(spec.pretrained_model).name}")
        else:
            weights = WeightsPolicy(spec.weights_dir, spec.missing_weights)
        seed_everything(int(args["seed"]))
        family = family_for(model_type.name)(model_type, info, backbone, args, weights, say)
        family.attach_data(data)
        model = family.build()
        from gpjobs.training.pretrained import start_from_pretrained

        start_from_pretrained(model, family, package, weights, say)  # package weights, or COCO ones that fit
        family.freeze(model, bool(spec.freeze_model))
        if not model_type.backbones and spec.backbone_model:
            say("warning", f"{model_type.name} has fixed networks; backbone_model {spec.backbone_model} is ignored")
        has_backbone = family.backbone_module(model) is not None  # the GANs have none to freeze
        if spec.freeze_model and package is None and weights.outcome.startswith("none") and has_backbone:
            say("warning", "freeze_model=true with a randomly initialised backbone keeps random features fixed; "
                           "put ImageNet weights in the weights directory or set freeze_model=false")
        if not spec.freeze_model and has_backbone:
            say("info", "freeze_model=false: the whole backbone is trained")

        monitor = str(args.get("monitor") or family.default_monitor)
        config = FitConfig(
            max_epochs=int(spec.max_epochs), batch_size=int(spec.batch_size),
            learning_rate=spec.learning_rate if spec.learning_rate and spec.learning_rate > 0 else None,
            stop_training=bool(spec.stop_training), monitor=monitor, patience=int(args["patience"]),
            min_delta=float(args["min_delta"]), seed=int(args["seed"]), device=spec.device,
            mixed_precision=bool(args["mixed_precision"]),
            num_workers=int(args["num_workers"] if args.get("num_workers") is not None else spec.num_workers),
            checkpoint_path=spec.checkpoint_path, resume=bool(spec.resume),
            fingerprint=_fingerprint(spec, backbone))
        result = fit(family, model, data, config, reporter)

        reporter.progress(96.0, "package")
        show_batch = _show_batch(data)
        dlpk = write_package(spec.output_dir, spec.output_name, family=family, model=model, fit=result,
                             show_batch=show_batch, weights_outcome=weights.outcome, arguments=dict(spec.arguments),
                             export_emd=data.export_emd, say=say)
        emd = _read_emd(spec.output_dir / spec.output_name / f"{spec.output_name}.emd")
        say("info", f"Model package written: {dlpk.name} (best epoch {result.best_epoch}, "
                    f"{result.monitor} {result.best_score:.4f})")
        reporter.progress(100.0, "package")
        return {"package": str(dlpk), "model_type": model_type.name, "backbone": backbone,
                "metrics": {"valid_loss": result.best_valid_loss, **scalar_metrics(result.best_metrics)},
                "best_epoch": result.best_epoch, "epochs_run": result.epochs_run, "emd": emd}


def _fingerprint(spec: JobSpec, backbone: str) -> dict[str, Any]:
    keep = ("in_folders", "model_type", "arguments", "batch_size", "max_epochs", "learning_rate",
            "validation_percent", "pretrained_model", "stop_training", "freeze_model")
    data = asdict(spec)
    return {**{k: data[k] for k in keep}, "backbone": backbone}


def _show_batch(data) -> Any:
    dataset = data.valid if len(data.valid) else data.train
    if not len(dataset):
        return None
    from torch.utils.data import DataLoader

    _, valid_loader = data.loaders(min(8, len(dataset)))
    loader = valid_loader if len(data.valid) else DataLoader(dataset, batch_size=min(8, len(dataset)),
                                                               collate_fn=valid_loader.collate_fn)
    return next(iter(loader))


def _read_emd(path: Path) -> dict[str, Any]:
    import json

    return json.loads(path.read_text(encoding="utf-8"))


def child_environment_summary(device: str) -> dict[str, Any]:
    return {"pid": os.getpid(), "device": device, "torch": torch.__version__}
