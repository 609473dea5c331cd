"""`gpjobs train`: run TrainDeepLearningModel locally (no server) and write the .dlpk.

Its flags are the task's parameters (`--in-folder`, `--model-type`, `--batch-size`, ...), parsed and
checked by the same code as a submitted job; paths are plain local paths.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

from gpjobs.paths import LocalPaths
from gpjobs.tasks.params import ParameterError, add_flags, values_from_flags
from gpjobs.tasks.train import INPUT_PARAMETERS, parse_training_request

HELP = "Train a model on Export Training Data folder(s) without the server and write a .dlpk"
EXIT_BAD_INPUT = 2  # = training.protocol.ExitCode.BAD_INPUT (kept torch-free here)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--output", required=True, metavar="PATH.dlpk", help="where to write the package")
    add_flags(parser, INPUT_PARAMETERS, skip=("output_name", "overwrite_model"), repeat=("in_folder",))
    parser.add_argument(
        "--processor-type",
        choices=("CPU", "GPU"),
        type=str.upper,
        default=None,
        help="shorthand for --context '{\"processorType\": ...}' (default: CPU)",
    )
    parser.add_argument("--gpu-id", type=int, default=0)
    parser.add_argument(
        "--devices",
        default=None,
        metavar="DEV,DEV",
        help="train on several devices at once, one process each (torch.distributed: NCCL on "
        "GPUs, gloo on the CPU), e.g. cuda:0,cuda:1 or cpu,cpu; batch_size is split over them",
    )
    parser.add_argument("--weights-dir", default=None, help="folder with torchvision-named ImageNet weights")
    parser.add_argument("--missing-weights", choices=("random", "fail"), default="random")
    parser.add_argument(
        "--work-dir",
        default=None,
        help="checkpoints live here; rerun with the same work dir to resume (default: a temp dir)",
    )
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads per device (default: the cores shared evenly)"
    )
    parser.add_argument("--json", action="store_true", help="print the result as JSON on stdout")
    parser.add_argument("--quiet", action="store_true", help="no progress lines")


def run(args: argparse.Namespace) -> int:
    output = Path(args.output).resolve()
    if output.suffix.lower() != ".dlpk":
        print("--output must end in .dlpk", file=sys.stderr)
        return EXIT_BAD_INPUT
    values = values_from_flags(args, INPUT_PARAMETERS)
    values["in_folder"] = ",".join(args.in_folder)
    values["output_name"] = json.dumps({"name": output.stem})
    if args.processor_type:
        values["context"] = json.dumps({"processorType": args.processor_type})
    try:
        request = parse_training_request(values, LocalPaths())
    except ParameterError as exc:
        print("The parameters cannot be used:\n  " + "\n  ".join(exc.details), file=sys.stderr)
        return EXIT_BAD_INPUT

    from gpjobs.training.devices import cuda_available
    from gpjobs.training.distributed import run_training
    from gpjobs.training.events import ConsoleReporter
    from gpjobs.training.protocol import ChildRuntime, ExitCode, JobSpec

    device = "cpu"
    if request.context.processor_type == "GPU":
        if not cuda_available():
            print("processorType GPU: no CUDA device is available (use CPU)", file=sys.stderr)
            return int(ExitCode.BAD_INPUT)
        device = f"cuda:{args.gpu_id}"
    devices = _devices(args.devices) if args.devices else [device]
    if not devices:
        return int(ExitCode.BAD_INPUT)
    if any(d.startswith("cuda") for d in devices) and not cuda_available():
        print(f"--devices {args.devices}: no CUDA device is available (use cpu,cpu)", file=sys.stderr)
        return int(ExitCode.BAD_INPUT)
    temp = None if args.work_dir else tempfile.mkdtemp(prefix="gpjobs-train-")
    work_dir = Path(args.work_dir).resolve() if args.work_dir else Path(str(temp))
    work_dir.mkdir(parents=True, exist_ok=True)
    threads = args.threads or max(1, (os.cpu_count() or 1) // len(devices))
    runtime = ChildRuntime(
        device=devices[0],
        devices=tuple(devices) if len(devices) > 1 else (),
        weights_dir=args.weights_dir,
        missing_weights=args.missing_weights,
        num_threads=threads,
    )
    spec = JobSpec(job_id="local", work_dir=str(work_dir), request=request, runtime=runtime)
    reporter = ConsoleReporter(quiet=args.quiet)
    reporter.install_sigint()
    try:
        code = run_training(spec, reporter)
        if code == ExitCode.OK:
            result = next(e for e in reversed(reporter.events) if e["type"] == "result")
            output.parent.mkdir(parents=True, exist_ok=True)
            tmp = output.with_name(f".{output.name}.tmp")
            shutil.copyfile(result["package"], tmp)
            os.replace(tmp, output)
            if args.json:
                print(json.dumps({**result, "package": str(output)}))
            else:
                print(f"wrote {output}", file=sys.stderr)
        return int(code)
    finally:
        if temp:
            shutil.rmtree(temp, ignore_errors=True)


def _devices(text: str) -> list[str]:
    """`--devices cuda:0,cuda:1` (or cpu,cpu) -> the list; [] after printing what is wrong."""
    from gpjobs.config import DEVICE

    devices = [d.strip() for d in text.replace("+", ",").split(",") if d.strip()]
    bad = [d for d in devices if not DEVICE.match(d)]
    kinds = {d == "cpu" for d in devices}
    cuda = [d for d in devices if d != "cpu"]
    if not devices or bad or len(kinds) > 1 or len(cuda) != len(set(cuda)):
        print(
            f"--devices {text!r}: list cpu or cuda:N devices, all of one kind, each GPU once "
            "(e.g. cuda:0,cuda:1 or cpu,cpu)",
            file=sys.stderr,
        )
        return []
    return devices
