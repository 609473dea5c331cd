"""`gpjobs predict` in the training side: torch lives here, the command module only parses arguments."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable
from pathlib import Path


def run_predict(args: argparse.Namespace) -> int:
    """`gpjobs predict`: load the package, predict each chip, print (and write masks/images when asked)."""
    import numpy as np
    import torch

    from gpjobs.catalog import ArgumentError
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
            groups: Iterable[tuple[list[Path], list[dict] | None]]
            if getattr(family, "sequence_input", False):  # a tracker: the chips are the frames of one sequence
                groups = [(chips, _track(family, model, chips, args, info))]
            else:
                groups = ((chips[s : s + args.batch_size], None) for s in range(0, len(chips), max(1, args.batch_size)))
            for group, predictions in groups:
                if predictions is None:
                    predictions = family.predict(model, torch.stack([_model_input(family, c, info) for c in group]))
                for chip, prediction in zip(group, predictions):
                    mask = prediction.pop("_mask", None)
                    if mask is not None and masks_dir is not None:
                        import tifffile

                        tifffile.imwrite(masks_dir / f"{chip.stem}.tif", np.asarray(mask).astype(np.int32))
                    instances = prediction.pop("_instances", None)
                    if instances is not None and masks_dir is not None:
                        import tifffile

                        tifffile.imwrite(masks_dir / f"{chip.stem}_instances.tif", np.asarray(instances, np.int32))
                    image = prediction.pop("_image", None)
                    if image is not None and out_dir is not None:
                        prediction["output"] = str(_write_translated(out_dir / f"{chip.stem}.tif", image, info))
                    for key in [k for k in prediction if k.startswith("_")]:
                        prediction.pop(key)
                    _print(chip, prediction, args.json)
    except (PackageError, ChipReadError, ArgumentError) as exc:
        print(f"gpjobs predict: {exc}", file=sys.stderr)
        return 2
    return 0


def _first_box(args: argparse.Namespace, first: Path) -> list[float]:
    """The tracked object's box in the first frame (its pixels): --box, else the box of object --object
    (default: the lowest id) in the frame's annotation (ObjectTracking layout: Annotations/<sequence>/)."""
    from gpjobs.catalog import ArgumentError
    from gpjobs.export.tracking import annotation_for, frame_objects

    if getattr(args, "box", None):
        try:
            box = [float(v) for v in str(args.box).split(",")]
        except ValueError:
            box = []
        if len(box) != 4 or not (box[0] < box[2] and box[1] < box[3]):
            raise ArgumentError(f"--box {args.box!r}: give X0,Y0,X1,Y1 in pixels of the first frame (X0 < X1, Y0 < Y1)")
        return box
    annotation = annotation_for(first)
    objects = dict(frame_objects(annotation)) if annotation is not None else {}
    wanted = int(args.object) if getattr(args, "object", None) else min(objects, default=None)
    if wanted not in objects:
        where = (
            f"object {wanted} is not in {annotation.name}"
            if annotation is not None
            else "the first frame has no annotation in Annotations/<sequence>/ to take it from"
        )
        raise ArgumentError(f"{first.name}: give the tracked object's box with --box X0,Y0,X1,Y1 ({where})")
    return list(objects[wanted])


def _track(family, model, chips: list[Path], args: argparse.Namespace, info) -> list[dict]:
    """Track through the frames at the model's chip size; boxes come back in the frames' pixels."""
    import torch

    from gpjobs.export import read_chip

    height, width = read_chip(chips[0]).shape[:2]
    sx, sy = info.chip_size[1] / width, info.chip_size[0] / height
    box = _first_box(args, chips[0])
    frames = torch.stack([_model_input(family, c, info) for c in chips])
    predictions = family.predict(model, frames, first_box=[box[0] * sx, box[1] * sy, box[2] * sx, box[3] * sy])
    for prediction in predictions:
        x0, y0, x1, y1 = prediction["box"]
        prediction["box"] = [round(x0 / sx, 2), round(y0 / sy, 2), round(x1 / sx, 2), round(y1 / sy, 2)]
    return predictions


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
        raise SystemExit(
            f"{chip.name} has {array.shape[2]} bands; the model was trained on {info.source_bands} (using {info.bands})"
        )
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
            for box, s, lab in zip(
                prediction["boxes"],
                prediction.get("scores", []),
                prediction.get("labels", prediction.get("class_names", [])),
            )
        )
    elif "caption" in prediction:
        text = f"{prediction['caption']} ({prediction['score']:.3f})"
    elif "box" in prediction and "mask_pixels" in prediction:
        text = (
            f"box [{', '.join(f'{v:.1f}' for v in prediction['box'])}] score {prediction['score']:.3f}, "
            f"mask {prediction['mask_pixels']} px"
        )
    elif "translated" in prediction:
        text = (
            f"{prediction['translated']} {prediction['size'][0]}x{prediction['size'][1]}x{prediction['bands']}, "
            f"band means {', '.join(f'{v:.1f}' for v in prediction['band_mean'])}"
            + (f" -> {prediction['output']}" if prediction.get("output") else "")
        )
    else:
        text = json.dumps(prediction)
    print(f"{chip.name}: {text}")
