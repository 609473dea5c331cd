"""`gpjobs predict MODEL.dlpk CHIP... [--json]`: predictions from a package alone (fresh process)."""

from __future__ import annotations

import argparse

HELP = "Load a .dlpk and print predictions for image chips (class, class-mask summary, or boxes)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("package", metavar="MODEL.dlpk", help="a .dlpk, an extracted model folder or its .emd")
    parser.add_argument("chips", nargs="+", metavar="CHIP", help="image chips (TIFF, PNG, JPEG)")
    parser.add_argument("--json", action="store_true", help="one JSON object per chip on stdout")
    parser.add_argument(
        "--masks-dir",
        default=None,
        help="pixel classification: write each predicted class-value mask here as <chip>.tif",
    )
    parser.add_argument(
        "--out-dir", default=None, help="image translation: write each translated chip here as <chip>.tif (band units)"
    )
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument(
        "--box",
        default=None,
        metavar="X0,Y0,X1,Y1",
        help="object tracking: the object's box in the first CHIP (the chips are the frames of "
        "one sequence, in order); default: from the first frame's annotation",
    )
    parser.add_argument(
        "--object",
        default=None,
        metavar="ID",
        help="object tracking without --box: the object id in the first frame's annotation (default: the lowest)",
    )


def run(args: argparse.Namespace) -> int:
    from gpjobs.training.predict import run_predict

    return run_predict(args)
