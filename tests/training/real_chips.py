"""Small exports cut from the real palm-pascal-voc sample (../shared/samples), for learning tests on real imagery.

Never copies the sample into the repository: the exports are written under a test's tmp_path.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np

from tests.builders.exports import _voc_xml, write_image, write_metadata


def palm_boxes(label: Path) -> list[tuple[float, float, float, float]]:
    root = ET.parse(label).getroot()
    return [
        tuple(float(b.find(k).text) for k in ("xmin", "ymin", "xmax", "ymax"))  # type: ignore[misc]
        for b in root.iter("bndbox")
    ]


def palm_labeled_tiles(
    samples: Path, out: Path, *, per_class: int = 60, size: int = 32, window: int = 96, seed: int = 0
) -> Path:
    """Labeled_Tiles: `window`-px crops of the 448-px palm chips resized to `size`, centred on a palm (class 1
    "Palm") or on ground at least a window away from every palm centre (class 2 "Ground")."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    source = samples / "palm-pascal-voc"
    folder = out / "palm_labeled"
    (folder / "images").mkdir(parents=True)
    (folder / "labels").mkdir()
    crops: dict[int, list[np.ndarray]] = {1: [], 2: []}
    for label in sorted((source / "labels").glob("*.xml")):
        if min(len(c) for c in crops.values()) >= per_class:
            break
        image = Image.open(source / "images" / f"{label.stem}.jpg").convert("RGB")
        centres = [((x0 + x1) / 2, (y0 + y1) / 2) for x0, y0, x1, y1 in palm_boxes(label)]
        half = window / 2
        picks = [(1, c) for c in centres]
        for _ in range(20):  # ground: random centres far from every palm
            c = tuple(rng.uniform(half, image.width - half, 2))
            if all(np.hypot(c[0] - p[0], c[1] - p[1]) > window for p in centres):
                picks.append((2, c))
                break
        for value, (cx, cy) in picks:
            if len(crops[value]) >= per_class:
                continue
            cx, cy = min(max(cx, half), image.width - half), min(max(cy, half), image.height - half)
            box = (int(cx - half), int(cy - half), int(cx - half) + window, int(cy - half) + window)
            crops[value].append(np.asarray(image.crop(box).resize((size, size), Image.BILINEAR)))
    rows, images = [], []
    order = [(v, a) for pair in zip(crops[1], crops[2]) for v, a in zip((1, 2), pair)]
    for i, (value, array) in enumerate(order):
        stem = f"{i:09d}"
        write_image(folder / f"images/{stem}.tif", array)
        (folder / f"labels/{stem}.xml").write_text(_voc_xml(stem, ".tif", size, 3, [(value, (0, 0, size, size))]))
        rows.append([f"images/{stem}.tif", f"labels/{stem}.xml"])
        images.append(array)
    write_metadata(
        folder,
        "Labeled_Tiles",
        classes=[(1, "Palm"), (2, "Ground")],
        size=size,
        bands=3,
        rows=rows,
        images=images,
        per_class=[len(order) // 2, len(order) // 2],
    )
    return folder
