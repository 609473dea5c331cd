"""Training schedule variants of our engine vs a plain Adam 1e-3 loop, side by side on tiny real imagery.

The data is built from the real palm PASCAL VOC sample (../shared/samples/palm-pascal-voc, 150 aerial
448 px RGB chips, 425 palm boxes): chips 0..109 are the job's export (its own validation split included),
chips 110..149 are held out from both sides and only scored. Tasks:

  classification  Labeled_Tiles: 32 px crops of a palm (class "palm") or of ground without one ("ground");
  segmentation    Classified_Tiles: chips at 64 px, palm crowns (the boxes' ellipses) as class "palm";
  detection       PASCAL_VOC_rectangles: chips at 128 px with their boxes;
  demo-segmentation  `make demo-data`'s synthetic Classified_Tiles (48 chips of 64 px; 16 others scored).

Every run starts from the same random initialisation (seeded, single-threaded, random backbone: no
ImageNet weights), trains the same epochs and batch size, and is scored on the held-out chips with the
family's own `validate` (accuracy / miou / average_precision). A variant is a set of engine settings;
"bare" is the plain loop: Adam 1e-3, constant, everything trainable, last epoch kept.

    python bench/schedule.py --task classification --seeds 3 --epochs 2 --variants bare,esri,ours
    python bench/schedule.py --task segmentation --lr-rules    # the LR range test's choice per rule

`--lr-rules` runs the LR range test once per seed and prints what each rule would choose, then trains
with each choice.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
PALM = Path(os.environ.get("GPJOBS_SAMPLES_DIR", REPO.parent / "shared" / "samples")) / "palm-pascal-voc"
HELD_OUT_FROM = 110

MODEL = {
    "classification": ("FEATURE_CLASSIFIER", "accuracy"),
    "segmentation": ("UNET", "miou"),
    "detection": ("FASTERRCNN", "average_precision"),
    "demo-segmentation": ("UNET", "miou"),
}

# name -> engine settings (None = the job's defaults; "bare" is the plain loop). A variant on the command line
# may add settings: "full-1e-3+lr=3e-3+warmup=0.1" (lr, warmup, freeze, factor).
VARIANTS: dict[str, dict] = {
    "bare": {},
    # gpjobs before issue #17: frozen, backbone at lr/10, arcgis.learn's rule on a 100-point EMA-smoothed sweep
    "esri": {"freeze": True, "learning_rate": "arcgis", "backbone_lr_factor": 0.1},
    "esri-1e-3": {"freeze": False, "learning_rate": 1e-3, "backbone_lr_factor": 0.1},
    "full-1e-3": {"freeze": False, "learning_rate": 1e-3, "backbone_lr_factor": 1.0},
    "ours": {"freeze": False, "learning_rate": None, "backbone_lr_factor": 1.0},
}
SETTING_KEYS = {"lr": "learning_rate", "warmup": "warmup_share", "freeze": "freeze", "factor": "backbone_lr_factor"}


def variant_settings(spec: str) -> dict:
    name, *extra = spec.split("+")
    settings = dict(VARIANTS[name])
    for item in extra:
        key, value = item.split("=")
        settings[SETTING_KEYS[key]] = value == "true" if key == "freeze" else float(value)
    return settings


# --- data from the palm sample ---------------------------------------------------------------------


def palm_chips() -> list[tuple[np.ndarray, list[tuple[float, float, float, float]]]]:
    from PIL import Image

    chips = []
    for xml in sorted((PALM / "labels").glob("*.xml")):
        text = xml.read_text()
        boxes = [
            tuple(float(v) for v in m)
            for m in re.findall(
                r"<xmin>([\d.]+)</xmin>\s*<ymin>([\d.]+)</ymin>\s*<xmax>([\d.]+)</xmax>\s*<ymax>([\d.]+)</ymax>", text
            )
        ]
        image = np.asarray(Image.open(PALM / "images" / f"{xml.stem}.jpg").convert("RGB"))
        chips.append((image, boxes))
    return chips


def _resize(array: np.ndarray, size: int) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.fromarray(array).resize((size, size), Image.BILINEAR))


def build_exports(root: Path, task: str) -> tuple[Path, Path]:
    """(the job's export, the held-out export) for `task`, from the palm chips (demo-segmentation: `make
    demo-data`'s synthetic buildings and roads, 48 chips of 64 px, and 16 others held out)."""
    from tests.builders.exports import _voc_xml, write_classified_tiles, write_image, write_label_raster, write_metadata

    if task == "demo-segmentation":
        classes = ((1, "building"), (2, "road"))
        return (
            write_classified_tiles(root / "job", n=48, size=64, classes=classes, seed=0),
            write_classified_tiles(root / "held_out", n=16, size=64, classes=classes, seed=1),
        )

    chips = palm_chips()
    folders = []
    for name, part in (("job", chips[:HELD_OUT_FROM]), ("held_out", chips[HELD_OUT_FROM:])):
        folder = root / task / name
        rows, images = [], []
        rng = np.random.default_rng(0 if name == "job" else 1)
        if task == "classification":
            classes, size, count = ((1, "palm"), (2, "ground")), 32, 0
            for image, boxes in part:
                centres = [((x0 + x1) / 2, (y0 + y1) / 2) for x0, y0, x1, y1 in boxes]
                crops = [(1, c) for c in centres]
                for _ in range(20 * len(centres)):  # as many ground crops as palms, away from every crown
                    c = rng.uniform(48, 400, 2)
                    if all(np.hypot(c[0] - a, c[1] - b) > 64 for a, b in centres):
                        crops.append((2, tuple(c)))
                    if sum(v == 2 for v, _ in crops) >= len(centres):
                        break
                for value, (cx, cy) in crops:
                    x0, y0 = int(np.clip(cx - 48, 0, 352)), int(np.clip(cy - 48, 0, 352))
                    pixels = _resize(np.ascontiguousarray(image[y0 : y0 + 96, x0 : x0 + 96]), size)
                    stem = f"{count:09d}"
                    write_image(folder / f"images/{stem}.tif", pixels)
                    (folder / "labels").mkdir(exist_ok=True)
                    (folder / f"labels/{stem}.xml").write_text(
                        _voc_xml(stem, ".tif", size, 3, [(value, (0, 0, size, size))])
                    )
                    rows.append([f"images/{stem}.tif", f"labels/{stem}.xml"])
                    images.append(pixels)
                    count += 1
            mode, extra = "Labeled_Tiles", {}
        elif task == "segmentation":
            classes, size = ((1, "palm"),), 64
            yy, xx = np.mgrid[0:size, 0:size] + 0.5
            for i, (image, boxes) in enumerate(part):
                pixels, mask, k = _resize(image, size), np.zeros((size, size), np.uint8), size / 448
                for x0, y0, x1, y1 in boxes:
                    cx, cy, rx, ry = (x0 + x1) / 2 * k, (y0 + y1) / 2 * k, (x1 - x0) / 2 * k, (y1 - y0) / 2 * k
                    mask[((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 <= 1] = 1
                stem = f"{i:09d}"
                write_image(folder / f"images/{stem}.tif", pixels)
                write_label_raster(folder / f"labels/{stem}.tif", mask)
                rows.append([f"images/{stem}.tif", f"labels/{stem}.tif"])
                images.append(pixels)
            mode, extra = "Classified_Tiles", {"pixel_stats": True}
        else:
            classes, size = ((1, "palm"),), 128
            for i, (image, boxes) in enumerate(part):
                k = size / 448
                stem = f"{i:09d}"
                write_image(folder / f"images/{stem}.tif", _resize(image, size))
                (folder / "labels").mkdir(exist_ok=True)
                objects = [(1, tuple(v * k for v in b)) for b in boxes]
                (folder / f"labels/{stem}.xml").write_text(_voc_xml(stem, ".tif", size, 3, objects))
                rows.append([f"images/{stem}.tif", f"labels/{stem}.xml"])
                images.append(_resize(image, size))
            mode, extra = "PASCAL_VOC_rectangles", {}
        write_metadata(folder, mode, classes=classes, size=size, bands=3, rows=rows, images=images, **extra)
        folders.append(folder)
    return folders[0], folders[1]


# --- one run -----------------------------------------------------------------------------------------


class Job:
    """The job's data, a family and the held-out loader for one task."""

    def __init__(self, task: str, job_folder: Path, held_out: Path, batch: int) -> None:
        from gpjobs.catalog import lookup_model_type, parse_arguments
        from gpjobs.training.data import open_training_data
        from gpjobs.training.models import family_for

        self.task, self.batch = task, batch
        self.model_type, self.metric = MODEL[task]
        self.info = lookup_model_type(self.model_type)
        self.args = parse_arguments(self.info, {})
        self.data = open_training_data([job_folder], task=self.info.task, validation_percent=10.0, seed=42)
        scored = open_training_data([held_out], task=self.info.task, validation_percent=10.0, seed=42, augment=False)
        from gpjobs.training.data.datasets import ExportDataset

        self.held_out = ExportDataset(
            list(scored.train.records) + list(scored.valid.records), self.data.info, augment=False
        )
        self.family_type = family_for(self.model_type)

    def family_and_model(self, seed: int):
        import torch

        from gpjobs.training.weights import WeightsPolicy

        family = self.family_type(
            self.info, self.data.info, "RESNET18", self.args, WeightsPolicy(None, "random"), lambda level, text: None
        )
        family.attach_data(self.data)
        torch.manual_seed(seed)
        return family, family.build()

    def score(self, family, model) -> float:
        import torch

        from gpjobs.training.data.batching import FinishingLoader

        loader = FinishingLoader(self.held_out, batch_size=self.batch, shuffle=False, drop_last=False)
        model.eval()
        with torch.no_grad():
            _, metrics = family.validate(model, loader, torch.device("cpu"))
        return float(metrics[self.metric])


def run_bare(job: Job, seed: int, epochs: int) -> dict:
    import torch

    family, model = job.family_and_model(seed)
    train_loader, _ = job.data.loaders(job.batch)
    train_loader.generator.manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    start = time.perf_counter()
    for _ in range(epochs):
        model.train()
        for batch in train_loader:
            loss = family.training_loss(model, batch, torch.device("cpu"))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    return {"score": job.score(family, model), "seconds": time.perf_counter() - start}


def arcgis_rule(lrs: list[float], raw: list[float]) -> float:
    """gpjobs' rule before issue #17 (arcgis.learn's `_find_lr`) on fastai's EMA (0.98) smoothed losses: drop 5
    points at each end, take the midpoint of the longest strictly decreasing subsequence."""
    losses, avg = [], 0.0
    for i, value in enumerate(raw):
        avg = 0.98 * avg + 0.02 * value
        losses.append(avg / (1 - 0.98 ** (i + 1)))
    if len(lrs) > 15:
        lrs, losses = lrs[5:-5], losses[5:-5]
    n = len(losses)
    length, prev = [1] * n, [-1] * n
    for i in range(n):
        for j in range(i):
            if losses[j] > losses[i] and length[j] + 1 > length[i]:
                length[i], prev[i] = length[j] + 1, j
    end = max(range(n), key=lambda i: (length[i], -i))
    start = end
    while prev[start] != -1:
        start = prev[start]
    span = end - start
    return float(lrs[start + int(span / 3) + int(span / 6)])


def arcgis_sweep(job: Job, family, model, seed: int) -> float:
    """The learning rate the engine chose before issue #17: a 100-point sweep, the arcgis rule."""
    import torch

    from gpjobs.training.engine.runtime import seed_everything
    from gpjobs.training.engine.schedule import make_optimizer
    from gpjobs.training.lr_finder import lr_range_test

    def step(batch):
        loss = family.training_loss(model, batch, torch.device("cpu"))
        loss.backward()
        return loss

    seed_everything(seed)
    model.train()
    train_loader, _ = job.data.loaders(job.batch)
    curve = lr_range_test(
        model, lambda: make_optimizer(family, model, 1e-7, 1.0), step, lambda: train_loader, num_it=100
    )
    return arcgis_rule(curve["lrs"], curve["raw"])


def run_engine(job: Job, seed: int, epochs: int, settings: dict, reporter=None) -> dict:
    from gpjobs.training.engine import BackbonePolicy, FitConfig, fit
    from gpjobs.training.events import ListReporter

    family, model = job.family_and_model(seed)
    policy = BackbonePolicy(bool(settings.get("freeze")), float(settings.get("backbone_lr_factor", 0.1)))
    family.freeze(model, policy.frozen)
    rest = {k: v for k, v in settings.items() if k not in ("freeze", "backbone_lr_factor")}
    start = time.perf_counter()
    if rest.get("learning_rate") == "arcgis":
        rest["learning_rate"] = arcgis_sweep(job, family, model, seed)
    config = FitConfig(max_epochs=epochs, batch_size=job.batch, stop_training=False, seed=seed, backbone=policy, **rest)
    reporter = reporter or ListReporter()
    result = fit(family, model, job.data, config, reporter)
    return {
        "score": job.score(family, model),
        "seconds": time.perf_counter() - start,
        "lr": result.learning_rate,
        "lr_how": result.lr_how,
    }


def summary(values: list[float]) -> str:
    return f"{statistics.mean(values):.3f} [{min(values):.3f}..{max(values):.3f}]"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", choices=sorted(MODEL), default="classification")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--variants", default="bare,esri,ours")
    parser.add_argument("--json", help="also write every run as JSON lines here")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(1)
    if not PALM.is_dir():
        print(f"the palm sample is not at {PALM}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        job = Job(args.task, *build_exports(Path(tmp), args.task), batch=args.batch)
        print(
            f"{args.task}: {job.model_type}-RESNET18 (random init), {len(job.data.train)} training / "
            f"{len(job.data.valid)} validation chips, {len(job.held_out)} held-out chips scored, "
            f"{args.epochs} epochs, batch {args.batch}, seeds 0..{args.seeds - 1}; held-out {job.metric}"
        )
        for name in args.variants.split(","):
            runs = []
            for seed in range(args.seeds):
                run = (
                    run_bare(job, seed, args.epochs)
                    if name == "bare"
                    else run_engine(job, seed, args.epochs, variant_settings(name))
                )
                runs.append(run)
                if args.json:
                    with open(args.json, "a") as out:
                        out.write(
                            json.dumps({"task": args.task, "variant": name, "seed": seed, "epochs": args.epochs, **run})
                            + "\n"
                        )
            lrs = sorted({f"{r['lr']:.1e}" for r in runs if "lr" in r})
            print(
                f"  {name:<24} {job.metric} {summary([r['score'] for r in runs])}   "
                f"time {summary([r['seconds'] for r in runs])} s" + (f"   lr {', '.join(lrs)}" if lrs else ""),
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
