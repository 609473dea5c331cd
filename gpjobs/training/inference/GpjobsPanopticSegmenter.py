"""Panoptic segmentation with a gpjobs package (MAXDEEPLAB), for the two ArcGIS tools that run arcgis.learn's
panoptic models (as its ArcGISPanopticSegmenter does):

- *Classify Pixels Using Deep Learning* calls updateRasterInfo and updatePixels: one band of class values, "stuff"
  and "thing" classes alike (background is 0, NoData), with the classes' names and colours;
- *Detect Objects Using Deep Learning* calls getFields, getGeometryType and vectorize: every instance of a "thing"
  class (the .emd's Panoptic_Segmentation_Instance_Classes) as a polygon of exactly its pixels, with Class,
  Confidence (its mask slot's class probability, 0-100) and ClassValue.

`threshold` is the slot score below which a mask slot is dropped (the model's `score_thresh` by default); the
semantic head decides the class where no slot is kept. Imports only the standard library, numpy and torch.
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
POLYGON = 4  # ArcGIS geometry type


class GpjobsPanopticSegmenter(TiledPRF):
    """The traced network gives per tile a class index map, an instance map (slot + 1 on thing pixels) and each
    slot's class probability; this function turns them into class values or instance polygons."""

    def initialize(self, **kwargs) -> None:
        super().initialize(**kwargs)
        if "model" not in kwargs:
            return
        if self.spec.get("output") != "panoptic":
            raise core.InferenceError(
                f"{os.path.basename(__file__)} runs panoptic segmentation packages; this "
                f"one's network gives {self.spec.get('output')!r}: use the .emd's "
                f"InferenceFunction ({self.emd.get('InferenceFunction')})"
            )
        self.values = [int(v) for v in self.spec["index_values"]]
        self.names = {int(c["Value"]): str(c["Name"]) for c in self.classes}

    def extra_parameters(self) -> list:
        default = float(getattr(self, "spec", {}).get("score_thresh", 0.5))
        return [
            core.parameter(
                "threshold",
                default,
                "Confidence Score Threshold [0.0, 1.0]",
                "Mask slots whose class probability is lower are dropped",
            ),
            core.parameter(
                "exclude_pad_detections",
                "True",
                "Filter Outer Padding Detections",
                "Detect Objects: drop instances centred in a tile's padding (the neighbouring tile owns them)",
                "string",
                ["True", "False"],
            ),
        ]

    def configure(self, scalars: dict) -> None:
        self.threshold = float(scalars.get("threshold", self.spec.get("score_thresh", 0.5)))
        if not 0.0 <= self.threshold <= 1.0:
            raise core.InferenceError(f"threshold {self.threshold} is not a probability; use 0.0 to 1.0")
        self.exclude_pad = core.truthy(scalars.get("exclude_pad_detections", "True"))

    def segment(self, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(class index maps, instance maps, slot scores) of a block's tiles: (N, H, W), (N, H, W), (N, slots)."""
        x = self.normalizer(self.tiles_of(pixels), self.device)
        threshold = torch.tensor(self.threshold, dtype=torch.float32, device=self.device)
        parts = []
        with torch.no_grad():
            for start in range(0, x.shape[0], self.batch_size):
                parts.append([o.cpu() for o in self.network(x[start : start + self.batch_size], threshold)])
        index, instances, scores = (torch.cat([p[i] for p in parts]).numpy() for i in range(3))
        return index, instances, scores

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
        index, _, _ = self.segment(pixels)
        tiles = np.asarray(self.values, dtype=np.int64)[index][:, None]
        out = core.join_tiles(tiles, self.padding, self.rows, self.cols)
        if invalid is not None:
            p = self.padding
            inner = invalid[p : p + out.shape[1], p : p + out.shape[2]]
            out[:, : inner.shape[0], : inner.shape[1]][:, inner] = 0
        pixelBlocks["output_pixels"] = out.astype(props.get("pixelType") or core.pixel_type(self.values), copy=False)
        return pixelBlocks

    def getFields(self) -> str:
        return json.dumps(
            {
                "fields": [
                    {"name": "OID", "type": "esriFieldTypeOID", "alias": "OID"},
                    {"name": "Class", "type": "esriFieldTypeString", "alias": "Class"},
                    {"name": "Confidence", "type": "esriFieldTypeDouble", "alias": "Confidence"},
                    {"name": "ClassValue", "type": "esriFieldTypeInteger", "alias": "Class Value"},
                    {"name": "Shape", "type": "esriFieldTypeGeometry", "alias": "Shape"},
                ]
            }
        )

    def getGeometryType(self) -> int:
        return POLYGON

    def vectorize(self, **pixelBlocks) -> dict:
        pixels = np.asarray(pixelBlocks["raster_pixels"])
        self.normalizer.check(pixels)
        pixels, _ = core.mask_invalid(pixels, pixelBlocks.get("raster_mask"))
        index, instances, scores = self.segment(pixels)
        inner = self.tile - 2 * self.padding
        features: list[dict] = []
        for tile in range(index.shape[0]):
            row, col = divmod(tile, self.cols)
            dx, dy = col * inner - self.padding, row * inner - self.padding
            for slot in np.unique(instances[tile][instances[tile] > 0]).tolist():
                mask = instances[tile] == slot
                ys, xs = np.nonzero(mask)
                cx, cy = (xs.min() + xs.max() + 1) / 2, (ys.min() + ys.max() + 1) / 2
                if (
                    self.exclude_pad
                    and self.padding
                    and not (self.padding <= cx < self.padding + inner and self.padding <= cy < self.padding + inner)
                ):
                    continue
                value = self.values[int(index[tile, ys[0], xs[0]])]
                rings = [[[x + dx, y + dy] for x, y in ring] for ring in core.mask_outline(mask)]
                features.append(
                    {
                        "attributes": {
                            "OID": len(features) + 1,
                            "Class": self.names.get(value, str(value)),
                            "Confidence": round(100.0 * float(scores[tile, slot - 1]), 4),
                            "ClassValue": value,
                        },
                        "geometry": {"rings": rings},
                    }
                )
        return {"output_vectors": json.dumps({"features": features})}
