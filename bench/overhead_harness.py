"""Shared harness of the engine-overhead benchmarks: our engine vs a bare PyTorch loop, side by side.

A benchmark script supplies `setup(args) -> (torch, family, model, data)` and `run_bare(args) -> dict`;
this module runs each variant in its own process (peak RSS is per process), alternating bare/engine for
`--rounds`, drops each process's first epoch as warm-up, and prints medians and ratios.

Besides wall time per epoch, a variant may report `epoch_cpu` (the process's CPU seconds per epoch, every
thread, `EpochClock` below): on a shared, loaded machine wall time mostly measures the neighbours, CPU time
the work done, so its ratio is the one to trust there — with `--threads 1`: several intra-op threads
spin-wait for each other when the cores are oversubscribed, and that spinning counts as CPU time too.

On the CPU the bare process makes the same glibc allocator setting `fit` makes (engine.runtime.keep_freed_memory):
it is a process setting any script could make, and without it the ratio would credit the engine with the
allocator's gain (a few percent on both sides) instead of measuring what the loop adds.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def add_common_arguments(parser: argparse.ArgumentParser, *, epochs: int, chips: int, size: int, batch: int) -> None:
    parser.add_argument("--epochs", type=int, default=epochs)
    parser.add_argument("--chips", type=int, default=chips)
    parser.add_argument("--size", type=int, default=size)
    parser.add_argument("--batch", type=int, default=batch)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=max(1, min(4, os.cpu_count() or 1)))
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--variant", choices=("bare", "engine"), help=argparse.SUPPRESS)


def bare_optimizer(torch, family, model, *, lr: float, total_steps: int):
    """The engine's optimiser written out by hand: AdamW + one-cycle with backbone LR = lr / 10."""
    backbone = list(family.backbone_parameters(model))
    ids = {id(p) for p in backbone}
    head = [p for p in model.parameters() if id(p) not in ids]
    opt = torch.optim.AdamW(
        [{"params": backbone, "lr": lr / 10}, {"params": head, "lr": lr}], betas=(0.9, 0.99), weight_decay=0.01
    )
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=[lr / 10, lr], total_steps=total_steps, pct_start=0.3, div_factor=25.0, final_div_factor=1e4
    )
    return opt, sched


class EpochClock:
    """Wall and process-CPU seconds of each epoch: `start()` before it, `stop()` after it."""

    def __init__(self) -> None:
        self.wall: list[float] = []
        self.cpu: list[float] = []
        self._wall = self._cpu = 0.0

    def start(self) -> None:
        self._wall, self._cpu = time.perf_counter(), time.process_time()

    def stop(self) -> None:
        self.wall.append(time.perf_counter() - self._wall)
        self.cpu.append(time.process_time() - self._cpu)

    def result(self) -> dict:
        return {"epoch_times": self.wall, "epoch_cpu": self.cpu}


def sync(torch, device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def memory(torch, device) -> dict:
    import resource

    out = {"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if device.type == "cuda":
        out["peak_cuda_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    return out


def run_engine(setup: Callable, args) -> dict:
    """Epoch wall times of our engine (between checkpoint events, so writing the checkpoint counts)."""
    torch, family, model, data = setup(args)
    from gpjobs.training.engine import FitConfig, fit
    from gpjobs.training.events import ListReporter

    class Clock(ListReporter):
        def __init__(self) -> None:
            super().__init__()
            self.marks: list[float] = []
            self.cpu_marks: list[float] = []

        def emit(self, event_type, **fields):
            super().emit(event_type, **fields)
            if event_type == "checkpoint":
                self.marks.append(time.perf_counter())
                self.cpu_marks.append(time.process_time())

    with tempfile.TemporaryDirectory() as tmp:
        cfg = FitConfig(
            max_epochs=args.epochs,
            batch_size=args.batch,
            learning_rate=1e-3,
            stop_training=False,
            device=args.device,
            checkpoint_path=Path(tmp) / "checkpoint.pt",
        )
        clock = Clock()
        start, cpu_start = time.perf_counter(), time.process_time()
        fit(family, model, data, cfg, clock)
    marks, cpu = [start, *clock.marks], [cpu_start, *clock.cpu_marks]
    return {
        "epoch_times": [b - a for a, b in zip(marks, marks[1:])],
        "epoch_cpu": [b - a for a, b in zip(cpu, cpu[1:])],
        **memory(torch, torch.device(args.device)),
    }


def main(script: str, args, label: str, setup: Callable, run_bare: Callable, *, bare_does: str = "") -> int:
    """In a variant process: run it and print its JSON. Otherwise: alternate both variants and compare.
    `bare_does` says what the bare loop computes besides training (printed, so a ratio is read against it)."""
    if args.variant:
        if args.variant == "bare" and args.device == "cpu":  # the allocator setting fit() makes on the CPU
            from gpjobs.training.engine.runtime import keep_freed_memory

            keep_freed_memory()
        print(json.dumps(run_bare(args) if args.variant == "bare" else run_engine(setup, args)))
        return 0
    runs: dict[str, list[dict]] = {"bare": [], "engine": []}
    for _ in range(args.rounds):
        for variant in ("bare", "engine"):
            done = subprocess.run(
                [sys.executable, script, *sys.argv[1:], "--variant", variant],
                cwd=REPO,
                capture_output=True,
                text=True,
                check=True,
                env={**os.environ, "OMP_NUM_THREADS": str(args.threads)},
            )
            runs[variant].append(json.loads(done.stdout.strip().splitlines()[-1]))
    epoch = {v: statistics.median(t for r in rs for t in r["epoch_times"][1:]) for v, rs in runs.items()}
    rss = {v: max(r["peak_rss_mb"] for r in rs) for v, rs in runs.items()}
    print(
        f"{label}, {args.chips} chips {args.size}px, batch {args.batch}, {args.epochs} epochs "
        f"(first = warm-up), device {args.device}, {args.threads} threads, {args.rounds} rounds, "
        f"load {os.getloadavg()[0]:.1f}"
    )
    if bare_does:
        print(f"bare loop   {bare_does}")
    print(
        f"epoch time  bare {epoch['bare']:.3f} s   engine {epoch['engine']:.3f} s   "
        f"ratio {epoch['engine'] / epoch['bare']:.3f} (target <= 1.10)"
    )
    if all("epoch_cpu" in r for rs in runs.values() for r in rs):
        cpu = {v: statistics.median(t for r in rs for t in r["epoch_cpu"][1:]) for v, rs in runs.items()}
        print(
            f"epoch CPU   bare {cpu['bare']:.3f} s   engine {cpu['engine']:.3f} s   "
            f"ratio {cpu['engine'] / cpu['bare']:.3f} (process CPU seconds: load-independent)"
        )
    print(
        f"peak RSS    bare {rss['bare']:.0f} MB   engine {rss['engine']:.0f} MB   "
        f"ratio {rss['engine'] / rss['bare']:.3f}"
    )
    if all("peak_cuda_mb" in r for rs in runs.values() for r in rs):
        cuda = {v: max(r["peak_cuda_mb"] for r in rs) for v, rs in runs.items()}
        print(
            f"peak CUDA   bare {cuda['bare']:.0f} MB   engine {cuda['engine']:.0f} MB   "
            f"ratio {cuda['engine'] / cuda['bare']:.3f}"
        )
    return 0
