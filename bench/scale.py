"""Benchmark: scaling out. One job on two CPU ranks against one process, N GPUs against one, and the Ray pool's
dispatch against the local pool's, each side by side in one run.

    .venv/bin/python bench/scale.py [--quick] [--repeats 2] [--chips 64] [--epochs 3] [--gpu-chips 512]
                                    [--no-ddp] [--no-gpu] [--no-ray]

1. What DDP costs on the CPU: `gpjobs train` of UNET-RESNET18 on a generated Classified_Tiles export
   (`--chips` chips of 64 px, batch 8, no augmentation, seed 7) with `--devices cpu,cpu --threads 1` (two gloo
   ranks, one thread each) and with `--devices cpu --threads 2` (one process, two threads): the same two cores
   either way; and one process with one thread as the reference. Epoch time is what the epoch line reports
   (training, then rank 0's validation), the median over epochs 2.. of `--repeats` runs in alternating order.
   Printed: 2 ranks / 1 process x 2 threads (> 1: DDP costs that much here; no goal: gloo on two shared cores is
   not where DDP pays), and each side's speed-up over one thread (ideal 2).
2. N GPUs against one (only when `torch.cuda.device_count() >= 2`): the same training on `--gpu-chips` chips of
   128 px (at least 16 global batches per epoch) with batch 16 per GPU and 4 loader workers per rank,
   `--devices cuda:0,...` against `--devices cuda:0`; images/s on N GPUs / (N x images/s on one). Goal >= 0.85.
3. Ray dispatch overhead: a local Ray head (tests/harness/ray_head.py, loopback, 2 CPUs, token auth as the
   tests run it) and three `gpjobs serve` (tests/harness/server.py) over the same tiny export: `pool = "ray"`,
   the local pool with warm trainers (the default) and without. Each job: UNET-RESNET18, 1 epoch, 8 chips of
   64 px; seconds from the submitJob answer to the child's first message (it is up) and to its first epoch
   line (the first training event), as a client polling every 10 ms sees them. The first job of each server
   (cold Ray workers, first imports) is shown apart; the ratios use the median of the `--repeats` after it.
   Goal: Ray / local with warm trainers (the default) <= 1.5 on the first epoch line. Both keep warm trainers
   (the Ray pool: one actor per idle slot, placed ahead, its child's imports done), and each job is submitted
   once its server's are ready; Ray / local without them shows what warm starts save.

Everything runs on this box at once with whatever else loads it: read the ratios, not the seconds.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.builders.exports import write_classified_tiles
from tests.harness.ray_head import local_ray_head
from tests.harness.server import GpjobsServer

EPOCH_LINE = re.compile(r"^Epoch (\d+)/\d+: .*\((\d+(?:\.\d+)?) s\)")
OWN_MESSAGES = {"Submitted.", "Executing..."}
TERMINAL = ("esriJobSucceeded", "esriJobFailed", "esriJobTimedOut", "esriJobCancelled")
POLL_S = 0.01


# --- 1 and 2: `gpjobs train` on several devices against one -----------------------------------------------


def train_epochs(
    folder: Path, work: Path, devices: str, threads: int, batch: int, epochs: int, workers: int | None = None
) -> list[float]:
    """Run `gpjobs train` once; the seconds of each epoch after the first (all of them when there is one)."""
    arguments = {"augment": False, "seed": 7, **({"num_workers": workers} if workers is not None else {})}
    command = [
        sys.executable,
        "-m",
        "gpjobs.cli",
        "train",
        "--in-folder",
        str(folder),
        "--model-type",
        "UNET",
        "--backbone-model",
        "RESNET18",
        "--max-epochs",
        str(epochs),
        "--batch-size",
        str(batch),
        "--learning-rate",
        "0.001",
        "--arguments",
        json.dumps(arguments),
        "--output",
        str(work / "m.dlpk"),
        "--devices",
        devices,
        "--threads",
        str(threads),
        "--work-dir",
        str(work / devices.replace(",", "_")),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(REPO)}
    done = subprocess.run(command, check=False, cwd=REPO, env=env, capture_output=True, text=True, timeout=3600)
    if done.returncode != 0:
        raise RuntimeError(f"gpjobs train --devices {devices} exited {done.returncode}:\n{done.stderr[-3000:]}")
    seconds = {int(m[1]): float(m[2]) for m in map(EPOCH_LINE.match, done.stderr.splitlines()) if m}
    if len(seconds) != epochs:
        raise RuntimeError(f"expected {epochs} epoch lines from --devices {devices}:\n{done.stderr[-3000:]}")
    return [s for e, s in sorted(seconds.items()) if e > 1] or list(seconds.values())


def compare(
    folder: Path, work: Path, runs: dict[str, tuple[str, int, int, int | None]], epochs: int, repeats: int
) -> dict[str, float]:
    """Median epoch seconds per named run (devices, threads, batch, loader workers), alternating the order."""
    times: dict[str, list[float]] = {name: [] for name in runs}
    for repeat in range(repeats):
        order = list(runs) if repeat % 2 == 0 else list(reversed(runs))
        for name in order:
            devices, threads, batch, workers = runs[name]
            times[name] += train_epochs(folder, work / f"{name}-{repeat}", devices, threads, batch, epochs, workers)
    for name, seconds in times.items():
        print(
            f"  {name}: epoch seconds "
            + ", ".join(f"{s:.1f}" for s in seconds)
            + f"; median {statistics.median(seconds):.1f} s"
        )
    return {name: statistics.median(seconds) for name, seconds in times.items()}


def ddp_on_cpu(root: Path, chips: int, epochs: int, repeats: int) -> None:
    print(f"1. UNET-RESNET18, {chips} chips of 64 px, batch 8, {epochs} epochs x {repeats} run(s) each, two cores")
    folder = write_classified_tiles(root / "exports", n=chips, size=64, name="seg")
    median = compare(
        folder,
        root,
        {
            "2 ranks x 1 thread": ("cpu,cpu", 1, 8, None),
            "1 process x 2 threads": ("cpu", 2, 8, None),
            "1 process x 1 thread": ("cpu", 1, 8, None),
        },
        epochs,
        repeats,
    )
    ratio = median["2 ranks x 1 thread"] / median["1 process x 2 threads"]
    print(
        f"  epoch time 2 ranks / 1 process x 2 threads: {ratio:.2f} (> 1: what DDP costs here against intra-op "
        "threads: gloo all-reduce of every gradient, rank 0 validating alone; no goal on CPU)"
    )
    one = median["1 process x 1 thread"]
    print(
        f"  speed-up over 1 process x 1 thread: 2 ranks {one / median['2 ranks x 1 thread']:.2f}, "
        f"1 process x 2 threads {one / median['1 process x 2 threads']:.2f} (ideal 2 each)"
    )


def cuda_devices() -> int:
    """torch.cuda.device_count(), asked in a child so that this process never imports torch."""
    done = subprocess.run(
        [sys.executable, "-c", "import torch; print(torch.cuda.device_count())"],
        check=False,
        capture_output=True,
        text=True,
        timeout=300,
    )
    return int(done.stdout.strip() or 0) if done.returncode == 0 else 0


def gpus_against_one(root: Path, gpus: int, chips: int, epochs: int, repeats: int) -> None:
    per_gpu = 16
    chips = max(chips, 16 * per_gpu * gpus)  # enough steps per epoch that the N-GPU epoch is not all start-up
    print(
        f"2. UNET-RESNET18, {chips} chips of 128 px, batch {per_gpu} per GPU, {epochs} epochs x {repeats} "
        f"run(s): {gpus} GPUs against one"
    )
    folder = write_classified_tiles(root / "exports", n=chips, size=128, name="seg")
    many = ",".join(f"cuda:{i}" for i in range(gpus))
    median = compare(
        folder,
        root,
        {f"{gpus} GPUs": (many, 1, per_gpu * gpus, 4), "1 GPU": ("cuda:0", 1, per_gpu, 4)},
        epochs,
        repeats,
    )
    # The same chips each epoch: images/s is chips / epoch seconds, so the chips cancel out of the ratio.
    ratio = median["1 GPU"] / (gpus * median[f"{gpus} GPUs"])
    print(f"  images/s {gpus} GPUs / ({gpus} x 1 GPU): {ratio:.2f} (goal >= 0.85)")


# --- 3: submit -> first training event, Ray pool against the local pool ----------------------------------


def first_event(server: GpjobsServer, name: str) -> tuple[float, float]:
    """Seconds from the submitJob answer to the child's first message and to its first epoch line."""
    t0 = time.perf_counter()
    job_id = server.submit(
        in_folder="/fileShares/default/exports/seg",
        model_type="UNET",
        backbone_model="RESNET18",
        output_name=json.dumps({"name": name}),
        max_epochs="1",
        learning_rate="0.001",
        batch_size="4",
    )["jobId"]
    up = epoch = None
    while epoch is None:
        info = server.job(job_id)
        now = time.perf_counter() - t0
        said = [m["description"] for m in info.get("messages", [])]
        if up is None and any(text not in OWN_MESSAGES for text in said):
            up = now
        if any(text.startswith("Epoch 1/") for text in said) or info["jobStatus"] in TERMINAL:
            epoch = now
            up = up or now
        time.sleep(POLL_S)
    done = server.wait(job_id, timeout=600)
    assert done["jobStatus"] == "esriJobSucceeded", server.diagnose(job_id)
    return up, epoch


