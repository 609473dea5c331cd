"""Real data sets as Esri exports, built once and cached (deterministic: same bytes on every build).

Each data set is a training export (what a user hands to TrainDeepLearningModel) plus held-out chips that
neither side trains or early-stops on. Sources are real imagery and labels that packages ship or that
../shared/samples holds; nothing here is synthetic:

- `buildings` (Classified_Tiles, segmentation): the SpaceNet (Atlanta) panchromatic GeoTIFF that the
  `fair-solaris` 0.4.2 sdist ships (solaris/data/sample_geotiff.tif) and the footprint mask of its 43 building
  polygons (sample_fp_mask_from_geojson.tif, rasterised from geotiff_labels.geojson; the sdist's
  sample_fp_mask.tif belongs to another scene and does not line up), cut into 64 px chips: 1 band, uint16,
  class 1 "building" (4 % of the pixels) on background 0.
- `roads` (Classified_Tiles, segmentation): the SpaceNet (Las Vegas) 11-bit panchromatic road GeoTIFF and its
  road mask from the same sdist (road_mask_input.tif, sample_road_raster_mask.tif), 64 px chips, class 1 "road".
- `tiles` (Labeled_Tiles, classification): overhead chips of the two SpaceNet scenes above, 32 px, 1 band,
  uint16, three classes: "road" (Las Vegas chips with >= 3 % road pixels), "building" (Atlanta chips with >= 10 %
  footprint pixels) and "background" (chips with no labelled pixel, half from each scene, so that the scene alone
  does not tell the class); 577 chips. Flips and 90-degree turns keep these labels, as for users' chips.
- `digits` (Labeled_Tiles, classification, a diagnostic: digits are not rotation-invariant): the 1,797
  handwritten digits (8x8, 17 grey levels) that the scikit-learn wheel ships (sklearn/datasets/data/digits.csv.gz),
  1,000 of them, bilinear-upsampled to 32 px
  RGB chips; classes 1..10 named "0".."9".
- `palms` (PASCAL_VOC_rectangles, detection): the real Esri palm export in ../shared/samples/palm-pascal-voc
  (150 chips of 448 px, 425 boxes), resampled to 160 px chips (palms ~19 px) to keep CPU runs short: at
  224 px a plain Faster R-CNN loop took 30 min for 75 steps on the shared 2-core machine.

Per data set the cache holds `train/` (the export), `heldout/` (the same format, for looking at) and
`heldout.npz` / `train.npz` with the exact pixel arrays and labels of the chips (peers read these; the
chips are lossless LZW TIFFs, so they equal the files).
"""

from __future__ import annotations

import gzip
import io
import json
import os
import subprocess
import sys
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tests.builders.exports import write_image, write_label_raster, write_metadata

DATA_VERSION = 2  # bump when a builder changes: old caches are rebuilt
CACHE = Path(os.environ.get("GPJOBS_BENCH_CACHE", Path.home() / ".cache" / "gpjobs-bench")).expanduser()
SAMPLES = Path(os.environ.get("GPJOBS_SAMPLES_DIR", REPO.parent / "shared" / "samples"))
HELD_OUT = 0.2
SOLARIS = "fair-solaris==0.4.2"
SKLEARN = "scikit-learn==1.9.1"


@dataclass
class DataSet:
    name: str
    task: str  # segmentation | classification | detection
    folder: Path  # holds train/, heldout/, train.npz, heldout.npz, info.json
    classes: list[tuple[int, str]]
    chip: int
    bands: int

    @property
    def export(self) -> Path:
        return self.folder / "train"

    def arrays(self, split: str) -> dict[str, np.ndarray]:
        with np.load(self.folder / f"{split}.npz", allow_pickle=False) as z:
            return {k: z[k] for k in z.files}

    def heldout_chips(self) -> list[Path]:
        return [self.folder / "heldout" / p for p in json.loads((self.folder / "info.json").read_text())["heldout"]]


# --- sources -----------------------------------------------------------------------------------------


