"""Benchmark: the same UNET-RESNET18 package over the same SIZE x SIZE 3-band raster, three ways, side by side:

1. host / bare: the inference host's throughput (chips/s), divided by a bare loop calling the same TorchScript
   network on the same chips (already normalised tensors in memory, same batch size, argmax only). Goal >= 0.9.
2. server / host: the ClassifyPixelsUsingDeepLearning task on a real `gpjobs serve` (submit -> succeeded, polled
   every 0.25 s: queue, the warm child's handoff, block journal, GeoTIFF, publishing the item) divided by the host
   alone in this process. Goal >= 0.9 on a raster the host needs >= 30 s for.

    .venv/bin/python bench/inference.py                 # 4096 x 4096, 256-px chips: 256 chips
    .venv/bin/python bench/inference.py --size 1024     # quick: 16 chips
    .venv/bin/python bench/inference.py --size 2048 --repeats 3   # steadier on a busy machine
    .venv/bin/python bench/inference.py --compare server            # only server / host

The host's time includes everything a user waits for: loading the package, reading blocks with rasterio,
normalising, the network, class mapping, stitching and writing the compressed GeoTIFF. The server's child has
`--threads` threads (child_threads) like this process, and is the warm child the server keeps ready.
"""

from __future__ import annotations

import argparse
import json
import shutil
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
    from tests.builders.exports import write_classified_tiles
    from tests.training.helpers import make_spec, train

    folder = write_classified_tiles(tmp, n=8, size=chip)
    spec = make_spec(
        tmp,
        [folder],
        "UNET",
        batch_size=4,
        max_epochs=1,
        learning_rate=0.01,
        validation_percent=25.0,
        backbone_model="RESNET18",
        output_name="unet",
    )
    _code, reporter = train(spec)
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
    profile = {
        "driver": "GTiff",
        "width": size,
        "height": size,
        "count": 3,
        "dtype": "uint8",
        "crs": "EPSG:32617",
        "transform": from_origin(500000.0, 4000000.0, 0.5, 0.5),
        "tiled": True,
        "blockxsize": 256,
        "blockysize": 256,
    }
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(pixels)
    return pixels


def bare_loop(package: Path, pixels: np.ndarray, chip: int, batch: int, tmp: Path, threads: int) -> tuple[float, int]:
    """(seconds, chips): the package's network over every chip, tensors prepared beforehand."""
    import torch

    torch.set_num_threads(threads)

    folder = tmp / "bare"
    with zipfile.ZipFile(package) as zf:
        zf.extractall(folder)
    emd = json.loads(next(folder.glob("*.emd")).read_text())
    network = torch.jit.load(str(folder / emd["TorchScriptFile"])).eval()
    mean = torch.tensor([0.485, 0.456, 0.406])[:, None, None]
    std = torch.tensor([0.229, 0.224, 0.225])[:, None, None]
    n = pixels.shape[1] // chip
    chips = torch.from_numpy(
        pixels.reshape(3, n, chip, n, chip).transpose(1, 3, 0, 2, 4).reshape(-1, 3, chip, chip).astype(np.float32)
    )
    chips = (chips / 255 - mean) / std
    with torch.no_grad():
        network(chips[:batch]).argmax(1)  # warm-up
        start = time.perf_counter()
        for i in range(0, chips.shape[0], batch):
            network(chips[i : i + batch]).argmax(1)
    return time.perf_counter() - start, chips.shape[0]


def host_run(package: Path, raster: Path, out: Path, batch: int, threads: int) -> float:
    import torch

    from gpjobs.inference.host import run_inference

    torch.set_num_threads(threads)  # training the package (make_package) set this process's threads to 1

    start = time.perf_counter()
    run_inference(package, [raster], out, arguments={"padding": 0, "batch_size": batch})
    return time.perf_counter() - start


