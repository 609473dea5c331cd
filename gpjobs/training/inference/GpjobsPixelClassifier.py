"""Classify Pixels Using Deep Learning with a gpjobs package (UNET, PSPNET, DEEPLAB, MMSEGMENTATION, the edge
detectors and the road extractors): one band of class values, with the classes' names and colours.

A Python raster function: ArcGIS (or `gpjobs infer`) calls initialize, getParameterInfo, getConfiguration,
updateRasterInfo, then updatePixels per block. Imports only the standard library, numpy and torch.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import zlib
from typing import Any

import numpy as np
import torch


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


class GpjobsPixelClassifier(TiledPRF):
    """Network scores per class index -> class values; index 0 is NoData (written as 0)."""

    def initialize(self, **kwargs) -> None:
        super().initialize(**kwargs)
        if "model" not in kwargs:
            return
        if self.spec.get("output") != "pixel_classes":
            raise core.InferenceError(
                f"{os.path.basename(__file__)} runs pixel classification packages; this "
                f"one's network gives {self.spec.get('output')!r}: use the .emd's "
                f"InferenceFunction ({self.emd.get('InferenceFunction')})"
            )
        self.values = [int(v) for v in self.spec["index_values"]]

    def extra_parameters(self) -> list:
        return [
            core.parameter(
                "predict_background",
                "True",
                "Predict Background",
                "If False, never predict the NoData/background class",
                "string",
                ["True", "False"],
            )
        ]

    def configure(self, scalars: dict) -> None:
        self.predict_background = core.truthy(scalars.get("predict_background", "True"))

    def updateRasterInfo(self, **kwargs) -> dict:
        info = kwargs["output_info"]
        classes = [c for c in self.classes if int(c["Value"]) in self.values]
        info["bandCount"] = 1
        info["pixelType"] = core.pixel_type(self.values)
        info["noData"] = np.array([0])
        info["rasterAttributeTable"] = json.dumps(core.class_table(classes))
        return kwargs

    def updatePixels(self, tlc, shape, props, **pixelBlocks) -> dict:
        pixels = np.asarray(pixelBlocks["raster_pixels"])
        self.normalizer.check(pixels)
        pixels, invalid = core.mask_invalid(pixels, pixelBlocks.get("raster_mask"))
        scores = core.run_network(self.network, self.normalizer(self.tiles_of(pixels), self.device), self.batch_size)
        if not self.predict_background and scores.shape[1] > 1:
            scores[:, 0] = -float("inf")
        index = scores.argmax(1).cpu()
        lut = torch.tensor(self.values, dtype=torch.int64)
        tiles = lut[index].numpy()[:, None]
        out = core.join_tiles(tiles, self.padding, self.rows, self.cols)
        if invalid is not None:
            p = self.padding
            inner = invalid[p : p + out.shape[1], p : p + out.shape[2]]
            out[:, : inner.shape[0], : inner.shape[1]][:, inner] = 0
        pixelBlocks["output_pixels"] = out.astype(props.get("pixelType") or core.pixel_type(self.values), copy=False)
        return pixelBlocks
