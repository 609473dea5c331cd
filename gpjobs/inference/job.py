"""One inference job in the child process (`python -m gpjobs.training`, which the server already keeps warm with
torch imported): the request's package over its raster(s) through the PRF host, block by block, into the job's
work folder, then a `result` event naming the files the server publishes.

Blocks are journalled under <work_dir>/blocks, so a run that was stopped (server killed, child lost, shutdown)
resumes with the blocks still missing. Progress goes out per block, and a message every PROGRESS_STEP percent.
"""

from __future__ import annotations

import json
import os
import shutil
import traceback
import zipfile
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from gpjobs.inference import geopackage, nms, outputs
from gpjobs.inference.grid import GridError, describe_raster, target_grid
from gpjobs.inference.host import InferenceError, InferenceResult, run_inference
from gpjobs.tasks.inference import InferenceRequest
from gpjobs.training.events import Reporter, StopRequested
from gpjobs.training.protocol import ExitCode, JobSpec

PROGRESS_STEP = 5.0  # percent between two progress messages
BLOCKS_DIR = "blocks"


def environment_summary(device: str) -> dict[str, Any]:
    """The `started` event's facts, without importing torch here (the package's raster function does)."""
    try:
        torch_version = metadata.version("torch")
    except metadata.PackageNotFoundError:
        torch_version = "missing"
    return {"pid": os.getpid(), "device": device, "torch": torch_version}


def run_inference_job(spec: JobSpec, reporter: Reporter) -> ExitCode:
    """Run the job; every outcome becomes an exit code, failures a `failed` event first."""
    try:
        result = infer(spec, reporter)
    except StopRequested as stop:
        reporter.say("warning", f"{stop}; the blocks done so far are kept")
        return stop.exit_code
    except (InferenceError, GridError) as exc:
        return _failed(reporter, ExitCode.BAD_INPUT, str(exc))
    except MemoryError:
        return _failed(reporter, ExitCode.OUT_OF_MEMORY, "Out of memory; lower the batch_size model argument")
    except Exception as exc:  # noqa: BLE001 - last line of defence; the trace goes to stderr (the job's log)
        traceback.print_exc()
        return _failed(reporter, ExitCode.ERROR, f"Inference failed: {type(exc).__name__}: {exc}")
    reporter.emit("result", **result)
    return ExitCode.OK


def _failed(reporter: Reporter, code: ExitCode, text: str) -> ExitCode:
    reporter.emit("failed", exit_code=int(code), text=text, details=[])
    return code


class BlockProgress:
    """Progress over every run of the job (one per raster when processed separately): a `progress` event per
    block and a message every PROGRESS_STEP percent."""

    def __init__(self, reporter: Reporter, runs: int) -> None:
        self.reporter, self.runs = reporter, runs
        self.run = 0
        self.next_message = PROGRESS_STEP

    def __call__(self, done: int, total: int) -> None:
        self.reporter.check_stop()
        percent = 100.0 * (self.run + done / max(total, 1)) / self.runs
        self.reporter.progress(percent, "infer", block=done, blocks=total)
        if percent >= self.next_message or done == total:
            where = f" of raster {self.run + 1}/{self.runs}" if self.runs > 1 else ""
            self.reporter.say("info", f"Processed {done} of {total} blocks{where} ({percent:.0f}%).")
            while self.next_message <= percent:
                self.next_message += PROGRESS_STEP


@dataclass
class Outputs:
    """What the job wrote: the file the output item holds, the files beside it, and counts for the messages."""

    data: Path
    resources: list[Path] = field(default_factory=list)
    blocks: int = 0
    features: int = 0
    resumed_blocks: int = 0


