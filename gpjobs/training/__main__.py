"""Training child entry point: `python -m gpjobs.training --spec <work_dir>/spec.json`, or `--warm`.

Events go to stdout as JSON lines (protocol.py); everything else to stderr. Exit status = ExitCode.

`--warm` (scheduler/child.py, WarmTrainer): import torch, torchvision and the training code first (and set up
CUDA on a GPU slot), print one `heartbeat` event to say so, then read one line from stdin,
`{"spec": <spec path>, "log": <log path>}`, and run that job as `--spec` would, with stderr moved to the log
and the job's work folder as the working directory. EOF instead of that line (the server went away) exits.
"""

from __future__ import annotations

import argparse
import json
import os
import select
import sys
import time

from gpjobs.tasks.train import TASK_NAME as TRAIN_TASK
from gpjobs.training.events import DIE_WITH_PARENT_ENV, die_with_parent
from gpjobs.training.protocol import ExitCode, encode_event


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gpjobs.training", description=__doc__.splitlines()[0])
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--spec", help="JobSpec JSON file written by the server")
    what.add_argument("--warm", action="store_true", help="import everything, then wait for the job on stdin")
    parser.add_argument("--no-lifeline", action="store_true", help="do not watch stdin (manual runs)")
    args = parser.parse_args(argv)
    if os.environ.get(DIE_WITH_PARENT_ENV):
        die_with_parent()
    if args.warm:
        spec_path = wait_for_job()
        if spec_path is None:
            return int(ExitCode.LIFELINE_LOST)
        return run_spec(spec_path, lifeline=True)
    return run_spec(args.spec, lifeline=not args.no_lifeline)


def warm_up() -> float:
    """Import what every job needs (and start CUDA when this slot has a GPU); seconds it took."""
    start = time.monotonic()
    import importlib

    import torch
    import torchvision.ops  # noqa: F401  (pulls torch._dynamo: a large share of the import)

    import gpjobs.training.run_job  # noqa: F401
    from gpjobs.catalog import MODEL_TYPES

    for family in sorted({info.family for info in MODEL_TYPES.values() if info.family}):
        try:
            importlib.import_module(f"gpjobs.training.models.{family}")
        except ImportError as exc:  # the job that needs it will say so; warming must not fail
            print(f"warm start: gpjobs.training.models.{family} not imported: {exc}", file=sys.stderr)
    # A slot of several GPUs: the ranks start CUDA each on its own device; this launcher holds none.
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "")
    device = "cuda" if visible and "," not in visible and torch.cuda.is_available() else "cpu"
    # One tiny forward and backward pass: creates the CUDA context on a GPU slot and starts the autograd engine
    # and the kernels' lazy set-up now, not in the job's first batch. Nothing of it is kept.
    layer = torch.nn.Conv2d(3, 4, 3).to(device)
    layer(torch.zeros(1, 3, 8, 8, device=device)).sum().backward()
    del layer
    return time.monotonic() - start


def wait_for_job() -> str | None:
    """The warm protocol: imports, one `heartbeat`, then the handoff line. None when stdin closes first."""
    seconds = warm_up()
    os.write(1, encode_event("heartbeat", warm_import_s=round(seconds, 2)))
    line = b""
    while not line.endswith(b"\n"):
        chunk = os.read(0, 4096)  # the raw fd: the lifeline thread reads it later (events.py)
        if not chunk:
            return None
        line += chunk
    if _stdin_closed():  # the server died right after the handoff: do not start an orphan
        return None
    try:
        handoff = json.loads(line)
        spec_path, log_path = str(handoff["spec"]), str(handoff["log"])
    except (ValueError, KeyError, TypeError) as exc:
        print(f"warm start: bad handoff line {line[:200]!r}: {exc}", file=sys.stderr)
        return None
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 2)  # from here on, like a cold child: stderr (and DataLoader workers' stderr) in the job's log
    os.close(fd)
    os.chdir(os.path.dirname(os.path.abspath(spec_path)))
    return spec_path


def _stdin_closed() -> bool:
    readable, _, _ = select.select([0], [], [], 0)
    return bool(readable)  # the server writes nothing after the handoff: readable means EOF


def run_spec(spec_file: str, *, lifeline: bool) -> int:
    from gpjobs.training.events import ChildReporter
    from gpjobs.training.protocol import JobSpec

    try:
        spec = JobSpec.load(spec_file)
    except (OSError, ValueError, TypeError, KeyError) as exc:
        print(f"cannot read the job spec {spec_file}: {exc}", file=sys.stderr)
        return int(ExitCode.BAD_INPUT)
    # Side-by-side children on a small machine must not oversubscribe cores (environment.md §8);
    # set before torch is imported so OpenMP picks it up (a warm child has it from its environment).
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, spec.runtime.num_threads)))
    reporter = ChildReporter(spec.runtime.heartbeat_seconds, lifeline=lifeline)
    if spec.task != TRAIN_TASK:  # an inference task: the same child (warm, torch imported) runs it
        try:
            return int(_run_inference(spec, reporter))
        finally:
            reporter.close()
            sys.stderr.flush()
    try:
        from gpjobs.training.checkpoint import load_checkpoint
        from gpjobs.training.distributed import run_training
        from gpjobs.training.run_job import child_environment_summary

        resumed = 0
        if spec.runtime.resume:
            try:
                state = load_checkpoint(spec.checkpoint_path)
                resumed = int(state["epoch"]) if state else 0
            except Exception:  # a corrupt checkpoint is reported by the engine; start info stays truthful
                resumed = 0
        reporter.emit(
            "started",
            **child_environment_summary(spec.runtime.device),
            devices=list(spec.runtime.devices or [spec.runtime.device]),
            resumed_from_epoch=resumed,
        )
        code = run_training(spec, reporter)
    finally:
        reporter.close()
    sys.stderr.flush()
    return int(code)


def _run_inference(spec, reporter) -> int:
    """An inference job: the PRF host over the request's rasters, resuming from the block journal."""
    from pathlib import Path

    from gpjobs.inference.blocks import finished_blocks
    from gpjobs.inference.job import BLOCKS_DIR, environment_summary, run_inference_job

    reporter.emit(
        "started",
        **environment_summary(spec.runtime.device),
        resumed_from_epoch=0,
        resumed_blocks=finished_blocks(Path(spec.work_dir) / BLOCKS_DIR),
    )
    return run_inference_job(spec, reporter)


if __name__ == "__main__":
    sys.exit(main())
