"""Shared fixtures for the inference tests: tiny trained packages (each trained once per session) and
georeferenced rasters mosaicked from export chips.

Training budget: one epoch on a handful of 32-64 px chips, RESNET18 (or the type's only backbone), a fixed
learning rate (no LR finder). The models need not be good: the tests compare two ways of running the same
model, so any deterministic network will do.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from gpjobs.training.protocol import ExitCode
from tests.builders import exports
from tests.training.helpers import emd_of, make_spec, result_of, train

SMALL_RCNN = {
    "rpn_pre_nms_top_n_test": 200,
    "rpn_post_nms_top_n_test": 100,
    "rpn_pre_nms_top_n_train": 200,
    "rpn_post_nms_top_n_train": 100,
    "rpn_batch_size_per_image": 64,
    "box_batch_size_per_image": 64,
    "box_detections_per_img": 20,
}

# model type -> (export builder, builder kwargs, training kwargs)
RECIPES: dict[str, tuple[Callable[..., Path], dict[str, Any], dict[str, Any]]] = {
    "UNET": (
        exports.write_classified_tiles,
        {"n": 16, "size": 64},
        {  # learns enough to paint both classes
            "learning_rate": 0.01,
            "freeze_model": False,
            "max_epochs": 3,
        },
    ),
    "PSPNET": (exports.write_classified_tiles, {"n": 8, "size": 32}, {}),
    "DEEPLAB": (exports.write_classified_tiles, {"n": 8, "size": 32}, {}),
    "MMSEGMENTATION": (exports.write_classified_tiles, {"n": 8, "size": 32}, {"arguments": {"model": "unet"}}),
    "HED_EDGEDETECTOR": (exports.write_classified_tiles, {"n": 8, "size": 32}, {}),
    "BDCN_EDGEDETECTOR": (exports.write_classified_tiles, {"n": 8, "size": 32}, {}),
    "MULTITASK_ROADEXTRACTOR": (exports.write_classified_tiles, {"n": 8, "size": 32}, {}),
    "CONNECTNET": (exports.write_classified_tiles, {"n": 8, "size": 32}, {}),
    "CHANGEDETECTOR": (exports.write_change_detection, {"n": 8, "size": 32}, {}),
    "FEATURE_CLASSIFIER": (exports.write_labeled_tiles, {"n": 8, "size": 32}, {}),
    "DEEPSORT": (exports.write_imagenet, {"n": 8, "size": 32}, {"backbone_model": "REID_V1"}),
    # bias 0: an SSD starts with scores of 0.5 (not 0.02), so one epoch already gives boxes to compare
    "SSD": (exports.write_pascal_voc, {"n": 8, "size": 32}, {"arguments": {"bias": 0.0}}),
    # RetinaNet and YOLOv3 start with object scores of ~0.01: a few epochs lift some over their decoders' floor
    "RETINANET": (
        exports.write_pascal_voc,
        {"n": 8, "size": 32},
        {
            "arguments": {"scales": [1.0], "ratios": [1.0]},
            "max_epochs": 4,
            "learning_rate": 0.003,
            "freeze_model": False,
        },
    ),
    "FASTERRCNN": (exports.write_pascal_voc, {"n": 8, "size": 32}, {"arguments": SMALL_RCNN}),
    "MASKRCNN": (exports.write_rcnn_masks, {"n": 8, "size": 32}, {"arguments": SMALL_RCNN}),
    "YOLOV3": (
        exports.write_pascal_voc,
        {"n": 4, "size": 32},
        {"batch_size": 2, "max_epochs": 4, "learning_rate": 0.003, "freeze_model": False},
    ),
    "MMDETECTION": (exports.write_pascal_voc, {"n": 8, "size": 32}, {"arguments": {"model": "faster_rcnn"}}),
    "SUPERRESOLUTION": (exports.write_export_tiles, {"n": 4, "size": 32}, {}),
    "PIX2PIX": (exports.write_pix2pix, {"n": 4, "size": 32}, {"arguments": {"n_gen_filters": 8, "n_dscr_filters": 8}}),
    "PIX2PIXHD": (
        exports.write_pix2pix,
        {"n": 4, "size": 32},
        {
            "arguments": {
                "n_gen_filters": 8,
                "n_dscr_filters": 8,
                "vgg_loss": False,
                "n_blocks_global": 1,
                "n_blocks_local": 1,
            }
        },
    ),
    "CYCLEGAN": (
        exports.write_cyclegan,
        {"n": 4, "size": 32},
        {"arguments": {"n_gen_filters": 8, "n_dscr_filters": 8, "gen_blocks": 1}},
    ),
    # a low slot score threshold: one epoch then already keeps mask slots, so there are instances to compare
    # (with augmentation, as it trained before augment became off by default from random weights: without it
    # this tiny run keeps no slot above the threshold, and there is nothing to compare)
    "MAXDEEPLAB": (
        exports.write_panoptic,
        {"n": 8, "size": 32},
        {"learning_rate": 0.002, "arguments": {"score_thresh": 0.2, "augment": True}},
    ),
    "IMAGECAPTIONER": (
        exports.write_image_captioning,
        {"n": 8, "size": 32, "captions_per_chip": 1},
        {"arguments": {"decoder_params": {"embed_size": 16, "hidden_size": 16, "attention_size": 16}}},
    ),
    "SIAMMASK": (
        exports.write_object_tracking,
        {"n": 4, "size": 32, "frames": 3},
        {"arguments": {"exemplar_size": 24, "instance_size": 48}},
    ),
    # DETR's scores start at ~0.01: a few epochs on 16 chips lift some over its 0.05 floor
    "DETREG": (
        exports.write_pascal_voc,
        {"n": 16, "size": 32},
        {
            "arguments": {
                "hidden_dim": 64,
                "enc_layers": 1,
                "dec_layers": 2,
                "dim_feedforward": 128,
                "num_queries": 10,
            },
            "max_epochs": 4,
            "learning_rate": 0.002,
            "freeze_model": False,
        },
    ),
    # "MODEL_TYPE/model": an MMDETECTION / MMSEGMENTATION implementation of our own
    "MMDETECTION/fcos": (
        exports.write_pascal_voc,
        {"n": 8, "size": 32},
        {"max_epochs": 4, "learning_rate": 0.003, "freeze_model": False},
    ),
    "MMDETECTION/cascade_rcnn": (exports.write_pascal_voc, {"n": 8, "size": 32}, {"arguments": SMALL_RCNN}),
    "MMSEGMENTATION/upernet": (exports.write_classified_tiles, {"n": 8, "size": 32}, {}),
    "MMSEGMENTATION/ocrnet": (exports.write_classified_tiles, {"n": 8, "size": 32}, {}),
}
NO_BACKBONE = {"PIX2PIX", "PIX2PIXHD", "CYCLEGAN", "YOLOV3", "DEEPSORT", "MAXDEEPLAB"}


@pytest.fixture(scope="session")
def trained(tmp_path_factory) -> Callable[[str], dict[str, Any]]:
    """trained(name) -> {"package": .dlpk path, "folder": export folder, "emd": dict}; once per session. `name`
    is a model type, or "MODEL_TYPE/model" for one `model` argument of it."""
    cache: dict[str, dict[str, Any]] = {}
    # Under pytest-xdist every worker has this session fixture: the workers share one folder (beside their own
    # temp folders, removed with them at the end) and train each model once, the first to ask holding the lock.
    shared = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        shared = shared.parent
    shared = shared / "trained"
    shared.mkdir(exist_ok=True)

    def get(name: str) -> dict[str, Any]:
        if name not in cache:
            root = shared / name.lower().replace("/", "_")
            with open(f"{root}.lock", "w") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
                record = root / "trained.json"
                if not record.is_file():
                    shutil.rmtree(root, ignore_errors=True)  # what a failed attempt left
                    root.mkdir()
                    record.write_text(json.dumps(_train(name, root)))
                run = json.loads(record.read_text())
            cache[name] = {"package": Path(run["package"]), "folder": Path(run["folder"]), "emd": run["emd"]}
        return cache[name]

    return get


def _train(name: str, root: Path) -> dict[str, Any]:
    """Trains RECIPES[name] in `root`: {"package", "folder", "emd"} (paths as str)."""
    builder, data_kw, train_kw = RECIPES[name]
    model_type, _, model = name.partition("/")
    folder = builder(root, **data_kw)
    kw: dict[str, Any] = {"max_epochs": 1, "learning_rate": 0.001, "batch_size": 4, "validation_percent": 25.0}
    if model_type not in NO_BACKBONE:
        kw["backbone_model"] = "RESNET18"
    kw.update(train_kw)
    if model:
        kw["arguments"] = {**kw.get("arguments", {}), "model": model}
    spec = make_spec(root, [folder], model_type, **kw)
    code, reporter = train(spec)
    assert code == ExitCode.OK, [e for e in reporter.events if e["type"] in ("failed", "message")]
    result = result_of(reporter)
    chips = folder / "A" if model_type == "CYCLEGAN" else folder  # CycleGAN translates domain A
    return {"package": str(result["package"]), "folder": str(chips), "emd": emd_of(result)}


def chip_paths(folder: Path, count: int, sub: str = "images") -> list[Path]:
    return sorted((folder / sub).glob("*.tif"))[:count]


def write_mosaic(
    path: Path, chips: list[np.ndarray], cols: int, *, nodata: float | None = None, cell: float = 0.5, epsg: int = 32617
) -> Path:
    """A GeoTIFF of (H, W, C) chips laid out row by row, `cols` per row, origin (500000, 4000000) UTM 17N."""
    import rasterio
    from rasterio.transform import from_origin

    h, w, c = chips[0].shape
    rows = (len(chips) + cols - 1) // cols
    mosaic = np.zeros((c, rows * h, cols * w), dtype=chips[0].dtype)
    for i, chip in enumerate(chips):
        r, q = divmod(i, cols)
        mosaic[:, r * h : (r + 1) * h, q * w : (q + 1) * w] = chip.transpose(2, 0, 1)
    profile = {
        "driver": "GTiff",
        "width": cols * w,
        "height": rows * h,
        "count": c,
        "dtype": mosaic.dtype.name,
        "crs": f"EPSG:{epsg}",
        "transform": from_origin(500000.0, 4000000.0, cell, cell),
        "nodata": nodata,
    }
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(mosaic)
    return path


def read_chips(paths: list[Path]) -> list[np.ndarray]:
    from gpjobs.export import read_chip

    return [read_chip(p) for p in paths]


def predict_json(package: Path, chips: list[Path], **options: Any) -> list[dict]:
    """`gpjobs predict PACKAGE CHIP... --json` in-process (trackers: the chips are the frames; `box="x0,y0,x1,y1"`
    or the first frame's annotation gives the object)."""
    import argparse
    import contextlib
    import io
    import json

    from gpjobs.training.predict import run_predict

    args = argparse.Namespace(
        package=str(package),
        chips=[str(c) for c in chips],
        json=True,
        masks_dir=None,
        out_dir=None,
        batch_size=4,
        **options,
    )
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert run_predict(args) == 0
    return [json.loads(line) for line in out.getvalue().splitlines() if line.startswith("{")]