def _pip_download(requirement: str, *flags: str) -> Path:
    """One file of a PyPI release in CACHE/downloads (pip's ordinary client; kept once fetched)."""
    target = CACHE / "downloads"
    target.mkdir(parents=True, exist_ok=True)
    name = requirement.split("==")[0].replace("-", "_").lower()
    found = [p for p in target.iterdir() if p.name.replace("-", "_").lower().startswith(name)]
    if found:
        return found[0]
    env = dict(os.environ)
    if "solaris" in requirement:
        # solaris' setup.py refuses to write its metadata without a `gdal-config` on PATH; pip needs the
        # metadata even to download the sdist. A stand-in that prints a version is enough: nothing is built.
        fake = CACHE / "fake-gdal"
        fake.mkdir(exist_ok=True)
        (fake / "gdal-config").write_text("#!/bin/sh\necho 3.6.0\n")
        (fake / "gdal-config").chmod(0o755)
        env["PATH"] = f"{fake}{os.pathsep}{env.get('PATH', '')}"
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", *flags, requirement, "-d", str(target)],
        check=True,
        env=env,
        stdout=subprocess.DEVNULL,
    )
    return next(p for p in target.iterdir() if p.name.replace("-", "_").lower().startswith(name))


def _solaris_member(member: str) -> bytes:
    sdist = _pip_download(SOLARIS, "--no-binary", ":all:")
    with tarfile.open(sdist) as tar:
        return tar.extractfile(f"fair-solaris-0.4.2/solaris/data/{member}").read()


def _tiff(data: bytes) -> np.ndarray:
    import tifffile

    return tifffile.imread(io.BytesIO(data))


