"""Standalone inference for a gpjobs .dlpk (ships inside every package).

Needs only torch, numpy and tifffile or Pillow; not gpjobs. Usage, from the extracted package folder:

    python GpjobsInference.py MODEL.emd CHIP [CHIP ...]      # one JSON line per chip

It loads the TorchScript module named by the .emd key `TorchScriptFile`, applies the .emd's band
selection (ExtractBands), normalisation (ImageNet or NormalizationStats) and chip size, and prints
pixel-class counts (ImageClassification), the class (ObjectClassification), boxes (ObjectDetection,
for modules returning (boxes, scores, labels)) or a translated chip's size and band means
(SuperResolution, Pix2Pix, Pix2PixHD, CycleGAN).
"""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def read_chip(path: Path) -> np.ndarray:
    """(H, W, C) native dtype."""
    if path.suffix.lower() in (".tif", ".tiff"):
        import tifffile

        array = tifffile.imread(str(path))
        if array.ndim == 3 and array.shape[0] < array.shape[-1] and array.shape[0] <= 16 < array.shape[-1]:
            array = np.moveaxis(array, 0, -1)
    else:
        from PIL import Image

        with Image.open(path) as img:
            array = np.asarray(img)
    return array[:, :, None] if array.ndim == 2 else array


class GpjobsModel:
    def __init__(self, emd_path: str | Path) -> None:
        self.emd_path = Path(emd_path)
        self.emd = json.loads(self.emd_path.read_text(encoding="utf-8"))
        script = self.emd.get("TorchScriptFile")
        if not script:
            raise SystemExit(f"{self.emd_path.name}: this package has no TorchScript module")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch.jit deprecation notice
            self.module = torch.jit.load(str(self.emd_path.parent / script), map_location="cpu").eval()
        self.bands = [int(b) for b in self.emd.get("ExtractBands") or [0, 1, 2]]
        self.size = (int(self.emd["ImageHeight"]), int(self.emd["ImageWidth"]))
        self.classes = self.emd.get("Classes") or []
        stats = self.emd.get("NormalizationStats")
        if self.emd.get("IsImageNetNormalization", True) or not stats:
            n = len(self.bands)
            self.lo, self.hi = np.zeros(n, np.float32), np.full(n, 255.0, np.float32)
            self.mean, self.std = np.asarray(IMAGENET_MEAN, np.float32), np.asarray(IMAGENET_STD, np.float32)
        else:
            self.lo = np.asarray(stats["band_min_values"], np.float32)
            self.hi = np.asarray(stats["band_max_values"], np.float32)
            self.mean = np.asarray(stats["scaled_mean_values"], np.float32)
            self.std = np.asarray(stats["scaled_std_values"], np.float32)

    def prepare(self, chip: np.ndarray) -> torch.Tensor:
        if chip.shape[2] != len(self.bands):  # all bands given: keep the model's (else already extracted)
            chip = chip[:, :, self.bands]
        x = ((chip.astype(np.float32) - self.lo) / (self.hi - self.lo) - self.mean) / self.std
        t = torch.from_numpy(np.ascontiguousarray(x)).permute(2, 0, 1)[None]
        if tuple(t.shape[-2:]) != self.size:
            t = F.interpolate(t, size=self.size, mode="bilinear", align_corners=False)
        return t

    @torch.no_grad()
    def predict(self, chip: np.ndarray) -> dict:
        out = self.module(self.prepare(chip))
        kind = self.emd.get("ModelType")
        names = [str(c["Name"]) for c in self.classes]
        if kind == "ImageClassification":
            index = out.argmax(1)[0]
            counts = torch.bincount(index.flatten(), minlength=len(names) + 1).tolist()
            labels = ["NoData"] + names
            return {"class_pixels": {labels[i]: n for i, n in enumerate(counts) if n}}
        if kind == "ObjectClassification":
            if self.emd.get("IsMultiLabel"):
                probs = out.sigmoid()[0]
                return {"classes": [names[i] for i, p in enumerate(probs.tolist()) if p > 0.5]}
            probs = out.softmax(1)[0]
            best = int(probs.argmax())
            return {"class_value": self.classes[best]["Value"], "class_name": names[best],
                    "score": round(float(probs[best]), 6)}
        if kind in ("SuperResolution", "Pix2Pix", "Pix2PixHD", "CycleGAN"):
            # SuperResolution returns normalised bands, the GANs tanh values (-1..1): both to band units
            y = out[0].numpy()
            x01 = y * self.std[:, None, None] + self.mean[:, None, None] if kind == "SuperResolution" else (y + 1) / 2
            native = self.lo[:, None, None] + np.clip(x01, 0, 1) * (self.hi - self.lo)[:, None, None]
            return {"translated": kind, "size": list(native.shape[1:]),
                    "band_mean": [round(float(v), 3) for v in native.reshape(native.shape[0], -1).mean(1)]}
        if isinstance(out, (tuple, list)) and len(out) == 3:
            boxes, scores, labels = (o[0] if o.ndim > 1 and o.shape[0] == 1 and o.ndim != 2 else o for o in out)
            return {"boxes": boxes.tolist(), "scores": scores.tolist(),
                    "labels": [names[int(i) - 1] if 0 < int(i) <= len(names) else int(i) for i in labels]}
        raise SystemExit(f"ModelType {kind} output is not understood by this script")


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    model = GpjobsModel(argv[0])
    for chip in argv[1:]:
        print(json.dumps({"chip": chip, **model.predict(read_chip(Path(chip)))}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
