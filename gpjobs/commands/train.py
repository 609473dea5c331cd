"""`gpjobs train`: run TrainDeepLearningModel locally (no server) and write the .dlpk.

Flags are named after the task's parameters and have the task's defaults.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

HELP = "Train a model on Export Training Data folder(s) without the server and write a .dlpk"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--in-folder", action="append", required=True, metavar="FOLDER",
                        help="export folder (repeat for several folders trained together)")
    parser.add_argument("--model-type", required=True, help="e.g. UNET, FEATURE_CLASSIFIER, PSPNET, DEEPLAB")
    parser.add_argument("--output", required=True, metavar="PATH.dlpk", help="where to write the package")
    parser.add_argument("--backbone-model", default=None, help="default: the model type's default backbone")
    parser.add_argument("--arguments", default="{}", metavar="JSON",
                        help='model arguments as JSON, e.g. \'{"chip_size": 64, "mixup": true}\'')
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--max-epochs", type=int, default=20)
    parser.add_argument("--learning-rate", type=float, default=None,
                        help="empty or 0: found with the learning-rate range test")
    parser.add_argument("--validation-percent", type=float, default=10.0)
    parser.add_argument("--pretrained-model", default=None, metavar="DLPK", help="fine-tune from this package")
    parser.add_argument("--stop-training", action=argparse.BooleanOptionalAction, default=True,
                        help="early stopping when the monitored value stops improving (default: on)")
    parser.add_argument("--freeze-model", action=argparse.BooleanOptionalAction, default=True,
                        help="train with the backbone frozen (default: on)")
    parser.add_argument("--processor-type", choices=("CPU", "GPU"), type=str.upper, default="CPU")
    parser.add_argument("--gpu-id", type=int, default=0)
    parser.add_argument("--weights-dir", default=None, help="folder with torchvision-named ImageNet weights")
    parser.add_argument("--missing-weights", choices=("random", "fail"), default="random")
    parser.add_argument("--work-dir", default=None,
                        help="checkpoints live here; rerun with the same work dir to resume (default: a temp dir)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    parser.add_argument("--json", action="store_true", help="print the result as JSON on stdout")
    parser.add_argument("--quiet", action="store_true", help="no progress lines")


def run(args: argparse.Namespace) -> int:
    import os

    from gpjobs.training.protocol import ExitCode, JobSpec

    try:
        arguments = json.loads(args.arguments or "{}")
        if not isinstance(arguments, dict):
            raise ValueError("expected a JSON object")
    except ValueError as exc:
        print(f"--arguments is not a JSON object: {exc}", file=sys.stderr)
        return int(ExitCode.BAD_INPUT)
    output = Path(args.output).resolve()
    if output.suffix.lower() != ".dlpk":
        print("--output must end in .dlpk", file=sys.stderr)
        return int(ExitCode.BAD_INPUT)
    temp = None
    if args.work_dir:
        work_dir = Path(args.work_dir).resolve()
        work_dir.mkdir(parents=True, exist_ok=True)
    else:
        temp = tempfile.mkdtemp(prefix="gpjobs-train-")
        work_dir = Path(temp)
    device = "cpu"
    if args.processor_type == "GPU":
        from gpjobs.training.devices import cuda_available

        if not cuda_available():
            print("--processor-type GPU: no CUDA device is available (use CPU)", file=sys.stderr)
            return int(ExitCode.BAD_INPUT)
        device = f"cuda:{args.gpu_id}"
    spec = JobSpec(
        job_id="local", in_folders=[str(Path(f).resolve()) for f in args.in_folder], model_type=args.model_type,
        output_name=output.stem, work_dir=str(work_dir), arguments=arguments, batch_size=args.batch_size,
        max_epochs=args.max_epochs, learning_rate=args.learning_rate, backbone_model=args.backbone_model,
        validation_percent=args.validation_percent,
        pretrained_model=str(Path(args.pretrained_model).resolve()) if args.pretrained_model else None,
        stop_training=args.stop_training, freeze_model=args.freeze_model, device=device,
        weights_dir=args.weights_dir, missing_weights=args.missing_weights,
        num_threads=args.threads or os.cpu_count() or 1)

    from gpjobs.training.events import ConsoleReporter
    from gpjobs.training.run_job import run_job

    reporter = ConsoleReporter(quiet=args.quiet)
    reporter.install_sigint()
    try:
        code = run_job(spec, reporter)
        if code == ExitCode.OK:
            result = next(e for e in reversed(reporter.events) if e["type"] == "result")
            output.parent.mkdir(parents=True, exist_ok=True)
            tmp = output.with_name(f".{output.name}.tmp")
            shutil.copyfile(result["package"], tmp)
            os.replace(tmp, output)
            if args.json:
                print(json.dumps({**{k: v for k, v in result.items() if k != "emd"}, "package": str(output)}))
            else:
                print(f"wrote {output}", file=sys.stderr)
        return int(code)
    finally:
        if temp:
            shutil.rmtree(temp, ignore_errors=True)