class TaskServer:
    """A real `gpjobs serve` (tests/harness/server.py) whose raster store holds the raster and whose file share
    holds the package; its one cpu slot's child has `threads` threads."""

    def __init__(self, tmp: Path, package: Path, raster: Path, threads: int) -> None:
        from tests.harness.server import GpjobsServer

        (tmp / "server" / "share").mkdir(parents=True)
        shutil.copy(package, tmp / "server" / "share" / "unet.dlpk")
        self.server = GpjobsServer(
            tmp / "server",
            trainer="real",
            raster_stores={"imagery": raster.parent},
            settings={"child_threads": threads, "max_attempts": 1, "progress_flush_s": 2.0},
        ).start()  # the server's default
        self.runs = 0

    def wait_warm(self, timeout: float = 300) -> None:
        """Until the slot's warm child has its imports (a server that has been idle a moment)."""
        deadline = time.monotonic() + timeout  # one "ready" per warm child: the first, then one after each job
        while self.server.log_path.read_text(errors="replace").count("warm trainer ready") <= self.runs:
            if time.monotonic() > deadline:
                raise SystemExit(f"the server's warm child did not start:\n{self.server.log_tail()}")
            time.sleep(0.2)

    def run(self, raster: Path, batch: int) -> float:
        """Seconds from submitJob to the first poll that sees esriJobSucceeded."""
        self.wait_warm()
        start = time.perf_counter()
        answer = self.server.submit_to(
            TASK,
            inputRaster=json.dumps({"uri": f"/rasterStores/imagery/{raster.name}"}),
            model=json.dumps({"uri": "/fileShares/default/unet.dlpk"}),
            outputClassifiedRaster=json.dumps({"name": f"bench{self.runs}"}),
            modelArguments=json.dumps({"padding": 0, "batch_size": batch}),
        )
        while (info := self.server.job(answer["jobId"], TASK))["jobStatus"] not in TERMINAL:
            time.sleep(POLL_S)
        seconds = time.perf_counter() - start
        self.runs += 1
        if info["jobStatus"] != "esriJobSucceeded":
            raise SystemExit(f"the server task failed:\n{self.server.diagnose(answer['jobId'])}")
        return seconds

    def stop(self) -> None:
        self.server.stop()


TASK = "ClassifyPixelsUsingDeepLearning"
POLL_S = 0.25  # a client's poll interval (arcgis: 1 s); at most this much of the server's time is the poll's
TERMINAL = ("esriJobSucceeded", "esriJobFailed", "esriJobTimedOut", "esriJobCancelled")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=4096, help="raster width and height in pixels")
    parser.add_argument("--chip", type=int, default=256, help="model chip size")
    parser.add_argument("--batch", type=int, default=4, help="batch size (host: batch_size argument)")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument(
        "--repeats",
        type=int,
        default=1,
        help="alternate the runs this many times and keep each one's best (a busy machine's noise "
        "only ever slows a run down)",
    )
    parser.add_argument(
        "--compare",
        choices=("bare", "server", "both"),
        default="both",
        help="host / bare loop, server task / host, or both",
    )
    args = parser.parse_args()
    if args.size % args.chip:
        raise SystemExit("--size must be a multiple of --chip")
    import torch

    torch.set_num_threads(args.threads)
    chips = (args.size // args.chip) ** 2
    with tempfile.TemporaryDirectory(prefix="gpjobs-bench-infer-") as name:
        tmp = Path(name)
        package = make_package(tmp, args.chip)
        (tmp / "imagery").mkdir()
        raster = tmp / "imagery" / "raster.tif"
        pixels = make_raster(raster, args.size, args.chip)
        server = TaskServer(tmp, package, raster, args.threads) if args.compare != "bare" else None
        bare_s = host_s = server_s = float("inf")
        try:
            for _ in range(max(1, args.repeats)):
                if args.compare != "server":
                    bare_s = min(bare_s, bare_loop(package, pixels, args.chip, args.batch, tmp, args.threads)[0])
                host_s = min(host_s, host_run(package, raster, tmp / "out.tif", args.batch, args.threads))
                if server is not None:
                    server_s = min(server_s, server.run(raster, args.batch))
        finally:
            if server is not None:
                server.stop()
    print(
        f"raster {args.size}x{args.size}x3, {chips} chips of {args.chip}, batch {args.batch}, "
        f"{args.threads} threads, best of {max(1, args.repeats)}"
    )
    host_rate = chips / host_s
    print(f"host      : {host_rate:8.2f} chips/s, {host_s:.1f} s (package load, rasterio blocks, PRF, GeoTIFF)")
    if args.compare != "server":
        bare_rate = chips / bare_s
        print(f"bare loop : {bare_rate:8.2f} chips/s")
        print(f"ratio host / bare = {host_rate / bare_rate:.3f} (goal >= 0.9)")
    if server is not None:
        print(
            f"server    : {chips / server_s:8.2f} chips/s, {server_s:.1f} s (submit -> succeeded: queue, warm "
            "child, block journal, GeoTIFF, item)"
        )
        print(f"ratio server / host = {host_s / server_s:.3f} (goal >= 0.9 where the host needs >= 30 s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
