"""Training child entry point: `python -m gpjobs.training --spec <work_dir>/spec.json`.

Events go to stdout as JSON lines (protocol.py); everything else to stderr. Exit status = ExitCode.
"""

from __future__ import annotations

import argparse
import os
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gpjobs.training", description=__doc__.splitlines()[0])
    parser.add_argument("--spec", required=True, help="JobSpec JSON file written by the server")
    parser.add_argument("--no-lifeline", action="store_true", help="do not watch stdin (manual runs)")
    args = parser.parse_args(argv)

    from gpjobs.training.events import ChildReporter
    from gpjobs.training.protocol import ExitCode, JobSpec

    try:
        spec = JobSpec.load(args.spec)
    except (OSError, ValueError, TypeError, KeyError) as exc:
        print(f"cannot read the job spec {args.spec}: {exc}", file=sys.stderr)
        return int(ExitCode.BAD_INPUT)
    # Side-by-side children on a small machine must not oversubscribe cores (environment.md §8);
    # set before torch is imported so OpenMP picks it up.
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, spec.runtime.num_threads)))
    reporter = ChildReporter(spec.runtime.heartbeat_seconds, lifeline=not args.no_lifeline)
    try:
        from gpjobs.training.checkpoint import load_checkpoint
        from gpjobs.training.run_job import child_environment_summary, run_job

        resumed = 0
        if spec.runtime.resume:
            try:
                state = load_checkpoint(spec.checkpoint_path)
                resumed = int(state["epoch"]) if state else 0
            except Exception:  # a corrupt checkpoint is reported by the engine; start info stays truthful
                resumed = 0
        reporter.emit("started", **child_environment_summary(spec.runtime.device), resumed_from_epoch=resumed)
        code = run_job(spec, reporter)
    finally:
        reporter.close()
    sys.stderr.flush()
    return int(code)


if __name__ == "__main__":
    sys.exit(main())
