"""Chips/s through gpjobs' training-data loader vs a bare loop that only decodes the same files.

Both sides, in the same run, read the same export (image chip + label raster per sample) with the
same library (tifffile + imagecodecs). The loader additionally maps class values to indices,
normalises, applies the random flip/rotation and collates batches. Target: ratio >= 0.8 with one
worker (decoding, not our code, must be the bottleneck), higher with more workers.

    .venv/bin/python bench/data_loading.py [--chips 96] [--size 256] [--bands 3] [--dtype uint8] [--workers 0 1 2]
"""

from __future__ import annotations

import argparse
import os
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


def loader_pass(loader) -> float:
    start = time.perf_counter()
    n = 0
    for images, _ in loader:
        n += len(images)
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chips", type=int, default=96)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--bands", type=int, default=3)
    parser.add_argument("--dtype", default="uint8")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--repeats", type=int, default=5, help="paired timed passes per variant")
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
        print(f"{n} chips {args.size}x{args.size}x{args.bands} {args.dtype} LZW TIFF + label, batch {args.batch}, "
              f"{os.cpu_count()} CPUs")
        bare_decode(records)  # warm the page cache for both sides
        # The box is shared with other work: alternate bare and loader passes and pair them, so that a
        # burst of outside load hits both sides of a ratio alike; report the median of the paired ratios.
        for workers in args.workers:
            train, _ = data.loaders(args.batch, num_workers=workers, pin_memory=torch.cuda.is_available())
            loader_pass(train)  # first pass starts the (persistent) workers
            used = len(train) * args.batch  # drop_last may leave a partial batch out
            pairs = []
            for _ in range(args.repeats):
                bare_rate = n / bare_decode(records)
                pairs.append((bare_rate, used / loader_pass(train)))
            ratios = sorted(ours / bare for bare, ours in pairs)
            bare_rate, rate = max(p[0] for p in pairs), max(p[1] for p in pairs)
            print(f"workers={workers}: loader {rate:7.1f} chips/s, bare decode {bare_rate:7.1f} chips/s, "
                  f"ratio {ratios[len(ratios) // 2]:.2f} (median of {len(ratios)} paired runs, "
                  f"{ratios[0]:.2f}..{ratios[-1]:.2f})")
            del train
    return 0


if __name__ == "__main__":
    sys.exit(main())
