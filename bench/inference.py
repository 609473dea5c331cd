"""Benchmark: the inference host's throughput (chips/s) over a SIZE x SIZE 3-band raster with a UNET-RESNET18
package, divided by a bare loop calling the same TorchScript network on the same chips (already normalised
tensors in memory, same batch size, argmax only). Both run in this process, one after the other. Goal >= 0.9.

    .venv/bin/python bench/inference.py                 # 4096 x 4096, 256-px chips: 256 chips
    .venv/bin/python bench/inference.py --size 1024     # quick: 16 chips
    .venv/bin/python bench/inference.py --size 2048 --repeats 3   # steadier on a busy machine

The host's time includes everything a user waits for: loading the package, reading blocks with rasterio,
normalising, the network, class mapping, stitching and writing the compressed GeoTIFF.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def make_package(tmp: Path, chip: int) -> Path:
    """A UNET-RESNET18 trained for one epoch on a tiny export (the weights do not matter for speed)."""
    from gpjobs.training.events import ListReporter
    from gpjobs.training.protocol import JobSpec
    from gpjobs.training.run_job import run_job
    from tests.builders.exports import write_classified_tiles

    folder = write_classified_tiles(tmp, n=8, size=chip)
    spec = JobSpec(job_id="bench", in_folders=[str(folder)], model_type="UNET", output_name="unet",
                   work_dir=str(tmp / "work"), batch_size=4, max_epochs=1, learning_rate=0.01,
                   validation_percent=25.0, backbone_model="RESNET18", num_threads=1)
    reporter = ListReporter()
    run_job(spec, reporter)
    result = [e for e in reporter.events if e["type"] == "result"]
    if not result:
        raise SystemExit(f"training the benchmark model failed: {reporter.events[-3:]}")
    return Path(result[-1]["package"])


def make_raster(path: Path, size: int, chip: int) -> np.ndarray:
    """A georeferenced uint8 raster of random blobs (deterministic); returns its pixels (3, size, size)."""
    import rasterio
    from rasterio.transform import from_origin

    rng = np.random.default_rng(0)
    coarse = rng.integers(0, 256, (3, size // 16 + 1, size // 16 + 1), dtype=np.uint8)
    pixels = np.repeat(np.repeat(coarse, 16, axis=1), 16, axis=2)[:, :size, :size]
    pixels = (pixels.astype(np.int16) + rng.integers(-10, 10, pixels.shape)).clip(0, 255).astype(np.uint8)
    profile = {"driver": "GTiff", "width": size, "height": size, "count": 3, "dtype": "uint8", "crs": "EPSG:32617",
               "transform": from_origin(500000.0, 4000000.0, 0.5, 0.5), "tiled": True, "blockxsize": 256,
               "blockysize": 256}
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(pixels)
    return pixels


def bare_loop(package: Path, pixels: np.ndarray, chip: int, batch: int, tmp: Path) -> tuple[float, int]:
    """(seconds, chips): the package's network over every chip, tensors prepared beforehand."""
    import torch

    folder = tmp / "bare"
    with zipfile.ZipFile(package) as zf:
        zf.extractall(folder)
    network = torch.jit.load(str(folder / "unet.pt")).eval()
    mean = torch.tensor([0.485, 0.456, 0.406])[:, None, None]
    std = torch.tensor([0.229, 0.224, 0.225])[:, None, None]
    n = pixels.shape[1] // chip
    chips = torch.from_numpy(pixels.reshape(3, n, chip, n, chip).transpose(1, 3, 0, 2, 4).reshape(-1, 3, chip, chip)
                             .astype(np.float32))
    chips = (chips / 255 - mean) / std
    with torch.no_grad():
        network(chips[:batch]).argmax(1)  # warm-up
        start = time.perf_counter()
        for i in range(0, chips.shape[0], batch):
            network(chips[i:i + batch]).argmax(1)
    return time.perf_counter() - start, chips.shape[0]


def host_run(package: Path, raster: Path, out: Path, batch: int) -> float:
    from gpjobs.inference.host import run_inference

    start = time.perf_counter()
    run_inference(package, [raster], out, arguments={"padding": 0, "batch_size": batch})
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=4096, help="raster width and height in pixels")
    parser.add_argument("--chip", type=int, default=256, help="model chip size")
    parser.add_argument("--batch", type=int, default=4, help="batch size (host: batch_size argument)")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument("--repeats", type=int, default=1,
                        help="alternate bare and host runs this many times and keep each one's best (a busy "
                             "machine's noise only ever slows a run down)")
    args = parser.parse_args()
    if args.size % args.chip:
        raise SystemExit("--size must be a multiple of --chip")
    import torch

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="gpjobs-bench-infer-") as name:
        tmp = Path(name)
        package = make_package(tmp, args.chip)
        pixels = make_raster(tmp / "raster.tif", args.size, args.chip)
        bare_s = host_s = float("inf")
        for _ in range(max(1, args.repeats)):
            seconds, chips = bare_loop(package, pixels, args.chip, args.batch, tmp)
            bare_s = min(bare_s, seconds)
            host_s = min(host_s, host_run(package, tmp / "raster.tif", tmp / "out.tif", args.batch))
    bare_rate, host_rate = chips / bare_s, chips / host_s
    print(f"raster {args.size}x{args.size}x3, {chips} chips of {args.chip}, batch {args.batch}, "
          f"{args.threads} threads")
    print(f"bare loop : {bare_rate:8.2f} chips/s")
    print(f"host      : {host_rate:8.2f} chips/s (package load, rasterio blocks, PRF, GeoTIFF)")
    print(f"ratio host / bare = {host_rate / bare_rate:.3f} (goal >= 0.9)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
