"""Decoding image chips and label rasters (TIFF via tifffile+imagecodecs, PNG/JPEG via Pillow). No torch.

tifffile is used for every TIFF because Pillow cannot open multiband uint16 chips (environment.md §1);
Pillow handles PNG/JPEG, which Esri writes with at most three bands.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO, cast

import numpy as np

from gpjobs.paths import PathError, open_in_store

# What Export Training Data writes into images/ (export-format.md §1.7); anything else there
# (.aux.xml, .jgw, .tfw, .ovr, Thumbs.db) is a side file and is ignored.
IMAGE_EXTENSIONS = frozenset({".tif", ".tiff", ".png", ".jpg", ".jpeg"})
TIFF_EXTENSIONS = frozenset({".tif", ".tiff"})


class ChipReadError(ValueError):
    """A chip or label raster that cannot be decoded (truncated, corrupt, unsupported)."""


def _open(path: Path, root: str | Path) -> BinaryIO:
    """The file through the store check (PathError names it when it leads out of `root`)."""
    try:
        return open_in_store(path, root)
    except PathError:
        raise
    except OSError as exc:
        raise ChipReadError(f"{path.name}: cannot be read ({type(exc).__name__}: {exc})") from exc


def _read_libtiff(path: Path, root: str | Path, bands: int) -> np.ndarray | None:
    """A TIFF chip decoded by libtiff (imagecodecs.tiff_decode: 2-3x faster than tifffile's Python TIFF
    parsing and LZW for a 256 px chip), as (H, W, bands); None when it is not a TIFF, libtiff cannot
    decode it or the result is not `bands` interleaved bands (then read_chip uses tifffile)."""
    if path.suffix.lower() not in TIFF_EXTENSIONS:
        return None
    with _open(path, root) as fh:
        data = fh.read()
    try:
        import imagecodecs

        array = imagecodecs.tiff_decode(data, index=0)
    except Exception:  # noqa: BLE001 - any libtiff failure: tifffile decides (and names the problem)
        return None
    if array.ndim == 2:
        array = array[:, :, None]
    return array if array.ndim == 3 and array.shape[2] == bands else None


def read_chip(
    path: str | Path,
    extract_bands: Sequence[int] | None = None,
    *,
    root: str | Path = "/",
    libtiff_bands: int | None = None,
) -> np.ndarray:
    """The chip as (H, W, C) in its native dtype, optionally keeping only `extract_bands` (0-based).

    `root`: the store the chip belongs to (paths.open_in_store); "/" for a user's own local file.
    `libtiff_bands`: decode TIFFs with libtiff when the result has that many bands (for chips whose folder
    was checked to decode the same with both: `libtiff_agrees`), else with tifffile.
    """
    path = Path(path)
    array = _read_libtiff(path, root, libtiff_bands) if libtiff_bands is not None else None
    if array is None:
        array = _read_tifffile_or_pillow(path, root)
    if extract_bands is not None:
        bad = [b for b in extract_bands if not 0 <= b < array.shape[2]]
        if bad:
            raise ChipReadError(f"{path.name}: has {array.shape[2]} bands, extract_bands asks for {bad}")
        if list(extract_bands) != list(range(array.shape[2])):
            # np.take keeps (H, W, C) C-contiguous; fancy indexing would return band-major strides,
            # which made every later copy of the chip a slow strided one.
            array = np.take(array, list(extract_bands), axis=2)
    return array


def libtiff_agrees(paths: Sequence[tuple[Path, str | Path, int]]) -> bool:
    """Whether every (path, root, bands) decodes to the same array with libtiff as with tifffile: checked
    on the first chip (and label) of a folder, whose writer made all of them alike. False on any error."""
    try:
        for path, root, bands in paths:
            fast = _read_libtiff(Path(path), root, bands)
            slow = _read_tifffile_or_pillow(Path(path), root)
            if fast is None or fast.dtype != slow.dtype or not np.array_equal(fast, slow):
                return False
    except (ChipReadError, OSError, ValueError):
        return False
    return True


def _read_tifffile_or_pillow(path: Path, root: str | Path) -> np.ndarray:
    """The chip as (H, W, C) decoded by tifffile (TIFF) or Pillow (PNG/JPEG)."""
    with _open(path, root) as fh:
        try:
            if path.suffix.lower() in TIFF_EXTENSIONS:
                import tifffile

                with tifffile.TiffFile(fh) as tif:
                    page = cast(tifffile.TiffPage, tif.pages[0])  # the first page is never a TiffFrame
                    array = page.asarray()
                    if page.planarconfig == 2 and array.ndim == 3:  # separate planes: (C, H, W)
                        array = np.moveaxis(array, 0, -1)
            else:
                from PIL import Image

                with Image.open(fh) as img:
                    img.load()
                    # Palette PNG labels are read as palette indices (= class values), as arcgis.learn does.
                    array = np.asarray(img)
        except Exception as exc:  # tifffile / Pillow / imagecodecs raise many types for a bad file
            raise ChipReadError(f"{path.name}: cannot be decoded ({type(exc).__name__}: {exc})") from exc
    if array.ndim == 2:
        array = array[:, :, None]
    if array.ndim != 3:
        raise ChipReadError(f"{path.name}: unexpected pixel layout {array.shape}")
    return array


def read_label_raster(
    path: str | Path, native: bool = False, *, root: str | Path = "/", libtiff: bool = False
) -> np.ndarray:
    """A single-band label raster (class values or instance ids) as (H, W) int64 (`native`: file dtype).
    `libtiff`: as read_chip's `libtiff_bands=1`."""
    array = read_chip(path, root=root, libtiff_bands=1 if libtiff else None)
    if native and array.shape[2] == 1:
        return array[:, :, 0]
    if array.shape[2] != 1:
        # Multi-band instance masks: arcgis.learn offsets ids per band; class rasters are single-band.
        offset = np.cumsum([0] + [int(array[:, :, b].max()) for b in range(array.shape[2] - 1)])
        merged = np.zeros(array.shape[:2], np.int64)
        for b in range(array.shape[2]):
            band = array[:, :, b].astype(np.int64)
            merged = np.where(band > 0, band + offset[b], merged)
        return merged
    return array[:, :, 0].astype(np.int64)


def chip_header(path: str | Path, *, root: str | Path = "/") -> tuple[int, int, int, str]:
    """(height, width, bands, dtype) without decoding the pixels (cheap: the submit-time check uses it)."""
    path = Path(path)
    with _open(path, root) as fh:
        try:
            if path.suffix.lower() in TIFF_EXTENSIONS:
                import tifffile

                with tifffile.TiffFile(fh) as tif:
                    page = cast(tifffile.TiffPage, tif.pages[0])  # the first page is never a TiffFrame
                    shape = page.shape
                    if len(shape) == 2:
                        return shape[0], shape[1], 1, str(page.dtype)
                    if page.planarconfig == 2:
                        return shape[1], shape[2], shape[0], str(page.dtype)
                    return shape[0], shape[1], shape[2], str(page.dtype)
            from PIL import Image

            with Image.open(fh) as img:
                bands = len(img.getbands())
                dtype = {"I;16": "uint16", "I": "int32", "F": "float32"}.get(img.mode, "uint8")
                return img.height, img.width, bands, dtype
        except Exception as exc:
            raise ChipReadError(f"{path.name}: cannot be read ({type(exc).__name__}: {exc})") from exc
