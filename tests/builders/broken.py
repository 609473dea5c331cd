"""Break a built export in the ways real ones break, for the validation-report tests.

Each function changes one file of an export folder written by `tests.builders.exports` and returns
the path it changed (the reports must name it). `stem=None` picks the first chip in sorted order.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg")


def _mode(folder: Path) -> str:
    return json.loads((folder / "esri_accumulated_stats.json").read_text())["MetaDataMode"]


def _chip(folder: Path, stem: str | None) -> Path:
    chips = sorted(p for p in (folder / "images").rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if stem is None:
        return chips[0]
    return next(p for p in chips if p.stem == stem)


def _label(folder: Path, stem: str | None) -> Path:
    stem = stem or _chip(folder, None).stem
    return next(p for p in sorted((folder / "labels").rglob("*")) if p.is_file() and p.stem == stem)


def truncate_chip(folder: Path | str, stem: str | None = None, keep: float = 0.5) -> Path:
    """Cut an image chip to `keep` of its bytes (an interrupted copy)."""
    path = _chip(Path(folder), stem)
    data = path.read_bytes()
    path.write_bytes(data[: max(8, int(len(data) * keep))])
    return path


def corrupt_chip(folder: Path | str, stem: str | None = None) -> Path:
    """Replace an image chip with bytes that are no image at all."""
    path = _chip(Path(folder), stem)
    path.write_bytes(b"this is not an image\n" * 4)
    return path


def empty_label_file(folder: Path | str, stem: str | None = None) -> Path:
    """Make a label file zero bytes long."""
    path = _label(Path(folder), stem)
    path.write_bytes(b"")
    return path


def remove_file(folder: Path | str, rel: str) -> Path:
    """Delete one file of the export (e.g. "esri_model_definition.emd" or "labels/000000000.xml")."""
    path = Path(folder) / rel
    path.unlink()
    return path


def mismatch_stem(folder: Path | str, stem: str | None = None, new_stem: str = "000999999") -> Path:
    """Rename a label so that its chip has no label and the label has no chip. Returns the new label path."""
    path = _label(Path(folder), stem)
    target = path.with_name(new_stem + path.suffix)
    path.rename(target)
    return target


def set_label_value(folder: Path | str, value: int = 99, stem: str | None = None) -> Path:
    """Put a class value that is not in the class list into one label file.

    Classified_Tiles / Panoptic: a 4x4 block of the label raster; PASCAL VOC / Labeled_Tiles: the first
    `<name>`; KITTI: the first column of the first line.
    """
    folder = Path(folder)
    mode = _mode(folder)
    path = _label(folder, stem)
    if mode in ("Classified_Tiles", "Panoptic_Segmentation"):
        import tifffile
        from PIL import Image

        if path.suffix.lower() in (".tif", ".tiff"):
            mask = tifffile.imread(path)
            mask[:4, :4] = value
            tifffile.imwrite(path, mask, compression="lzw")
        else:
            mask = np.array(Image.open(path))
            mask[:4, :4] = value
            Image.fromarray(mask).save(path)
    elif mode == "KITTI_rectangles":
        lines = path.read_text().splitlines()
        first = lines[0].split()
        first[0] = str(value)
        lines[0] = "  " + " ".join(first)
        path.write_text("\n".join(lines) + "\n")
    elif path.suffix == ".xml":
        text = path.read_text()
        start = text.index("<name>") + len("<name>")
        end = text.index("</name>", start)
        path.write_text(text[:start] + str(value) + text[end:])
    else:
        raise ValueError(f"set_label_value does not know how to change labels of {mode}")
    return path


def box_outside_chip(folder: Path | str, stem: str | None = None, xmax: float = 999.0) -> Path:
    """Push the first box's right edge outside the chip (PASCAL VOC / KITTI labels)."""
    folder = Path(folder)
    path = _label(folder, stem)
    if path.suffix == ".xml":
        text = path.read_text()
        start = text.index("<xmax>") + len("<xmax>")
        end = text.index("</xmax>", start)
        path.write_text(text[:start] + f"{xmax:.2f}" + text[end:])
    else:
        lines = path.read_text().splitlines()
        cols = lines[0].split()
        cols[6] = f"{xmax:.2f}"
        lines[0] = "  " + " ".join(cols)
        path.write_text("\n".join(lines) + "\n")
    return path
