"""Classify Objects Using Deep Learning with a gpjobs IMAGECAPTIONER package: a caption per object chip, in the
`Caption` field (as arcgis.learn's ArcGISImageCaptioner writes it), with `Score`, the caption's mean
log-probability per word.

A Python raster function: initialize, getParameterInfo, getConfiguration, getFields, getGeometryType, then
vectorize per batch of object chips (`rasters_pixels`). The package's TorchScript network holds the encoder
(`forward`), the decoder's first state (`start`) and one decoder step (`step`); the beam search runs here in plain
torch, the same search the trained model's forward does (gpjobs' models/captioning_net.py), over the words of
the .emd's `Vocabulary`. Imports only the standard library, numpy and torch.
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
POLYGON = 4
UNKNOWN = "xxunk"


def detokenize(words: list) -> str:
    """Words joined by spaces, punctuation attached to the word before it."""
    text = ""
    for w in words:
        text += w if (text and not w[0].isalnum()) else (" " if text else "") + w
    return text


def beam_search(
    network, x: torch.Tensor, beam_width: int, max_len: int, bos: int, eos: int, vocab_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(word ids (B, max_len), mean log-probability per word (B,)) of the best beam per image.

    Always max_len + 1 steps; only beam 0 is alive at the start (so the first step picks k different words);
    a beam that emitted the end token repeats it at no cost; beams are ranked by log-probability per word.
    """
    feats = network(x)
    b, p, d = feats.shape
    k, v = beam_width, vocab_size
    feats = feats[:, None].expand(b, k, p, d).reshape(b * k, p, d)
    h, c, projected = network.start(feats)
    device = x.device
    words = torch.full((b * k,), bos, dtype=torch.long, device=device)
    total = torch.full((b, k), -1e9, device=device)
    total[:, 0] = 0.0
    lengths = torch.zeros(b, k, device=device)
    done = torch.zeros(b, k, dtype=torch.bool, device=device)
    tokens = torch.zeros(b, k, 0, dtype=torch.long, device=device)
    stay = torch.full((v,), -1e9, device=device)
    stay[eos] = 0.0
    for _ in range(max_len + 1):
        logits, h, c = network.step(words, h, c, feats, projected)
        logp = torch.log_softmax(logits.float(), dim=1).view(b, k, v)
        logp = torch.where(done[:, :, None], stay.expand(b, k, v), logp)
        best, index = (total[:, :, None] + logp).view(b, k * v).topk(k, dim=1)
        beam, word = index // v, index % v
        rows = (beam + torch.arange(b, device=device)[:, None] * k).view(-1)
        h, c = h[rows], c[rows]
        tokens = torch.cat([tokens.gather(1, beam[:, :, None].expand(b, k, tokens.shape[2])), word[:, :, None]], 2)
        was_done = done.gather(1, beam)
        lengths = lengths.gather(1, beam) + (~was_done).float()
        done = was_done | (word == eos)
        total, words = best, word.view(-1)
    score = total / lengths.clamp_min(1.0)
    pick = score.argmax(1)
    chosen = tokens[torch.arange(b, device=device), pick, :max_len]
    return chosen, score.gather(1, pick[:, None])[:, 0]


