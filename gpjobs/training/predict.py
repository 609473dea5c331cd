"""`gpjobs predict` in the training side: torch lives here, the command module only parses arguments."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def run_predict(args: argparse.Namespace) -> int:
    """`gpjobs predict`: load the package, predict each chip, print (and write masks/images when asked)."""
    import numpy as np
    import torch

    from gpjobs.export import ChipReadError
    from gpjobs.training.package import PackageError, load_model, open_package

    messages: list[str] = []
    try:
        with open_package(args.package) as package:
            family, model = load_model(package, say=lambda level, text: messages.append(text))
            info = family.info
            masks_dir = Path(args.masks_dir) if args.masks_dir else None
            if masks_dir:
                masks_dir.mkdir(parents=True, exist_ok=True)
            out_dir = Path(args.out_dir) if getattr(args, "out_dir", None) else None
            if out_dir:
                out_dir.mkdir(parents=True, exist_ok=True)
            chips = [Path(c) for c in args.chips]
            for start in range(0, len(chips), max(1, args.batch_size)):
                group = chips[start:start + args.batch_size]
                batch = torch.stack([_model_input(family, c, info) for c in group])
                for chip, prediction in zip(group, family.predict(model, batch)):
                    mask = prediction.pop("_mask", None)
                    if mask is not None and masks_dir is not None:
                        import tifffile

                        tifffile.imwrite(masks_dir / f"{chip.stem}.tif", np.asarray(mask).astype(np.int32))
                    image = prediction.pop("_image", None)
                    if image is not None and out_dir is not None:
                        prediction["output"] = str(_write_translated(out_dir / f"{chip.stem}.tif", image, info))
                    for key in [k for k in prediction if k.startswith("_")]:
                        prediction.pop(key)
                    _print(chip, prediction, args.json)
    except (PackageError, ChipReadError) as exc:
        print(f"gpjobs predict: {exc}", file=sys.stderr)
        return 2
    return 0


def _model_input(family, chip: Path, info):
    """One model input; paired models (change detection) get the before and after chips stacked."""
    import torch

    from gpjobs.training.data import to_model_input

    if getattr(family, "paired_input", False):
        return torch.cat([to_model_input(_read(p, info), info) for p in family.paired_chips(chip)])
    return to_model_input(_read(chip, info), info)


def _read(chip: Path, info):
    from gpjobs.export import read_chip

    array = read_chip(chip)
    if array.shape[2] != info.bands and info.source_bands and array.shape[2] != info.source_bands:
        raise SystemExit(f"{chip.name} has {array.shape[2]} bands; the model was trained on "
                         f"{info.source_bands} (using {info.bands})")
    return array


def _write_translated(path: Path, image, info) -> Path:
    """A translated (H, W, C) chip in band units: uint8 for 8-bit ImageNet-normalised models, else float32."""
    import numpy as np
    import tifffile

    array = np.asarray(image, dtype=np.float32)
    if info.normalization.kind == "imagenet":
        array = np.clip(np.rint(array), 0, 255).astype(np.uint8)
    tifffile.imwrite(path, array[..., 0] if array.shape[-1] == 1 else array)
    return path


def _print(chip: Path, prediction: dict, as_json: bool) -> None:
    if as_json:
        print(json.dumps({"chip": str(chip), **prediction}, default=float))
        return
    if "class_name" in prediction:
        text = f"{prediction['class_name']} ({prediction['score']:.3f})"
    elif "classes" in prediction:
        text = ", ".join(prediction["classes"]) or "(no class)"
    elif "class_pixels" in prediction:
        total = sum(prediction["class_pixels"].values()) or 1
        text = ", ".join(f"{k} {100 * v / total:.1f}%" for k, v in prediction["class_pixels"].items())
    elif "boxes" in prediction:
        text = f"{len(prediction['boxes'])} boxes: " + "; ".join(
            f"{lab} {s:.2f} [{', '.join(f'{v:.0f}' for v in box)}]"
            for box, s, lab in zip(prediction["boxes"], prediction.get("scores", []),
                                   prediction.get("labels", prediction.get("class_names", []))))
    elif "translated" in prediction:
        text = (f"{prediction['translated']} {prediction['size'][0]}x{prediction['size'][1]}x{prediction['bands']}, "
                f"band means {', '.join(f'{v:.1f}' for v in prediction['band_mean'])}"
                + (f" -> {prediction['output']}" if prediction.get("output") else ""))
    else:
        text = json.dumps(prediction)
    print(f"{chip.name}: {text}")
