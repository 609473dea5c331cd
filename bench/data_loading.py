"""Chips/s through gpjobs' training-data loader vs a bare loop that only decodes the same files.

Both sides, in the same run, read the same export (image chip + label raster per sample). The bare
loop decodes with tifffile.imread (the ratio the goal is stated in) and, second line, with libtiff
(imagecodecs.tiff_decode): the loader decodes with libtiff when its folder's first chip and label decode
to the same arrays with both (2-3x cheaper than tifffile for a 256 px LZW chip), so the second ratio is
its overhead over the decoding it actually does. The loader additionally maps class values to indices, draws
the random flip/rotation, batches, ships the batch from its workers, and hands the consumer what the
data contract promises (normalised float32 images, int64 masks). Target: ratio >= 0.8 with one worker
(decoding, not our code, must be the bottleneck), higher with more workers.

Bare and loader passes alternate and are paired, so a burst of load from other work on the box hits
both sides of a ratio alike; the median of >= 5 paired ratios is reported with its range, and the
1-minute load average around each variant. On a shared box wall-clock ratios swing with the load
(and a worker process can even win a bigger share of a crowded CPU than the single bare process), so
CPU time is reported too: bare decode CPU per chip vs loader CPU per chip (consumer + workers), whose
ratio is the loader's efficiency whatever the load. `--breakdown` also times the stages of one chip.

    .venv/bin/python bench/data_loading.py [--chips 96] [--size 256] [--bands 3] [--dtype uint8]
                                           [--workers default 0 1 2] [--repeats 7] [--breakdown]

`default` is what a server job gets when its num_workers argument is unset: the loader_workers setting of
the default configuration (auto: from one slot's CPU share and device kind on this machine,
scheduler/child_input.py). Goal at the default: ratio >= 0.9.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("OMP_NUM_THREADS", "1")


def bare_decode(records) -> float:
    """Seconds to decode every image and label of `records` with tifffile, nothing else."""
    import tifffile

    start = time.perf_counter()
    for rec in records:
        tifffile.imread(rec.image)
        tifffile.imread(rec.label)
    return time.perf_counter() - start


def bare_libtiff(records) -> float:
    """Seconds to read and decode every image and label of `records` with libtiff (imagecodecs.tiff_decode:
    the decoder the loader uses when a folder's first chip decodes the same with it as with tifffile)."""
    import imagecodecs

    start = time.perf_counter()
    for rec in records:
        for path in (rec.image, rec.label):
            with open(path, "rb") as fh:
                imagecodecs.tiff_decode(fh.read(), index=0)
    return time.perf_counter() - start


def loader_pass(loader) -> tuple[float, int]:
    """Seconds for one epoch and the chips it delivered (touching each batch, as a trainer would)."""
    start = time.perf_counter()
    n = 0
    for images, masks in loader:
        n += len(images)
        assert images.dtype.is_floating_point and masks.dtype.is_signed  # float32 / int64 reached us
    return time.perf_counter() - start, n


def worker_cpu(loader) -> float:
    """CPU seconds used so far by the loader's worker processes (Linux /proc; 0 when unavailable)."""
    iterator = getattr(getattr(loader, "loader", loader), "_iterator", None)
    total = 0.0
    for worker in getattr(iterator, "_workers", []) or []:
        try:
            with open(f"/proc/{worker.pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, IndexError, ValueError):
            pass
    return total


def default_workers() -> tuple[int, str]:
    """The loader workers a server job gets by default here, and a label saying why."""
    from gpjobs.config import load_config
    from gpjobs.scheduler.child_input import cpu_split
    from tests.fakes.fake_jobs import fake_request

    config = load_config(env={})
    split = cpu_split(config, config.devices[0], fake_request())
    return split.workers, (
        f"default ({split.workers}: {split.source}, {config.devices[0]} slot with "
        f"{split.cpus} CPU(s), {split.threads} trainer thread(s))"
    )


def load() -> str:
    one, five, _ = os.getloadavg()
    return f"{one:.2f}/{five:.2f}"


def breakdown(data, batch: int, repeats: int) -> None:
    """Median ms per chip of each stage, 0 workers (where the time goes, not a ratio)."""
    import torch

    from gpjobs.training.data.batching import RawCollate, _Finisher

    ds = data.train
    n = len(ds)
    collate, finish = RawCollate(ds.task), _Finisher(ds, None, pin=False)
    raws = [ds.raw(i) for i in range(n)]
    batches = [collate(raws[i : i + batch]) for i in range(0, n, batch)]
    stages = {
        "bare decode (tifffile.imread x2)": lambda: bare_decode(ds.records),
        "dataset.raw (decode + class LUT + draw)": lambda: [ds.raw(i) for i in range(n)],
        "collate raw batch (memcpy)": lambda: [collate(raws[i : i + batch]) for i in range(0, n, batch)],
        "finish (flip/rotate, normalise, int64)": lambda: [finish(b) for b in batches],
        "dataset[i] one by one (old per-sample path)": lambda: [ds[i] for i in range(n)],
    }
    print("per-chip stage times, 0 workers (median of", repeats, "passes):")
    for name, fn in stages.items():
        times = []
        for _ in range(repeats):
            torch.manual_seed(0)
            start = time.perf_counter()
            fn()
            times.append((time.perf_counter() - start) * 1e3 / n)
        print(f"  {name:46s} {statistics.median(times):6.3f} ms")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chips", type=int, default=96)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--bands", type=int, default=3)
    parser.add_argument("--dtype", default="uint8")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument(
        "--workers",
        nargs="+",
        default=["default"],
        help="worker counts to measure; 'default' = the server's default for this machine",
    )
    parser.add_argument("--repeats", type=int, default=7, help="paired timed passes per variant (>= 5)")
    parser.add_argument("--breakdown", action="store_true", help="also time each stage per chip")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(1)
    from gpjobs.training.data import open_training_data
    from tests.builders.exports import write_classified_tiles

    with tempfile.TemporaryDirectory() as tmp:
        folder = write_classified_tiles(tmp, n=args.chips, size=args.size, bands=args.bands, dtype=args.dtype)
        data = open_training_data([folder], task="segmentation", validation_percent=0, augment=True)
        records = data.train.records
        n = len(records)
        print(
            f"{n} chips {args.size}x{args.size}x{args.bands} {args.dtype} LZW TIFF + label, batch {args.batch}, "
            f"{os.cpu_count()} CPUs, load {load()} (1/5 min), torch threads 1"
        )
        bare_decode(records)  # warm the page cache for both sides
        if args.breakdown:
            breakdown(data, args.batch, args.repeats)
        for choice in args.workers:
            workers, label = default_workers() if choice == "default" else (int(choice), str(choice))
            train, _ = data.loaders(args.batch, num_workers=workers, pin_memory=torch.cuda.is_available())
            loader_pass(train)  # first pass starts the (persistent) workers
            before = load()
            pairs, bare_cpu, main_cpu, work_cpu, chips = [], 0.0, 0.0, 0.0, 0
            libtiff_rates = []
            for _ in range(args.repeats):
                c0 = time.process_time()
                bare_rate = n / bare_decode(records)
                c1 = time.process_time()
                libtiff_rates.append(n / bare_libtiff(records))
                w1 = worker_cpu(train)
                c1b = time.process_time()
                seconds, used = loader_pass(train)  # drop_last may leave a partial batch out
                c2, w2 = time.process_time(), worker_cpu(train)
                bare_cpu += c1 - c0
                main_cpu, work_cpu, chips = main_cpu + c2 - c1b, work_cpu + w2 - w1, chips + used
                pairs.append((bare_rate, used / seconds))
            ratios = sorted(ours / bare for bare, ours in pairs)
            vs_libtiff = sorted(ours / bare for bare, (_, ours) in zip(libtiff_rates, pairs))
            per_bare, per_main, per_work = (
                1e3 * bare_cpu / (n * args.repeats),
                1e3 * main_cpu / chips,
                1e3 * work_cpu / chips,
            )
            print(
                f"workers={label}: ratio {statistics.median(ratios):.2f} (median of {len(ratios)} paired runs, "
                f"range {ratios[0]:.2f}..{ratios[-1]:.2f}); loader {statistics.median(p[1] for p in pairs):6.1f} "
                f"chips/s, bare decode {statistics.median(p[0] for p in pairs):6.1f} chips/s (medians); "
                f"load {before} -> {load()}"
            )
            print(
                f"           vs bare libtiff decode (the loader's decoder here: "
                f"{'yes' if data.train._libtiff else 'no, tifffile'}): ratio {statistics.median(vs_libtiff):.2f} "
                f"(range {vs_libtiff[0]:.2f}..{vs_libtiff[-1]:.2f}), {statistics.median(libtiff_rates):6.1f} chips/s"
            )
            print(
                f"           CPU ms/chip: bare {per_bare:.2f}, loader {per_main + per_work:.2f} (consumer "
                f"{per_main:.2f} + workers {per_work:.2f}); CPU efficiency {per_bare / (per_main + per_work):.2f}"
            )
            del train
    return 0


if __name__ == "__main__":
    sys.exit(main())
