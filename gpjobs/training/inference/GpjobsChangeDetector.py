"""Detect Change Using Deep Learning with a gpjobs package (CHANGEDETECTOR): a before and an after raster in,
one band of change class values out (0 where nothing changed).

A Python raster function: initialize, getParameterInfo, getConfiguration, updateRasterInfo, then updatePixels
per block with `raster_pixels` (before) and `raster2_pixels` (after). Imports only the standard library, numpy
and torch.
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


class GpjobsChangeDetector(TiledPRF):
    """Before and after tiles stacked on the band axis -> [unchanged, changed] scores -> class values."""

    raster_names = ("raster", "raster2")

    def initialize(self, **kwargs) -> None:
        super().initialize(**kwargs)
        if "model" not in kwargs:
            return
        if self.spec.get("output") != "change":
            raise core.InferenceError(
                f"{os.path.basename(__file__)} runs change detection packages; this "
                f"one's network gives {self.spec.get('output')!r}: use the .emd's "
                f"InferenceFunction ({self.emd.get('InferenceFunction')})"
            )
        self.values = [int(v) for v in self.spec["index_values"]]

    def updateRasterInfo(self, **kwargs) -> dict:
        info = kwargs["output_info"]
        changed = [c for c in self.classes if int(c["Value"]) == self.values[-1]][:1]
        rows = [
            {
                "attributes": {
                    "OID": 1,
                    "Value": int(c["Value"]),
                    "ClassName": str(c["Name"]),
                    "Red": int(c["Color"][0]),
                    "Green": int(c["Color"][1]),
                    "Blue": int(c["Color"][2]),
                }
            }
            for c in changed
        ]
        info["bandCount"] = 1
        info["pixelType"] = "u1" if max(self.values) <= 255 else "i4"
        info["noData"] = np.array([0])
        info["rasterAttributeTable"] = json.dumps({"features": rows})
        return kwargs

    def updatePixels(self, tlc, shape, props, **pixelBlocks) -> dict:
        before = np.asarray(pixelBlocks["raster_pixels"])
        after = np.asarray(pixelBlocks["raster2_pixels"])
        self.normalizer.check(before, "before raster")
        self.normalizer.check(after, "after raster")
        before, _ = core.mask_invalid(before, pixelBlocks.get("raster_mask"))
        after, _ = core.mask_invalid(after, pixelBlocks.get("raster2_mask"))
        x = torch.cat(
            [self.normalizer(self.tiles_of(before), self.device), self.normalizer(self.tiles_of(after), self.device)], 1
        )
        index = core.run_network(self.network, x, self.batch_size).argmax(1).cpu()
        tiles = torch.tensor(self.values, dtype=torch.int64)[index].numpy()[:, None]
        out = core.join_tiles(tiles, self.padding, self.rows, self.cols)
        pixelBlocks["output_pixels"] = out.astype(props.get("pixelType") or "u1", copy=False)
        return pixelBlocks
