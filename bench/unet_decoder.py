"""Benchmark: UNET with gpjobs' light U-Net decoder vs fastai's DynamicUnet (arcgis.learn's UnetClassifier
decoder), trained side by side on the same real chips with the same seeds.

    PYTHONPATH=. .venv/bin/python bench/unet_decoder.py [--samples ../shared/samples] [--size 64] [--window 224]
        [--epochs 12] [--seeds 0 1 2] [--backbone RESNET18] [--weights-dir DIR --freeze]

The chips are the real palm-pascal-voc sample (150 RGB JPEG chips of 448 px, ArcGIS Pro 2.1 export) turned into
a Classified_Tiles export: each palm box rasterised as the ellipse inscribed in it (class 1 "Palm", the rest
NoData), of each chip the --window px square with the most palm, resized to --size. Prints validation
mIoU / accuracy / loss per run, the means, and the ratio DynamicUnet / gpjobs decoder.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from gpjobs.export import read_label_raster  # noqa: E402
from tests.builders.exports import write_image, write_label_raster, write_metadata  # noqa: E402


def palm_classified_tiles(samples: Path, out: Path, size: int, window: int = 448) -> Path:
    """The palm chips as a Classified_Tiles export of `size` px chips: of each 448-px chip, the `window`-px square
    (on a grid of half-window steps) that holds the most palm pixels."""
    from PIL import Image

    source = samples / "palm-pascal-voc"
    folder = out / "palm_classified"
    (folder / "images").mkdir(parents=True)
    (folder / "labels").mkdir()
    rows, images, pixels = [], [], 0
    for label in sorted((source / "labels").glob("*.xml")):
        chip = source / "images" / f"{label.stem}.jpg"
        if not chip.is_file():
            continue
        image = Image.open(chip).convert("RGB")
        full = np.zeros((image.height, image.width), np.int64)
        yy, xx = np.mgrid[0 : image.height, 0 : image.width] + 0.5
        for box in ET.parse(label).getroot().iter("bndbox"):
            x0, y0, x1, y1 = (float(box.find(k).text) for k in ("xmin", "ymin", "xmax", "ymax"))
            cx, cy, rx, ry = (x0 + x1) / 2, (y0 + y1) / 2, max((x1 - x0) / 2, 0.5), max((y1 - y0) / 2, 0.5)
            full[((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 <= 1.0] = 1
        steps = range(0, image.width - window + 1, max(1, window // 2))
        top, left = max(
            ((t, x) for t in steps for x in steps),
            key=lambda tx: full[tx[0] : tx[0] + window, tx[1] : tx[1] + window].sum(),
        )
        crop = image.crop((left, top, left + window, top + window))
        array = np.asarray(crop.resize((size, size), Image.BILINEAR))
        mask = np.asarray(
            Image.fromarray(full[top : top + window, left : left + window].astype(np.uint8)).resize(
                (size, size), Image.NEAREST
            )
        ).astype(np.int64)
        write_image(folder / f"images/{label.stem}.tif", array)
        write_label_raster(folder / f"labels/{label.stem}.tif", mask)
        rows.append([f"images/{label.stem}.tif", f"labels/{label.stem}.tif"])
        images.append(array)
        pixels += int(mask.sum())
    write_metadata(
        folder,
        "Classified_Tiles",
        classes=[(1, "Palm")],
        size=size,
        bands=3,
        rows=rows,
        images=images,
        per_class=[pixels],
        pixel_stats=True,
    )
    return folder


def run(folder: Path, work: Path, decoder: str, seed: int, args: argparse.Namespace) -> dict:
    import torch

    from gpjobs.training.models import segmentation
    from gpjobs.training.models.decoders import DynamicUnetDecoder, SegmentationNet, UnetDecoder
    from tests.training.helpers import epochs_of, make_spec, result_of, train

    def build(family):  # the family's own build, with the decoder under test
        backbone = family._backbone()
        if decoder == "gpjobs":
            head = UnetDecoder(backbone.out_channels, family.num_outputs)
        else:
            head = DynamicUnetDecoder(backbone.out_channels, backbone.strides, family.num_outputs, family.in_channels)
        return SegmentationNet(backbone, head)

    segmentation.UnetFamily.build = build
    torch.set_num_threads(1)
    spec = make_spec(
        work / f"{decoder}-{seed}",
        [folder],
        "UNET",
        backbone_model=args.backbone,
        max_epochs=args.epochs,
        batch_size=8,
        learning_rate=args.lr,
        validation_percent=20.0,
        stop_training=False,
        freeze_model=bool(args.freeze),
        arguments={"seed": seed},
        weights_dir=args.weights_dir,
    )
    _, reporter = train(spec)
    best = result_of(reporter)["metrics"]
    last = epochs_of(reporter)[-1]
    return {
        "miou": best["miou"],
        "accuracy": best["accuracy"],
        "valid_loss": best["valid_loss"],
        "seconds": sum(e.get("seconds", 0.0) for e in epochs_of(reporter)),
        "last_epoch_loss": last["valid_loss"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", default=str(REPO.parent / "shared" / "samples"))
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--window", type=int, default=224, help="source pixels per chip (448: the whole chip)")
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--backbone", default="RESNET18")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--weights-dir", default=None)
    parser.add_argument("--freeze", action="store_true")
    args = parser.parse_args()
    samples = Path(args.samples)
    if not (samples / "palm-pascal-voc").is_dir():
        sys.exit(f"no palm-pascal-voc sample under {samples}")
    with tempfile.TemporaryDirectory() as tmp:
        folder = palm_classified_tiles(samples, Path(tmp), args.size, args.window)
        share = np.mean([read_label_raster(p).mean() for p in sorted((folder / "labels").glob("*.tif"))])
        print(f"{len(list((folder / 'labels').glob('*.tif')))} chips of {args.size} px, palm pixels {share:.1%}")
        results: dict[str, list[dict]] = {"gpjobs": [], "dynamic_unet": []}
        for seed in args.seeds:
            for decoder in results:  # interleaved, so machine load drifts hit both alike
                out = run(folder, Path(tmp), decoder, seed, args)
                results[decoder].append(out)
                print(
                    f"seed {seed} {decoder:>12}: miou {out['miou']:.4f} accuracy {out['accuracy']:.4f} "
                    f"valid_loss {out['valid_loss']:.4f}",
                    flush=True,
                )
    means = {
        d: {k: statistics.mean(r[k] for r in rs) for k in ("miou", "accuracy", "valid_loss")}
        for d, rs in results.items()
    }
    for d, m in means.items():
        print(f"mean {d:>12}: miou {m['miou']:.4f} accuracy {m['accuracy']:.4f} valid_loss {m['valid_loss']:.4f}")
    wins = sum(b["miou"] >= a["miou"] for a, b in zip(results["gpjobs"], results["dynamic_unet"]))
    print(
        f"ratio dynamic_unet/gpjobs: miou {means['dynamic_unet']['miou'] / means['gpjobs']['miou']:.3f}, "
        f"valid_loss {means['dynamic_unet']['valid_loss'] / means['gpjobs']['valid_loss']:.3f}; "
        f"dynamic_unet miou >= gpjobs in {wins}/{len(args.seeds)} seeds"
    )


if __name__ == "__main__":
    main()
