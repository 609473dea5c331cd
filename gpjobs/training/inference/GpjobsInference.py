"""Standalone inference for a gpjobs .dlpk (ships inside every package).

Needs only torch, numpy and tifffile or Pillow; not gpjobs. Usage, from the extracted package folder:

    python GpjobsInference.py MODEL.emd CHIP [CHIP ...]      # one JSON line per chip
    python GpjobsInference.py MODEL.emd --box X0,Y0,X1,Y1 FRAME [FRAME ...]   # ObjectTracking

It loads the TorchScript module named by the .emd key `TorchScriptFile`, applies the .emd's band
selection (ExtractBands), normalisation (ImageNet or NormalizationStats) and chip size, and prints
pixel-class counts (ImageClassification), the class (ObjectClassification), boxes (ObjectDetection,
for modules returning (boxes, scores, labels)), a translated chip's size and band means
(SuperResolution, Pix2Pix, Pix2PixHD, CycleGAN), the caption (ImageCaptioner), pixel-class counts and
instances per class (PanopticSegmenter), or, for ObjectTracking, the box, score and mask size of the
object in every frame of a sequence whose first frame shows it in the --box.
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
        if kind == "ImageCaptioner":
            words, vocabulary = [], self.emd.get("Vocabulary") or []
            for i in out[0][0].tolist():
                if vocabulary[i] == "xxeos":
                    break
                if vocabulary[i] not in ("xxpad", "xxbos"):
                    words.append(vocabulary[i])
            text = ""
            for w in words:  # punctuation sticks to the word before it
                text += w if (text and not w[0].isalnum()) else (" " if text else "") + w
            return {"caption": text, "words": words, "score": round(float(out[1][0]), 6)}
        if kind == "PanopticSegmenter":
            classes, instances = out[0][0], out[1][0]
            labels = ["NoData"] + names
            counts = torch.bincount(classes.flatten(), minlength=len(labels)).tolist()
            things = {int(v) for v in (self.emd.get("Kwargs") or {}).get("instance_classes") or []}
            per_thing = {labels[i + 1]: len(torch.unique(instances[(classes == i + 1) & (instances > 0)]))
                         for i, c in enumerate(self.classes) if int(c["Value"]) in things}
            return {"class_pixels": {labels[i]: n for i, n in enumerate(counts) if n}, "instances": per_thing}
        if isinstance(out, (tuple, list)) and len(out) == 3:
            boxes, scores, labels = (o[0] if o.ndim > 1 and o.shape[0] == 1 and o.ndim != 2 else o for o in out)
            return {"boxes": boxes.tolist(), "scores": scores.tolist(),
                    "labels": [names[int(i) - 1] if 0 < int(i) <= len(names) else int(i) for i in labels]}
        raise SystemExit(f"ModelType {kind} output is not understood by this script")


    @torch.no_grad()
    def track(self, frames: list[np.ndarray], box: list[float]) -> list[dict]:
        """ObjectTracking: the module steps (first frame, first box, frame, previous box) -> (box, score, mask)."""
        height, width = frames[0].shape[:2]
        sx, sy = self.size[1] / width, self.size[0] / height
        first = self.prepare(frames[0])
        box0 = torch.tensor([box[0] * sx, box[1] * sy, box[2] * sx, box[3] * sy])
        current, seg_thr = box0, float((self.emd.get("ModelParameters") or {}).get("hp", {}).get("seg_thr", 0.35))
        x0, y0, x1, y1 = (round(float(v)) for v in box0)  # frame 0: the given box is the mask
        area = max(0, min(x1, self.size[1]) - max(x0, 0)) * max(0, min(y1, self.size[0]) - max(y0, 0))
        out = [{"box": [round(float(v), 2) for v in box], "score": 1.0, "mask_pixels": area}]
        for frame in frames[1:]:
            current, score, mask = self.module(first, box0, self.prepare(frame), current)
            x0, y0, x1, y1 = current.tolist()
            out.append({"box": [round(x0 / sx, 2), round(y0 / sy, 2), round(x1 / sx, 2), round(y1 / sy, 2)],
                        "score": round(float(score), 6), "mask_pixels": int((mask > seg_thr).sum())})
        return out


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    model = GpjobsModel(argv[0])
    if model.emd.get("ModelType") == "ObjectTracking":
        if len(argv) < 4 or argv[1] != "--box":
            print("ObjectTracking: GpjobsInference.py MODEL.emd --box X0,Y0,X1,Y1 FRAME [FRAME ...]", file=sys.stderr)
            return 2
        box = [float(v) for v in argv[2].split(",")]
        for chip, result in zip(argv[3:], model.track([read_chip(Path(c)) for c in argv[3:]], box)):
            print(json.dumps({"chip": chip, **result}))
        return 0
    for chip in argv[1:]:
        print(json.dumps({"chip": chip, **model.predict(read_chip(Path(chip)))}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