def infer(spec: JobSpec, reporter: Reporter) -> dict[str, Any]:
    """The work of one job; raises on failure, returns the `result` event's fields."""
    request = spec.request
    assert isinstance(request, InferenceRequest)
    if not request.model.path or not Path(request.model.path).is_file():
        raise InferenceError(
            f"model: the package {request.model.describe()} is no longer on this server; submit "
            "the job again with an existing model"
        )
    for note in request.notes:
        reporter.say("warning", note)
    work = Path(spec.work_dir)
    out_dir = work / "output"
    out_dir.mkdir(parents=True, exist_ok=True)
    runs = _runs(request)
    count = len(runs) if request.process_separately else len(request.rasters)
    reporter.say(
        "info",
        f"Running {request.model_type} ({request.inference_function}) with {request.task} over {count} raster(s).",
    )
    progress = BlockProgress(reporter, len(runs))
    device = -1 if spec.runtime.device == "cpu" else int(spec.runtime.device.split(":", 1)[1] or 0)
    results: list[InferenceResult] = []
    for index, rasters in enumerate(runs):
        progress.run = index
        out = out_dir / (
            f"{index:04d}-{Path(rasters[0]).stem}{request.output_suffix}"
            if len(runs) > 1
            else f"{request.output.name}{request.output_suffix}"
        )
        results.append(
            run_inference(
                request.model.path,
                list(rasters),
                out,
                arguments=dict(request.arguments),
                device=device,
                features=request.features.path if request.features else None,
                progress=progress,
                cancelled=_stop_check(reporter),
                grid=_grid(request, rasters[0]),
                journal_dir=work / BLOCKS_DIR / str(index),
            )
        )
    written = (
        _features_output(request, results, out_dir, runs)
        if request.output_kind == "features"
        else _raster_output(request, results, out_dir)
    )
    written.blocks = sum(r.blocks for r in results)
    written.resumed_blocks = sum(r.resumed_blocks for r in results)
    reporter.progress(100.0, "infer")
    return {
        "kind": request.output_kind,
        "data": str(written.data),
        "resources": [str(p) for p in written.resources],
        "blocks": written.blocks,
        "features": written.features,
        "resumed_blocks": written.resumed_blocks,
        "model_type": request.model_type,
    }


def _stop_check(reporter: Reporter):
    def check() -> bool:
        reporter.check_stop()  # raises StopRequested on cancel or a lost server
        return False

    return check


def _runs(request: InferenceRequest) -> list[tuple[str, ...]]:
    """The host runs of the job: one over the raster(s), or one per raster of a folder processed separately."""
    if request.process_separately:
        return [(path,) for path in request.rasters[0].files]
    return [tuple(r.files[0] for r in request.rasters)]


def _grid(request: InferenceRequest, raster: str):
    return (
        target_grid(describe_raster(raster), request.extent, request.cell_size)
        if request.extent is not None or request.cell_size is not None
        else None
    )


def _raster_output(request: InferenceRequest, results: list[InferenceResult], out_dir: Path) -> Outputs:
    """One GeoTIFF (and its .aux.xml attribute table), or a ZIP of one per raster processed separately."""
    if len(results) == 1:
        return Outputs(results[0].output, list(results[0].sidecars))
    archive = out_dir / f"{request.output.name}.zip"
    tmp = archive.with_name(f".{archive.name}.tmp")
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as zf:  # GeoTIFFs are compressed already
        for result in results:
            for path in (result.output, *result.sidecars):
                zf.write(path, path.name.split("-", 1)[1])
    tmp.replace(archive)
    return Outputs(archive)


def _features_output(
    request: InferenceRequest, results: list[InferenceResult], out_dir: Path, runs: list[tuple[str, ...]]
) -> Outputs:
    """One GeoJSON of every run's features (runNMS and classLabelField applied) and a GeoPackage beside it."""
    features: list[dict[str, Any]] = []
    for result in results:
        features.extend(json.loads(result.output.read_text(encoding="utf-8")).get("features", []))
    fields = [dict(f) for f in results[0].fields]
    if request.nms is not None:
        features = nms.suppress(
            features,
            confidence_field=request.nms.confidence_field,
            class_field=request.nms.class_field,
            max_overlap_ratio=request.nms.max_overlap_ratio,
        )
    if request.class_label_field:
        _rename_label(fields, features, request.class_label_field)
    info = describe_raster(runs[0][0])
    final = out_dir / f"{request.output.name}.geojson"
    if len(results) > 1 or final != results[0].output or request.nms or request.class_label_field:
        _write_features(final, features, info.crs_wkt)
    gpkg = geopackage.write_geopackage(final, out_dir / f"{request.output.name}.gpkg", fields, features, info.crs_wkt)
    return Outputs(final, [gpkg], features=len(features))


def _write_features(path: Path, features: list[dict[str, Any]], crs_wkt: str | None) -> None:
    from rasterio.crs import CRS

    tmp = path.with_name(f".{path.name}.tmp")
    outputs.write_geojson(tmp, features, CRS.from_wkt(crs_wkt) if crs_wkt else None)
    shutil.move(tmp, path)


def _rename_label(fields: list[dict[str, Any]], features: list[dict[str, Any]], name: str) -> None:
    """classLabelField: the raster function's label field (its first text field) takes the user's name."""
    label = next((f for f in fields if f.get("type") == "esriFieldTypeString"), None)
    if label is None or label["name"] == name:
        return
    old = label["name"]
    label["name"] = label["alias"] = name
    for feature in features:
        props = feature.get("properties") or {}
        if old in props:
            feature["properties"] = {name if k == old else k: v for k, v in props.items()}
