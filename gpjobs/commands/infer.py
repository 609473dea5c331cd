"""`gpjobs infer MODEL.dlpk RASTER... --out OUT [--arguments JSON]`: run a package over whole rasters."""

from __future__ import annotations

import argparse
import json
import sys
import time

HELP = "Run a .dlpk's raster function over a whole raster, as ArcGIS does (GeoTIFF or GeoJSON out)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("package", metavar="MODEL.dlpk", help="a .dlpk, an extracted model folder or its .emd")
    parser.add_argument(
        "rasters",
        nargs="+",
        metavar="RASTER",
        help="the input raster (change detection: the before and the after raster)",
    )
    parser.add_argument(
        "--out", required=True, help="output: a GeoTIFF for pixel outputs, GeoJSON for detected or classified objects"
    )
    parser.add_argument(
        "--arguments",
        default=None,
        help='model arguments as JSON, e.g. \'{"padding": 16, "batch_size": 4, "threshold": 0.5}\'',
    )
    parser.add_argument(
        "--features",
        default=None,
        help="classify objects: polygons (GeoJSON, the raster's coordinates) to classify; "
        "default: every chip-sized tile of the raster",
    )
    parser.add_argument("--device", default="cpu", help="cpu or cuda:N")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def _arguments(text: str | None) -> dict:
    if not text:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise SystemExit(f"gpjobs infer: --arguments is not JSON ({exc}); e.g. '{{\"padding\": 16}}'") from exc
    if not isinstance(value, dict):
        raise SystemExit("gpjobs infer: --arguments must be a JSON object of argument names to values")
    return value


def _device(text: str) -> int:
    text = text.strip().lower()
    if text == "cpu":
        return -1
    if text.startswith("cuda"):
        return int(text.split(":", 1)[1]) if ":" in text else 0
    raise SystemExit(f"gpjobs infer: --device {text!r}: use cpu or cuda:N")


class ProgressBar:
    """`[#####.....] 12/40 blocks  3.1 blocks/s` on stderr, redrawn in place."""

    def __init__(self, unit: str = "blocks") -> None:
        self.unit = unit
        self.start = time.monotonic()

    def __call__(self, done: int, total: int) -> None:
        width = 30
        filled = int(width * done / max(total, 1))
        rate = done / max(time.monotonic() - self.start, 1e-9)
        end = "\n" if done >= total else ""
        print(
            f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{total} {self.unit}  {rate:.1f}/s",
            end=end,
            file=sys.stderr,
            flush=True,
        )


def run(args: argparse.Namespace) -> int:
    from gpjobs.inference.host import InferenceError, run_inference

    try:
        result = run_inference(
            args.package,
            args.rasters,
            args.out,
            arguments=_arguments(args.arguments),
            device=_device(args.device),
            features=args.features,
            progress=None if args.quiet else ProgressBar(),
        )
    except InferenceError as exc:
        print(f"gpjobs infer: {exc}", file=sys.stderr)
        return 2
    what = f"{result.features} features" if result.kind == "features" else "pixels"
    print(
        f"{result.output}: {what} from {result.blocks} blocks "
        f"(tile {result.configuration.get('tx')}x{result.configuration.get('ty')}, "
        f"padding {result.configuration.get('padding')})"
    )
    return 0