def wait_warm_ready(server: GpjobsServer, count: int, timeout: float = 300) -> None:
    """Until the server's log says `count` warm children have finished their imports."""
    deadline = time.monotonic() + timeout
    while server.log_tail(10**7).count('"warm trainer ready"') < count:
        assert time.monotonic() < deadline, "no warm trainer became ready"
        time.sleep(0.1)


def ray_against_local(root: Path, repeats: int) -> None:
    print(f"3. submit -> first training event: 1 + {repeats} tiny UNET jobs per server (8 chips of 64 px, 1 epoch)")
    with local_ray_head(2, start_timeout_s=180) as cluster:
        settings = {
            "ray": (
                {"pool": "ray", "ray_address": cluster["address"], "devices": ["cpu"], "max_queued_per_user": 0},
                cluster["env"],
            ),
            "local, warm": ({"warm_trainers": True, "max_queued_per_user": 0}, {"PYTHONPATH": str(REPO)}),
            "local, cold": ({"warm_trainers": False, "max_queued_per_user": 0}, {"PYTHONPATH": str(REPO)}),
        }
        warm_slots = {"ray": 2, "local, warm": 1}  # the head's 2 CPUs, one job each; the local default: one
        servers: dict[str, GpjobsServer] = {}
        times: dict[str, list[tuple[float, float]]] = {name: [] for name in settings}
        try:
            for index, (name, (config, env)) in enumerate(settings.items()):
                here = root / f"server{index}"
                write_classified_tiles(here / "share" / "exports", n=8, size=64, name="seg")
                servers[name] = GpjobsServer(here, trainer="real", settings=config, env=env).start()
            for run in range(repeats + 1):  # interleaved: every server sees the same moments of the box's load
                for name, server in servers.items():
                    if name in warm_slots:  # each slot's ready child: one at the start, one more after each job
                        wait_warm_ready(server, run + warm_slots[name])
                    times[name].append(first_event(server, f"s{run}"))
        finally:
            for server in servers.values():
                server.stop()
    print("  seconds after submit: child up / first epoch line")
    medians = {}
    for name, runs in times.items():
        first, rest = runs[0], runs[1:]
        medians[name] = tuple(statistics.median(r[k] for r in rest) for k in range(2))
        print(
            f"  {name}: first job {first[0]:.2f} / {first[1]:.2f}; then "
            + ", ".join(f"{u:.2f} / {e:.2f}" for u, e in rest)
            + f"; median {medians[name][0]:.2f} / {medians[name][1]:.2f} s"
        )
    for local in ("local, warm", "local, cold"):
        up, epoch = (medians["ray"][k] / medians[local][k] for k in range(2))
        goal = " (goal <= 1.5)" if local == "local, warm" else ""
        print(f"  ray / {local}: first epoch line {epoch:.2f}{goal}; child up {up:.2f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="32 chips, 2 epochs, 1 repeat (a smoke run)")
    parser.add_argument("--repeats", type=int, default=None, help="runs per side (default 2; --quick: 1)")
    parser.add_argument("--chips", type=int, default=None, help="chips in part 1 (default 64; --quick: 32)")
    parser.add_argument("--epochs", type=int, default=None, help="epochs in parts 1-2 (default 3; --quick: 2)")
    parser.add_argument("--gpu-chips", type=int, default=None, help="chips in part 2 (default 512; --quick: 256)")
    parser.add_argument("--no-ddp", action="store_true", help="skip part 1")
    parser.add_argument("--no-gpu", action="store_true", help="skip part 2")
    parser.add_argument("--no-ray", action="store_true", help="skip part 3")
    args = parser.parse_args()
    repeats = args.repeats or (1 if args.quick else 2)
    chips = args.chips or (32 if args.quick else 64)
    epochs = args.epochs or (2 if args.quick else 3)
    gpu_chips = args.gpu_chips or (256 if args.quick else 512)

    with tempfile.TemporaryDirectory(prefix="gpjobs-bench-") as tmp:  # packages and checkpoints
        root = Path(tmp)
        print(f"machine: {os.cpu_count()} cpu(s), load {os.getloadavg()[0]:.1f}; everything on this box")
        if not args.no_ddp:
            ddp_on_cpu(root / "ddp", chips, epochs, repeats)
        if not args.no_gpu:
            gpus = cuda_devices()
            if gpus >= 2:
                gpus_against_one(root / "gpus", gpus, gpu_chips, epochs, repeats)
            else:
                print(f"2. N GPUs against one: skipped ({gpus} CUDA device(s) here; it needs 2 or more)")
        if not args.no_ray:
            if importlib.util.find_spec("ray") is None:
                print("3. Ray dispatch: skipped (the ray extra is not installed: pip install 'gpjobs[ray]')")
            else:
                ray_against_local(root / "ray", repeats)
    return 0


if __name__ == "__main__":
    sys.exit(main())
