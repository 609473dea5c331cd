"""Chips decoded by libtiff (the training loader's fast path) equal tifffile's, and anything libtiff reads
differently (planar chips, other band counts, PNG) falls back to tifffile/Pillow."""

from __future__ import annotations

import numpy as np
import tifffile

from gpjobs.export.chips import libtiff_agrees, read_chip, read_label_raster
from tests.builders.exports import write_classified_tiles, write_image


def test_libtiff_decodes_export_chips_and_labels_like_tifffile(tmp_path):
    for dtype, bands in (("uint8", 3), ("uint16", 5), ("float32", 2)):
        folder = write_classified_tiles(tmp_path / dtype, n=3, bands=bands, dtype=dtype)
        for image in sorted((folder / "images").glob("*.tif")):
            label = folder / "labels" / image.name
            assert libtiff_agrees([(image, "/", bands), (label, "/", 1)])
            fast, slow = read_chip(image, [bands - 1, 0], libtiff_bands=bands), read_chip(image, [bands - 1, 0])
            assert fast.dtype == slow.dtype == np.dtype(dtype) and np.array_equal(fast, slow)
            assert fast.flags.c_contiguous
            assert np.array_equal(
                read_label_raster(label, native=True, libtiff=True), read_label_raster(label, native=True)
            )


def test_chips_libtiff_reads_otherwise_fall_back(tmp_path):
    pixels = np.random.default_rng(0).integers(0, 4000, (16, 16, 4), dtype=np.uint16)
    planar = tmp_path / "planar.tif"
    tifffile.imwrite(planar, np.moveaxis(pixels, -1, 0), photometric="minisblack", planarconfig="separate")
    png = tmp_path / "chip.png"
    write_image(png, pixels[:, :, :3].astype(np.uint8))
    # planar (C, H, W) from libtiff has the wrong band count: tifffile's (H, W, C) it is
    assert not libtiff_agrees([(planar, "/", 4)])
    assert np.array_equal(read_chip(planar, libtiff_bands=4), pixels)
    assert np.array_equal(read_chip(png, libtiff_bands=3), pixels[:, :, :3].astype(np.uint8))
    assert not libtiff_agrees([(png, "/", 3)])
    assert not libtiff_agrees([(tmp_path / "missing.tif", "/", 3)])
