"""Tiny, learnable ImageCaptioning and ObjectTracking folders (the IMAGECAPTIONER and SIAMMASK data).

* `write_image_captioning`: a MultiLabeled_Tiles export with `"SingleLabelFieldFound": "Caption"` in its
  `.emd`; each chip shows one coloured square in one corner and its labels/<stem>.xml holds captions
  naming the colour and the corner ("a red square in the top left corner") as `<object><name>` texts.
* `write_object_tracking`: the YouTube-VOS layout SiamMask trains on: JPEGImages/<sequence>/<frame>.jpg,
  Annotations/<sequence>/<frame>.png (palette PNG of object ids) and meta.json with each object's
  category. A square of its own colour moves at a constant speed through every sequence; every other
  sequence has a second, smaller object.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

COLOURS = {"red": (220, 40, 40), "green": (40, 200, 60), "blue": (40, 70, 220)}
CORNERS = ("top left", "top right", "bottom left", "bottom right")


def write_image_captioning(
    root: Path | str,
    n: int = 16,
    size: int = 32,
    *,
    name: str = "image_captioning",
    seed: int = 0,
    captions_per_chip: int = 2,
) -> Path:
    """Chip i: colour i mod 3 in corner (i // 3) mod 4; captions vary only in their wording."""
    from tests.builders.exports import _Export, _voc_xml

    ex = _Export(
        root,
        name,
        n=n,
        size=size,
        bands=3,
        dtype="uint8",
        ext="tif",
        digits=9,
        start_index=0,
        seed=seed,
        compression="lzw",
        side_files=False,
    )
    (ex.folder / "labels").mkdir(exist_ok=True)
    colours = list(COLOURS)
    for i, stem in enumerate(ex.stems()):
        colour, corner = colours[i % len(colours)], CORNERS[(i // len(colours)) % len(CORNERS)]
        canvas = np.full((size, size, 3), 30.0)
        half = size // 2
        y0 = 2 if corner.startswith("top") else half + 2
        x0 = 2 if corner.endswith("left") else half + 2
        canvas[y0 : y0 + half - 4, x0 : x0 + half - 4] = COLOURS[colour]
        img = ex.image(f"images/{stem}{ex.ext}", canvas)
        texts = [f"a {colour} square in the {corner} corner.", f"the {corner} corner has a {colour} square."]
        objects = [(text, (0, 0, size, size)) for text in texts[:captions_per_chip]]
        (ex.folder / f"labels/{stem}.xml").write_text(_voc_xml(stem, ex.ext, size, 3, objects))
        ex.rows.append([img, f"labels/{stem}.xml"])
    return ex.meta("MultiLabeled_Tiles", (), extra_emd={"SingleLabelFieldFound": "Caption"})


def _palette_png(path: Path, ids: np.ndarray) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(ids.astype(np.uint8), mode="P")
    palette = [0, 0, 0, 236, 95, 103, 249, 145, 87] + [128] * (256 * 3 - 9)  # DAVIS-like colours
    image.putpalette(palette)
    image.save(path)


def write_object_tracking(
    root: Path | str,
    n: int = 8,
    size: int = 32,
    frames: int = 6,
    *,
    name: str = "object_tracking",
    seed: int = 0,
    annotate_every: int = 1,
    meta: bool = True,
) -> Path:
    """`n` sequences of `frames` frames; `annotate_every=k` annotates frames 0, k, 2k, ... only."""
    from PIL import Image

    folder = Path(root) / name
    rng = np.random.default_rng(seed)
    videos: dict = {}
    xx = np.mgrid[0:size, 0:size][1]
    for s in range(n):
        seq = f"seq{s:03d}"
        background = 60 + 40 * np.sin(xx / (3 + s % 3))[..., None] + rng.normal(0, 6, (size, size, 3))
        objects = [(1, "car", COLOURS[list(COLOURS)[s % 3]], max(4, size // 4))]
        if s % 2:
            objects.append((2, "boat", (235, 235, 60), max(3, size // 6)))
        tracks = []
        for _, _, _, side in objects:
            start = rng.uniform(0, size - side, 2)
            velocity = rng.uniform(-1.5, 1.5, 2) * size / 32
            tracks.append((start, velocity))
        videos[seq] = {"objects": {str(oid): {"category": cat, "frames": []} for oid, cat, _, _ in objects}}
        for f in range(frames):
            canvas = background.copy()
            ids = np.zeros((size, size), np.uint8)
            for (oid, _cat, colour, side), (start, velocity) in zip(objects, tracks):
                x0, y0 = np.clip(start + velocity * f, 0, size - side).round().astype(int)
                canvas[y0 : y0 + side, x0 : x0 + side] = colour
                ids[y0 : y0 + side, x0 : x0 + side] = oid
            stem = f"{5 * f:05d}"
            frame = folder / "JPEGImages" / seq / f"{stem}.jpg"
            frame.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.clip(canvas, 0, 255).astype(np.uint8)).save(frame, quality=95)
            if f % annotate_every == 0:
                _palette_png(folder / "Annotations" / seq / f"{stem}.png", ids)
                for oid, *_ in objects:
                    if (ids == oid).any():
                        videos[seq]["objects"][str(oid)]["frames"].append(stem)
    (folder / "Annotations").mkdir(parents=True, exist_ok=True)
    if meta:
        (folder / "meta.json").write_text(json.dumps({"videos": videos}, indent=1))
    return folder
