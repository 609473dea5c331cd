"""Model quality side by side: our jobs with the task's defaults vs the plain PyTorch loop a user would write.

Issue #17's measuring stick. On real data (bench/qualitylib/data.py: SpaceNet buildings and roads from the
fair-solaris sdist, overhead road/building/background chips of the same scenes, the real Esri palm export in
../shared/samples), each row trains both sides from scratch (random weights) with the same epochs and batch size
and scores both on the same held-out chips that neither trains nor early-stops on, with the same metric code
(bench/qualitylib/scoring.py). Our side is `gpjobs train` with the task's defaults (learning_rate empty: the
LR range test runs; freeze_model, stop_training, validation_percent and every argument at their defaults;
only the backbone is set, RESNET18, and the seed); the peer is bench/qualitylib/peers.py.

    python bench/quality.py [--quick] [--rows unet,classifier,...] [--seeds 3] [--first-seed 42] [--json out.json]
                            [--device cuda]

Rows: unet (roads), unet-buildings, classifier (overhead tiles), classifier-digits, classifier-digits-noaug
(scikit-learn's handwritten digits), fasterrcnn, yolov3 (default: unet, classifier, fasterrcnn, yolov3; the
others are diagnostics).
`--quick`: 1 seed and fewer training chips (same held-out chips) for iteration. Prints, per row and metric,
ours mean [min..max] vs the peer's, their ratio, the job wall times (ours: the whole `gpjobs train`, LR range
test and packaging included; peer: data to saved weights; imports excluded on both sides) and PASS/FAIL
against the goal: ours >= peer and our wall time <= 1.2 x the peer's. Data is built once into
~/.cache/gpjobs-bench (GPJOBS_BENCH_CACHE); runs go to <cache>/runs/<time>/ with each job's log. Needs the
`bench` extra (segmentation-models-pytorch) for the segmentation peer. Single-threaded runs, one at a time.
`--device cuda`: both sides train on the GPU (ours: processorType GPU, with its default mixed precision; the
peer in float32); held-out predictions are made on the CPU for both.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.qualitylib import scoring
from bench.qualitylib.data import CACHE, DataSet, dataset

PYTHON = sys.executable
WALL_GOAL = 1.2


@dataclass(frozen=True)
class Row:
    model_type: str
    backbone: str | None  # None: the model type's only backbone (YOLOV3's Darknet-53)
    data: str
    epochs: int
    batch: int
    detect_thresh: float = 0.2  # Esri AP score threshold, the model type's own (metrics_detection.py)
    arguments: tuple[tuple[str, object], ...] = ()  # diagnostic rows only: defaults are the point


ROWS = {
    # roads: 3 % road pixels, learnable in a few epochs (a plain loop reaches IoU ~0.5 in 10); buildings (43
    # partly labelled footprints in a wooded scene) is harder: a plain loop reaches IoU ~0.07 in 10 epochs.
    "unet": Row("UNET", "RESNET18", "roads", epochs=5, batch=8),
    "unet-buildings": Row("UNET", "RESNET18", "buildings", epochs=10, batch=8),
    # overhead chips (road / building / background), where flips and 90-degree turns keep the label
    "classifier": Row("FEATURE_CLASSIFIER", "RESNET18", "tiles", epochs=5, batch=32),
    # Diagnostics: handwritten digits, which our default augmentation (flips, 90-degree turns) does not suit
    # (6 vs 9); -noaug turns it off.
    "classifier-digits": Row("FEATURE_CLASSIFIER", "RESNET18", "digits", epochs=2, batch=32),
    "classifier-digits-noaug": Row(
        "FEATURE_CLASSIFIER", "RESNET18", "digits", epochs=2, batch=32, arguments=(("augment", False),)
    ),
    "fasterrcnn": Row("FASTERRCNN", "RESNET18", "palms", epochs=5, batch=4),
    "yolov3": Row("YOLOV3", None, "palms", epochs=5, batch=4, detect_thresh=0.1),
}
DEFAULT_ROWS = ("unet", "classifier", "fasterrcnn", "yolov3")


def _env() -> dict[str, str]:
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)  # keep the caller's
    return {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def _last_json(text: str) -> dict:
    lines = [line for line in text.splitlines() if line.startswith("{") and '"wall"' in line]
    if not lines:
        raise RuntimeError(f"no result line in:\n{text[-2000:]}")
    return json.loads(lines[-1])


def run_peer(data: DataSet, seed: int, epochs: int, batch: int, work: Path, device: str = "cpu") -> dict:
    out = work / "peer.pt"
    cmd = [
        PYTHON,
        str(REPO / "bench/qualitylib/peers.py"),
        str(data.folder),
        "--seed",
        str(seed),
        "--epochs",
        str(epochs),
        "--batch",
        str(batch),
        "--out",
        str(out),
        "--device",
        device,
    ]
    done = subprocess.run(cmd, check=False, capture_output=True, text=True, env=_env(), cwd=REPO)
    (work / "peer.log").write_text(done.stdout + done.stderr)
    if done.returncode != 0:
        raise RuntimeError(f"peer failed ({done.returncode}), see {work / 'peer.log'}:\n{done.stderr[-2000:]}")
    return {**_last_json(done.stdout), "saved": str(out)}


def run_ours(row: Row, data: DataSet, seed: int, epochs: int, batch: int, work: Path, extra: list[str]) -> dict:
    package = work / "ours.dlpk"
    arguments = {"seed": seed, **dict(row.arguments)}
    flags = [
        "--in-folder",
        str(data.export),
        "--model-type",
        row.model_type,
        "--output",
        str(package),
        "--batch-size",
        str(batch),
        "--max-epochs",
        str(epochs),
        "--arguments",
        json.dumps(arguments),
        "--work-dir",
        str(work / "job"),
        "--threads",
        "1",
    ]
    if row.backbone:
        flags += ["--backbone-model", row.backbone]
    flags += extra
    done = subprocess.run(
        [PYTHON, str(REPO / "bench/qualitylib/ours.py"), "--", *flags],
        check=False,
        capture_output=True,
        text=True,
        env=_env(),
        cwd=REPO,
    )
    log = done.stdout + done.stderr
    (work / "ours.log").write_text(log)
    result = _last_json(done.stdout) if done.returncode == 0 else {"code": done.returncode}
    if result.get("code") != 0:
        raise RuntimeError(f"our job failed, see {work / 'ours.log'}:\n{log[-3000:]}")
    chosen = re.search(r"chosen learning rate ([0-9.e+-]+)", log)
    epochs_run = re.findall(r"^Epoch (\d+)/", log, re.MULTILINE)
    return {
        **result,
        "package": str(package),
        "lr": float(chosen.group(1)) if chosen else None,
        "epochs_run": int(epochs_run[-1]) if epochs_run else None,
    }


def _stats(values: list[float]) -> tuple[float, float, float]:
    return sum(values) / len(values), min(values), max(values)


def _fmt(values: list[float]) -> str:
    mean, lo, hi = _stats(values)
    return f"{mean:.3f} [{lo:.3f}..{hi:.3f}]" if len(values) > 1 else f"{mean:.3f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 seed, fewer training chips (same held-out chips)")
    parser.add_argument("--rows", default=",".join(DEFAULT_ROWS), help=f"comma list of {', '.join(ROWS)}")
    parser.add_argument("--seeds", type=int, default=None, help="seeds per row (default 3, quick 1)")
    parser.add_argument("--first-seed", type=int, default=42, help="seeds run from here up (default 42)")
    parser.add_argument("--epochs", type=int, default=None, help="override every row's epochs")
    parser.add_argument("--json", type=Path, default=None, help="also write every run's numbers here")
    parser.add_argument("--keep", action="store_true", help="keep the trained models (else only logs stay)")
    parser.add_argument(
        "--ours-learning-rate",
        type=float,
        default=None,
        help="diagnostic: give our jobs this learning_rate (no LR range test)",
    )
    parser.add_argument("--ours-no-freeze", action="store_true", help="diagnostic: our jobs with freeze_model=false")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda: where both sides train")
    args = parser.parse_args()
    rows = [r.strip() for r in args.rows.split(",") if r.strip()]
    unknown = [r for r in rows if r not in ROWS]
    if unknown:
        parser.error(f"unknown rows {unknown}; choose from {', '.join(ROWS)}")
    seeds = [args.first_seed + i for i in range(args.seeds or (1 if args.quick else 3))]
    extra = (["--learning-rate", str(args.ours_learning_rate)] if args.ours_learning_rate else []) + (
        ["--no-freeze-model"] if args.ours_no_freeze else []
    )
    on_gpu = ["--processor-type", "GPU"] if args.device.startswith("cuda") else []
    if extra:
        print(f"DIAGNOSTIC: our jobs are not at the task's defaults: {' '.join(extra)}", flush=True)
    run_dir = CACHE / "runs" / time.strftime("%Y%m%d-%H%M%S")
    print(f"runs in {run_dir}", flush=True)

    peers: dict[tuple, dict] = {}  # the detection rows share one peer run per seed
    results: dict[str, dict] = {}
    for key in rows:
        row = ROWS[key]
        data = dataset(row.data, args.quick)
        epochs = args.epochs or row.epochs
        record = results[key] = {
            "row": key,
            "model_type": row.model_type,
            "data": row.data,
            "epochs": epochs,
            "batch": row.batch,
            "runs": [],
        }
        for seed in seeds:
            work = run_dir / key / str(seed)
            work.mkdir(parents=True, exist_ok=True)
            peer_key = (row.data, seed, epochs, row.batch)
            if peer_key not in peers:
                peer_work = run_dir / f"peer-{row.data}" / str(seed)
                peer_work.mkdir(parents=True, exist_ok=True)
                peer = run_peer(data, seed, epochs, row.batch, peer_work, args.device)
                from bench.qualitylib.peers import predict

                held = data.arrays("heldout")["images"]
                peers[peer_key] = {**peer, "predictions": predict(Path(peer["saved"]), held)}
                if not args.keep:
                    Path(peer["saved"]).unlink()
            peer = peers[peer_key]
            ours = run_ours(row, data, seed, epochs, row.batch, work, extra + on_gpu)
            run = {
                "seed": seed,
                "ours_wall": ours["wall"],
                "peer_wall": peer["wall"],
                "lr": ours["lr"],
                "epochs_run": ours["epochs_run"],
                "ours": scoring.score(data, scoring.predict_ours(Path(ours["package"]), data), row.detect_thresh),
                "peer": scoring.score(data, peer["predictions"], row.detect_thresh),
            }
            record["runs"].append(run)
            if not args.keep:  # a package and its checkpoints are 100+ MB a run
                Path(ours["package"]).unlink()
                shutil.rmtree(work / "job", ignore_errors=True)
            print(
                f"{key} seed {seed}: ours {run['ours']} ({run['ours_wall']:.0f} s, lr {run['lr']}, "
                f"{run['epochs_run']} epochs) | peer {run['peer']} ({run['peer_wall']:.0f} s)",
                flush=True,
            )

    print()
    head = (
        f"{'row':<16} {'data':<9} {'metric':<14} {'ours mean [min..max]':<24} {'peer mean [min..max]':<24} "
        f"{'ratio':>6} {'wall s ours/peer':>17} {'ratio':>6}  goal"
    )
    print(head)
    print("-" * len(head))
    failed = 0
    for key, record in results.items():
        runs = record["runs"]
        ours_wall = _stats([r["ours_wall"] for r in runs])[0]
        peer_wall = _stats([r["peer_wall"] for r in runs])[0]
        wall_ratio = ours_wall / max(peer_wall, 1e-9)
        for metric in runs[0]["ours"]:
            ours = [r["ours"][metric] for r in runs]
            peer = [r["peer"][metric] for r in runs]
            ratio = f"{_stats(ours)[0] / _stats(peer)[0]:>6.2f}" if _stats(peer)[0] > 0 else "     -"
            ok = _stats(ours)[0] >= _stats(peer)[0] and wall_ratio <= WALL_GOAL
            failed += not ok
            print(
                f"{key:<16} {record['data']:<9} {metric:<14} {_fmt(ours):<24} {_fmt(peer):<24} {ratio} "
                f"{f'{ours_wall:.0f}/{peer_wall:.0f}':>17} {wall_ratio:>6.2f}  {'PASS' if ok else 'FAIL'}"
            )
    print(
        f"\nseeds {seeds}; {'quick' if args.quick else 'full'} data; device {args.device}; "
        f"goal: ours >= peer and wall ratio <= {WALL_GOAL}"
        + (f"; DIAGNOSTIC ours with {' '.join(extra)}" if extra else "")
    )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