def _split(n: int, seed: int, strata: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(train, held-out) indices, HELD_OUT of each stratum held out, seeded."""
    rng = np.random.default_rng(seed)
    strata = np.zeros(n, np.int64) if strata is None else strata
    held = []
    for s in np.unique(strata):
        members = np.flatnonzero(strata == s)
        held += list(rng.permutation(members)[: round(len(members) * HELD_OUT)])
    held_mask = np.zeros(n, bool)
    held_mask[held] = True
    return np.flatnonzero(~held_mask), np.flatnonzero(held_mask)


def _subset(train: np.ndarray, n: int) -> np.ndarray:
    """The quick mode's training chips: a seeded sample (held-out chips stay the same)."""
    return np.sort(np.random.default_rng(3).permutation(train)[:n])


# --- writers -----------------------------------------------------------------------------------------


def _voc(stem: str, size: int, bands: int, objects: list[tuple[int, tuple[float, ...]]]) -> str:
    body = "".join(
        f"    <object>\n        <name>{v}</name>\n        <bndbox>\n            <xmin>{b[0]:.2f}</xmin>\n"
        f"            <ymin>{b[1]:.2f}</ymin>\n            <xmax>{b[2]:.2f}</xmax>\n"
        f"            <ymax>{b[3]:.2f}</ymax>\n        </bndbox>\n    </object>\n"
        for v, b in objects
    )
    return (
        f'<?xml version="1.0"?>\n<annotation>\n    <filename>{stem}.tif</filename>\n'
        f"    <size>\n        <width>{size}</width>\n        <height>{size}</height>\n"
        f"        <depth>{bands}</depth>\n    </size>\n{body}</annotation>\n"
    )


def _write_export(
    folder: Path, mode: str, classes: list[tuple[int, str]], images: np.ndarray, labels: list
) -> list[str]:
    """An export of `images` (N, H, W, C); labels: masks (segmentation), class values, or [(value, box)]."""
    size, bands = images.shape[1], images.shape[3]
    (folder / "images").mkdir(parents=True, exist_ok=True)
    (folder / "labels").mkdir(parents=True, exist_ok=True)
    rows, per_class, names = [], [0] * len(classes), []
    values = [v for v, _ in classes]
    for i, (image, label) in enumerate(zip(images, labels)):
        stem = f"{i:09d}"
        write_image(folder / f"images/{stem}.tif", image)
        names.append(f"images/{stem}.tif")
        if mode == "Classified_Tiles":
            write_label_raster(folder / f"labels/{stem}.tif", label)
            rows.append([f"images/{stem}.tif", f"labels/{stem}.tif"])
            for k, v in enumerate(values):
                per_class[k] += int((label == v).sum())
            continue
        objects = (
            [(int(label), (0.0, 0.0, float(size), float(size)))]
            if mode == "Labeled_Tiles"
            else [(int(v), tuple(float(c) for c in box)) for v, box in label]
        )
        (folder / f"labels/{stem}.xml").write_text(_voc(stem, size, bands, objects))
        rows.append([f"images/{stem}.tif", f"labels/{stem}.xml"])
        for v, _ in objects:
            per_class[values.index(v)] += 1
    write_metadata(
        folder,
        mode,
        classes=classes,
        size=size,
        bands=bands,
        rows=rows,
        images=list(images),
        newer_metadata=True,
        per_class=per_class,
        pixel_stats=mode == "Classified_Tiles",
    )
    return names


def _store(
    name: str,
    task: str,
    mode: str,
    classes,
    chip: int,
    images: np.ndarray,
    labels: list,
    train: np.ndarray,
    held: np.ndarray,
    folder: Path,
) -> None:
    tmp = folder.with_name(folder.name + ".tmp")
    if tmp.exists():
        import shutil

        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    heldout_names = []
    for split, idx in (("train", train), ("heldout", held)):
        part = [labels[i] for i in idx]
        names = _write_export(tmp / split, mode, classes, images[idx], part)
        if split == "heldout":
            heldout_names = names
        arrays: dict[str, np.ndarray] = {"images": images[idx]}
        if task == "segmentation":
            arrays["masks"] = np.stack(part)
        elif task == "classification":
            arrays["labels"] = np.asarray(part, np.int64)
        else:  # boxes flattened: box_image[j] is the chip of box j
            arrays["boxes"] = np.asarray([b for objs in part for _, b in objs], np.float32).reshape(-1, 4)
            arrays["box_labels"] = np.asarray([v for objs in part for v, _ in objs], np.int64)
            arrays["box_image"] = np.asarray([k for k, objs in enumerate(part) for _ in objs], np.int64)
        np.savez_compressed(tmp / f"{split}.npz", **arrays)
    (tmp / "info.json").write_text(
        json.dumps(
            {
                "name": name,
                "task": task,
                "format": mode,
                "classes": classes,
                "chip": chip,
                "bands": images.shape[3],
                "train_chips": len(train),
                "heldout_chips": len(held),
                "heldout": heldout_names,
                "version": DATA_VERSION,
            }
        )
    )
    tmp.rename(folder)


# --- data sets ---------------------------------------------------------------------------------------


def _buildings(quick: bool):
    image = _tiff(_solaris_member("sample_geotiff.tif"))  # (900, 900) uint16 panchromatic
    mask = (_tiff(_solaris_member("sample_fp_mask_from_geojson.tif")) > 0).astype(np.uint8)
    return _grid_chips(image, mask, 64, 80 if quick else None, [(1, "building")])


def _roads(quick: bool):
    image = _tiff(_solaris_member("road_mask_input.tif"))  # (1300, 1300) uint16, 11-bit panchromatic
    mask = (_tiff(_solaris_member("sample_road_raster_mask.tif")) > 0).astype(np.uint8)
    return _grid_chips(image, mask, 64, 160 if quick else None, [(1, "road")])


def _grid_chips(image: np.ndarray, mask: np.ndarray, chip: int, quick: int | None, classes):
    """Non-overlapping chips of a single-band scene and its 0/1 mask; 20 % of them held out."""
    images, masks = [], []
    for y in range(0, image.shape[0] - chip + 1, chip):
        for x in range(0, image.shape[1] - chip + 1, chip):
            images.append(image[y : y + chip, x : x + chip, None])
            masks.append(mask[y : y + chip, x : x + chip])
    train, held = _split(len(images), seed=17)
    if quick:
        train = _subset(train, quick)
    return "segmentation", "Classified_Tiles", classes, chip, np.stack(images), masks, train, held


def _tiles(quick: bool):
    scenes = [
        (
            "road",
            _tiff(_solaris_member("road_mask_input.tif")),
            _tiff(_solaris_member("sample_road_raster_mask.tif")) > 0,
            0.03,
        ),
        (
            "building",
            _tiff(_solaris_member("sample_geotiff.tif")),
            _tiff(_solaris_member("sample_fp_mask_from_geojson.tif")) > 0,
            0.10,
        ),
    ]
    chip, per_scene_background = 32, 150
    values = {"road": 1, "building": 2, "background": 3}
    images, labels = [], []
    rng = np.random.default_rng(11)
    for name, image, mask, least in scenes:
        empty = []
        for y in range(0, image.shape[0] - chip + 1, chip):
            for x in range(0, image.shape[1] - chip + 1, chip):
                share = mask[y : y + chip, x : x + chip].mean()
                if share >= least:
                    images.append(image[y : y + chip, x : x + chip, None].astype(np.uint16))
                    labels.append(values[name])
                elif share == 0:
                    empty.append(image[y : y + chip, x : x + chip, None].astype(np.uint16))
        for i in np.sort(rng.permutation(len(empty))[:per_scene_background]):
            images.append(empty[i])
            labels.append(values["background"])
    train, held = _split(len(images), seed=17, strata=np.asarray(labels))
    if quick:
        train = _subset(train, 240)
    classes = [(v, n) for n, v in values.items()]
    return "classification", "Labeled_Tiles", classes, chip, np.stack(images), labels, train, held


def _digits(quick: bool):
    from PIL import Image

    wheel = _pip_download(SKLEARN, "--only-binary", ":all:")
    with zipfile.ZipFile(wheel) as zf:
        table = np.loadtxt(
            io.StringIO(gzip.decompress(zf.read("sklearn/datasets/data/digits.csv.gz")).decode()), delimiter=","
        )
    table = table[:1000]
    chip = 32
    images = []
    for row in table[:, :64]:
        small = Image.fromarray((row.reshape(8, 8) * (255.0 / 16.0)).round().astype(np.uint8))
        big = np.asarray(small.resize((chip, chip), Image.BILINEAR))
        images.append(np.repeat(big[:, :, None], 3, axis=2))
    labels = [int(d) + 1 for d in table[:, 64]]
    train, held = _split(len(images), seed=17, strata=np.asarray(labels))
    if quick:
        train = _subset(train, 400)
    classes = [(d + 1, str(d)) for d in range(10)]
    return "classification", "Labeled_Tiles", classes, chip, np.stack(images), labels, train, held


def _palms(quick: bool):
    import re

    from PIL import Image

    source = SAMPLES / "palm-pascal-voc"
    if not source.is_dir():
        raise SystemExit(
            f"{source} is missing: the palm sample (../shared/samples) is needed for the detection rows; "
            "set GPJOBS_SAMPLES_DIR to the folder that holds palm-pascal-voc/"
        )
    chip = 160
    images, labels = [], []
    number = r"<{0}>([-\d.]+)</{0}>"
    for label_path in sorted((source / "labels").glob("*.xml")):
        image_path = source / "images" / f"{label_path.stem}.jpg"
        with Image.open(image_path) as img:
            scale = chip / img.width
            images.append(np.asarray(img.convert("RGB").resize((chip, chip), Image.BILINEAR)))
        objects = []
        for obj in re.findall(r"<object>(.*?)</object>", label_path.read_text(), re.DOTALL):
            box = [float(re.search(number.format(k), obj).group(1)) * scale for k in ("xmin", "ymin", "xmax", "ymax")]
            box = [min(max(c, 0.0), float(chip)) for c in box]
            if box[2] - box[0] >= 2 and box[3] - box[1] >= 2:  # slivers cut by the chip edge are no palms
                objects.append((1, tuple(round(c, 2) for c in box)))
        labels.append(objects)
    train, held = _split(len(images), seed=17)
    if quick:
        train = _subset(train, 40)
    return "detection", "PASCAL_VOC_rectangles", [(1, "Palm")], chip, np.stack(images), labels, train, held


BUILDERS = {"buildings": _buildings, "roads": _roads, "tiles": _tiles, "digits": _digits, "palms": _palms}


def dataset(name: str, quick: bool = False) -> DataSet:
    """The cached data set, built on first use."""
    folder = CACHE / f"v{DATA_VERSION}" / (f"{name}-quick" if quick else name)
    if not (folder / "info.json").exists():
        task, mode, classes, chip, images, labels, train, held = BUILDERS[name](quick)
        _store(name, task, mode, classes, chip, images, labels, train, held, folder)
    info = json.loads((folder / "info.json").read_text())
    return DataSet(name, info["task"], folder, [tuple(c) for c in info["classes"]], info["chip"], info["bands"])


if __name__ == "__main__":
    for key in sys.argv[1:] or list(BUILDERS):
        for q in (False, True):
            ds = dataset(key, q)
            print(
                ds.name,
                "quick" if q else "full",
                ds.folder,
                json.loads((ds.folder / "info.json").read_text())["train_chips"],
            )