class GpjobsImageCaptioner(TiledPRF):
    """One chip per object, centred on it, at the model's chip size (CropSizeFixed)."""

    raster_names = ()
    default_batch_size: int  # TiledPRF's (typed here: mypy sees the run-time-loaded base as Any)

    def initialize(self, **kwargs) -> None:
        super().initialize(**kwargs)
        if "model" not in kwargs:
            return
        if self.spec.get("output") != "captions":
            raise core.InferenceError(
                f"{os.path.basename(__file__)} runs image captioning packages; this one's "
                f"network gives {self.spec.get('output')!r}: use the .emd's "
                f"InferenceFunction ({self.emd.get('InferenceFunction')})"
            )
        self.vocabulary = [str(w) for w in self.emd.get("Vocabulary") or []]
        if len(self.vocabulary) < 5:
            raise core.InferenceError(
                "the .emd has no Vocabulary list (the caption words); repackage the model with a current gpjobs"
            )
        self.bos, self.eos, self.pad = int(self.spec["bos"]), int(self.spec["eos"]), int(self.spec["pad"])

    def getParameterInfo(self) -> list:
        rasters = {
            "name": "rasters",
            "dataType": "rasters",
            "value": None,
            "required": True,
            "displayName": "Rasters",
            "description": "The overlapping rasters of the objects to caption",
        }
        spec = getattr(self, "spec", {})
        return (
            [rasters]
            + core.raster_parameters(())[0:2]
            + [
                core.parameter(
                    "batch_size", self.default_batch_size, "Batch Size", "Object chips the model runs at once"
                ),
                core.parameter(
                    "beam_width",
                    int(spec.get("beam_width", 3)),
                    "Beam Width",
                    "Captions kept at every step of the search",
                ),
                core.parameter(
                    "max_len", int(spec.get("max_len", 20)), "Maximum Caption Length", "Words a caption has at most"
                ),
            ]
        )

    def getConfiguration(self, **scalars) -> dict:
        self.batch_size = max(1, int(float(scalars.get("batch_size", self.default_batch_size))))
        self.beam_width = int(float(scalars.get("beam_width", self.spec.get("beam_width", 3))))
        self.max_len = int(float(scalars.get("max_len", self.spec.get("max_len", 20))))
        if not 1 <= self.beam_width <= len(self.vocabulary):
            raise core.InferenceError(
                f"beam_width {self.beam_width}: use 1 to {len(self.vocabulary)} (the vocabulary's size)"
            )
        if self.max_len < 1:
            raise core.InferenceError(f"max_len {self.max_len}: a caption needs at least 1 word")
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
                    {"name": "Caption", "type": "esriFieldTypeString", "alias": "Caption"},
                    {"name": "Score", "type": "esriFieldTypeDouble", "alias": "Score"},
                    {"name": "Shape", "type": "esriFieldTypeGeometry", "alias": "Shape"},
                ]
            }
        )

    def getGeometryType(self) -> int:
        return POLYGON

    def words(self, ids: list) -> list:
        """Tokens of ids up to the first end token, without the begin token and padding."""
        out = []
        for i in ids:
            if i == self.eos:
                break
            if i not in (self.pad, self.bos):
                out.append(self.vocabulary[i] if 0 <= i < len(self.vocabulary) else UNKNOWN)
        return out

    def caption(self, chips: np.ndarray) -> list:
        """(N, C, H, W) raw chips -> [(caption, mean log-probability per word), ...]."""
        x = self.normalizer(chips, self.device)
        out = []
        with torch.no_grad():
            for start in range(0, x.shape[0], self.batch_size):
                tokens, scores = beam_search(
                    self.network,
                    x[start : start + self.batch_size],
                    self.beam_width,
                    self.max_len,
                    self.bos,
                    self.eos,
                    len(self.vocabulary),
                )
                out += [(detokenize(self.words(row)), float(s)) for row, s in zip(tokens.tolist(), scores.tolist())]
        return out

    def vectorize(self, **pixelBlocks) -> dict:
        chips = [np.asarray(p) for p in pixelBlocks["rasters_pixels"]]
        masks = pixelBlocks.get("rasters_mask") or [None] * len(chips)
        for chip in chips:
            self.normalizer.check(chip, "object chip")
        chips = [core.mask_invalid(c, m)[0] for c, m in zip(chips, masks)]
        features: list[dict] = []
        for chip, (text, score) in zip(chips, self.caption(np.stack(chips))):
            height, width = chip.shape[-2:]
            ring = [[0, 0], [width, 0], [width, height], [0, height], [0, 0]]
            features.append(
                {
                    "attributes": {"OID": len(features) + 1, "Caption": text, "Score": round(score, 6)},
                    "geometry": {"rings": [ring]},
                }
            )
        return {"output_vectors": json.dumps({"features": features})}
