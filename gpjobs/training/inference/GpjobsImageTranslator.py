"""Classify Pixels Using Deep Learning with a gpjobs image translation package (SUPERRESOLUTION, PIX2PIX,
PIX2PIXHD, CYCLEGAN): the translated image in the training data's band units; super-resolution writes it at a
cell size `downsample_factor` times finer than the input's.

A Python raster function: initialize, getParameterInfo, getConfiguration, updateRasterInfo, then updatePixels
per block. Imports only the standard library, numpy and torch.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import zlib
from typing import Any

import numpy as np


def _core():
    """gpjobs_prf_core.py beside this file, imported under a name unique to this package folder."""
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "gpjobs_prf_core.py")
    name = f"gpjobs_prf_core_{zlib.crc32(path.encode()):08x}"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


core = _core()
TiledPRF: Any = core.TiledPRF  # a name mypy accepts as a base class (the module is loaded at run time)


class GpjobsImageTranslator(TiledPRF):
    """Tiles of the input -> translated tiles (x upscale), padding cropped, stitched."""

    def initialize(self, **kwargs) -> None:
        super().initialize(**kwargs)
        if "model" not in kwargs:
            return
        if self.spec.get("output") != "image":
            raise core.InferenceError(
                f"{os.path.basename(__file__)} runs image translation packages; this "
                f"one's network gives {self.spec.get('output')!r}: use the .emd's "
                f"InferenceFunction ({self.emd.get('InferenceFunction')})"
            )
        self.upscale = max(1, int(self.spec.get("upscale", 1)))
        self.out_bands = int(self.spec.get("bands", self.normalizer.bands))
        # 8-bit ImageNet-normalised models give 0..255 images; others keep float band values
        self.pixel_type = (
            "u1" if self.emd.get("IsImageNetNormalization", True) and not self.emd.get("NormalizationStats") else "f4"
        )

    def getParameterInfo(self) -> list:
        params = super().getParameterInfo()
        tile = int(self.emd.get("ImageHeight") or 224) // max(1, int(self.spec.get("upscale", 1)))
        for p in params:
            if p["name"] == "padding":
                p["value"] = tile // 4
        return params

    def getConfiguration(self, **scalars) -> dict:
        chip = int(self.emd.get("ImageHeight") or 224)
        scalars = dict(scalars)
        scalars.setdefault("tile_size", chip // self.upscale)  # the network takes coarse tiles
        scalars["tile_size"] = int(float(scalars["tile_size"]))
        return super().getConfiguration(**scalars)

    def updateRasterInfo(self, **kwargs) -> dict:
        info = kwargs["output_info"]
        info["bandCount"] = self.out_bands
        info["pixelType"] = self.pixel_type
        cell = info.get("cellSize")
        if cell and self.upscale > 1:
            info["cellSize"] = (cell[0] / self.upscale, cell[1] / self.upscale)
        info["noData"] = None
        return kwargs

    def updatePixels(self, tlc, shape, props, **pixelBlocks) -> dict:
        pixels = np.asarray(pixelBlocks["raster_pixels"])
        self.normalizer.check(pixels)
        pixels, _ = core.mask_invalid(pixels, pixelBlocks.get("raster_mask"))
        images = (
            core.run_network(self.network, self.normalizer(self.tiles_of(pixels), self.device), self.batch_size)
            .float()
            .cpu()
            .numpy()
        )
        out = core.join_tiles(images, self.padding * self.upscale, self.rows, self.cols)
        if self.pixel_type == "u1":
            out = np.clip(np.rint(out), 0, 255)
        pixelBlocks["output_pixels"] = out.astype(props.get("pixelType") or self.pixel_type, copy=False)
        return pixelBlocks
