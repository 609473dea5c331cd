"""Classify Objects Using Deep Learning with a gpjobs package (FEATURE_CLASSIFIER, DEEPSORT): one label and its
confidence (0-100) per object chip; multi-label models give every class scoring over 0.5.

A Python raster function: initialize, getParameterInfo, getConfiguration, getFields, getGeometryType, then
vectorize per batch of object chips (`rasters_pixels`). Imports only the standard library, numpy and torch.
"""

from __future__ import annotations

import importlib.util
import json
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
POLYGON = 4


class GpjobsObjectClassifier(TiledPRF):
    """One chip per object, centred on it, at the model's chip size (CropSizeFixed)."""

    raster_names = ()
    default_batch_size: int  # TiledPRF's (typed here: mypy sees the run-time-loaded base as Any)

    def initialize(self, **kwargs) -> None:
        super().initialize(**kwargs)
        if "model" not in kwargs:
            return
        if self.spec.get("output") != "labels":
            raise core.InferenceError(
                f"{os.path.basename(__file__)} runs object classification packages; this "
                f"one's network gives {self.spec.get('output')!r}: use the .emd's "
                f"InferenceFunction ({self.emd.get('InferenceFunction')})"
            )
        self.values = [int(v) for v in self.spec["index_values"]]
        self.names = {int(c["Value"]): str(c["Name"]) for c in self.classes}
        self.multilabel = bool(self.spec.get("multilabel"))

    def getParameterInfo(self) -> list:
        rasters = {
            "name": "rasters",
            "dataType": "rasters",
            "value": None,
            "required": True,
            "displayName": "Rasters",
            "description": "The overlapping rasters of the objects to classify",
        }
        return (
            [rasters]
            + core.raster_parameters(())[0:2]
            + [
                core.parameter(
                    "batch_size", self.default_batch_size, "Batch Size", "Object chips the model runs at once"
                )
            ]
        )

    def getConfiguration(self, **scalars) -> dict:
        self.batch_size = max(1, int(float(scalars.get("batch_size", self.default_batch_size))))
        height = int(self.emd.get("ImageHeight") or 224)
        width = int(self.emd.get("ImageWidth") or height)
        return {
            "extractBands": tuple(self.emd.get("ExtractBands") or (0, 1, 2)),
            "tx": width,
            "ty": height,
            "batch_size": self.batch_size,
            "CropSizeFixed": int(self.emd.get("CropSizeFixed", 1)),
            "BlackenAroundFeature": int(self.emd.get("BlackenAroundFeature", 0)),
            "inheritProperties": 2 | 4 | 8,
            "inputMask": True,
        }

    def getFields(self) -> str:
        return json.dumps(
            {
                "fields": [
                    {"name": "OID", "type": "esriFieldTypeOID", "alias": "OID"},
                    {"name": "Label", "type": "esriFieldTypeString", "alias": "Label"},
                    {"name": "Confidence", "type": "esriFieldTypeDouble", "alias": "Confidence"},
                    {"name": "ClassValue", "type": "esriFieldTypeString", "alias": "Class Value"},
                    {"name": "Shape", "type": "esriFieldTypeGeometry", "alias": "Shape"},
                ]
            }
        )

    def getGeometryType(self) -> int:
        return POLYGON

    def classify(self, chips: np.ndarray) -> list:
        """(N, C, H, W) raw chips -> per chip [(class value, probability), ...] best first."""
        logits = core.run_network(self.network, self.normalizer(chips, self.device), self.batch_size).float()
        out = []
        if self.multilabel:
            for probs in logits.sigmoid().cpu():
                present = [(self.values[i], float(p)) for i, p in enumerate(probs.tolist()) if p > 0.5]
                out.append(sorted(present, key=lambda vp: -vp[1]))
            return out
        for probs in logits.softmax(1).cpu():
            best = int(probs.argmax())
            out.append([(self.values[best], float(probs[best]))])
        return out

    def vectorize(self, **pixelBlocks) -> dict:
        chips = [np.asarray(p) for p in pixelBlocks["rasters_pixels"]]
        masks = pixelBlocks.get("rasters_mask") or [None] * len(chips)
        for chip in chips:
            self.normalizer.check(chip, "object chip")
        chips = [core.mask_invalid(c, m)[0] for c, m in zip(chips, masks)]
        features: list[dict] = []
        for chip, found in zip(chips, self.classify(np.stack(chips))):
            height, width = chip.shape[-2:]
            ring = [[0, 0], [width, 0], [width, height], [0, height], [0, 0]]
            features.append(
                {
                    "attributes": {
                        "OID": len(features) + 1,
                        "Label": ",".join(self.names.get(v, str(v)) for v, _ in found),
                        "Confidence": round(100.0 * found[0][1], 4) if found else 0.0,
                        "ClassValue": ",".join(str(v) for v, _ in found),
                    },
                    "geometry": {"rings": [ring]},
                }
            )
        return {"output_vectors": json.dumps({"features": features})}
