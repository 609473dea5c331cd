"""What a trained model needs to know about its data, without the data: classes, bands, normalisation.

Torch-free: the package writer, `gpjobs predict` and the server read these from a `.emd`.
Normalisation follows arcgis.learn (export-format.md §2.6): ImageNet statistics for 8-bit 3-band
chips, per-band statistics (scaled to 0..1 by band min/max) for everything else.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
PALETTE = (
    (230, 25, 75),
    (60, 180, 75),
    (255, 225, 25),
    (0, 130, 200),
    (245, 130, 48),
    (145, 30, 180),
    (70, 240, 240),
    (240, 50, 230),
    (210, 245, 60),
    (250, 190, 212),
    (0, 128, 128),
    (220, 190, 255),
)

# Export format -> task of the samples it yields (catalog ModelTypeInfo.task names; "multilabel" extra).
FORMAT_TASKS = {
    "Classified_Tiles": "segmentation",
    "PASCAL_VOC_rectangles": "detection",
    "KITTI_rectangles": "detection",
    "RCNN_Masks": "instance",
    "Labeled_Tiles": "classification",
    "MultiLabeled_Tiles": "multilabel",
    "Imagenet": "classification",
    "Export_Tiles": "translation",
    "Pix2Pix": "translation",
    "CycleGAN": "translation",
    "ChangeDetection": "change",
    "Panoptic_Segmentation": "panoptic",
    "ImageCaptioning": "captioning",
    "ObjectTracking": "tracking",
}
# Formats whose class value 0 means "no class" (model index 0 = NoData/background).
BACKGROUND_FORMATS = frozenset({"Classified_Tiles", "RCNN_Masks", "Panoptic_Segmentation", "ChangeDetection"})
_EMD_MODEL_TYPE_FORMATS = {
    "ImageClassification": "Classified_Tiles",
    "ObjectDetection": "PASCAL_VOC_rectangles",
    "ObjectClassification": "Labeled_Tiles",
    "InstanceDetection": "RCNN_Masks",
}


@dataclass(frozen=True)
class ClassInfo:
    """One class as recorded in the export: its value in label files, its name, its colour (None = unset)."""

    value: int
    name: str
    color: list[int] | None = None

    def to_emd(self, index: int = 0) -> dict[str, Any]:
        color = list(self.color) if self.color else list(PALETTE[index % len(PALETTE)])
        return {"Value": self.value, "Name": self.name, "Color": color}


@dataclass
class Normalization:
    """x' = (x - band_min) / (band_max - band_min), then (x' - mean) / std, per model-input band."""

    kind: str  # "imagenet" | "band_stats"
    band_min: list[float]
    band_max: list[float]
    band_mean: list[float]
    band_std: list[float]
    mean: list[float]  # applied after scaling to 0..1
    std: list[float]

    @classmethod
    def imagenet(cls) -> Normalization:
        return cls(
            "imagenet",
            [0.0] * 3,
            [255.0] * 3,
            [m * 255 for m in IMAGENET_MEAN],
            [s * 255 for s in IMAGENET_STD],
            list(IMAGENET_MEAN),
            list(IMAGENET_STD),
        )

    @classmethod
    def from_band_stats(cls, stats: Sequence[dict[str, float]]) -> Normalization:
        """arcgis.learn's scaled statistics from per-band {min, max, mean, std} (§2.6)."""
        lo, hi, mean, std, smean, sstd = [], [], [], [], [], []
        for s in stats:
            b_lo, b_hi, b_mean, b_std = (float(s[k]) for k in ("min", "max", "mean", "std"))
            if b_hi <= b_lo:
                b_hi = b_lo + 1.0  # constant band: arcgis.learn does max += 1
            scaled_mean = (b_mean - b_lo) / (b_hi - b_lo)
            # arcgis.learn: scaled_std = std * scaled_mean / mean; fall back to std/(max-min) when mean is 0.
            scaled_std = b_std * scaled_mean / b_mean if b_mean else b_std / (b_hi - b_lo)
            if scaled_std <= 0:
                scaled_std += 0.01
            lo.append(b_lo)
            hi.append(b_hi)
            mean.append(b_mean)
            std.append(b_std)
            smean.append(scaled_mean)
            sstd.append(abs(scaled_std))
        return cls("band_stats", lo, hi, mean, std, smean, sstd)

    def affine(self) -> tuple[np.ndarray, np.ndarray]:
        """(scale, offset) as float32 (C, 1, 1): normalised = x * scale + offset (one multiply-add)."""
        lo = np.asarray(self.band_min, np.float64)
        span = np.asarray(self.band_max, np.float64) - lo
        mean, std = np.asarray(self.mean, np.float64), np.asarray(self.std, np.float64)
        scale = 1.0 / (span * std)
        offset = -(lo / span + mean) / std
        return scale.astype(np.float32)[:, None, None], offset.astype(np.float32)[:, None, None]

    def apply(self, array: np.ndarray) -> np.ndarray:
        """(H, W, C) native chip -> normalised float32 (H, W, C)."""
        scale, offset = self.affine()
        return array.astype(np.float32) * scale[:, 0, 0] + offset[:, 0, 0]

    def to_emd(self) -> dict[str, Any]:
        """IsImageNetNormalization and, for band statistics, arcgis.learn's eight NormalizationStats vectors."""
        if self.kind == "imagenet":
            return {"IsImageNetNormalization": True}
        return {
            "IsImageNetNormalization": False,
            "NormalizationStats": {
                "band_min_values": self.band_min,
                "band_max_values": self.band_max,
                "band_mean_values": self.band_mean,
                "band_std_values": self.band_std,
                "scaled_min_values": [0.0] * len(self.band_min),
                "scaled_max_values": [1.0] * len(self.band_min),
                "scaled_mean_values": self.mean,
                "scaled_std_values": self.std,
            },
        }

    @classmethod
    def from_emd(cls, emd: dict[str, Any]) -> Normalization:
        stats = emd.get("NormalizationStats")
        if isinstance(stats, dict) and stats.get("band_min_values"):
            return cls(
                "band_stats",
                *(
                    list(map(float, stats[k]))
                    for k in (
                        "band_min_values",
                        "band_max_values",
                        "band_mean_values",
                        "band_std_values",
                        "scaled_mean_values",
                        "scaled_std_values",
                    )
                ),
            )
        return cls.imagenet()


@dataclass
class DataInfo:
    """Everything a model needs to be rebuilt without the training data.

    `bands` is the number of bands the model sees (= len(extract_bands)); `source_bands` the chips' count.
    `classes[i]` is model class i (classification) or model index i + 1 (segmentation/detection).
    """

    format: str
    task: str
    classes: list[ClassInfo]
    bands: int
    chip_size: tuple[int, int]
    extract_bands: list[int]
    normalization: Normalization
    is_multispectral: bool
    source_bands: int = 0
    dtype: str = "uint8"
    cell_size: dict[str, Any] | None = field(default=None)

    @property
    def class_values(self) -> list[int]:
        return [c.value for c in self.classes]

    def to_emd(self) -> dict[str, Any]:
        """The data part of a trained model's .emd (arcgis.learn key names)."""
        emd: dict[str, Any] = {
            "MetaDataMode": self.format,
            "ExtractBands": list(self.extract_bands),
            "Classes": [c.to_emd(i) for i, c in enumerate(self.classes)],
            "ImageHeight": int(self.chip_size[0]),
            "ImageWidth": int(self.chip_size[1]),
            "IsMultispectral": bool(self.is_multispectral),
            **self.normalization.to_emd(),
        }
        if self.cell_size:
            emd["MinCellSize"] = emd["MaxCellSize"] = self.cell_size
        return emd

    @classmethod
    def from_emd(cls, emd: dict[str, Any]) -> DataInfo:
        """Rebuild from a trained .emd (ours or arcgis.learn's)."""
        fmt = (
            emd.get("MetaDataMode")
            or emd.get("DatasetType")
            or _EMD_MODEL_TYPE_FORMATS.get(str(emd.get("ModelType")), "Classified_Tiles")
        )
        task = FORMAT_TASKS.get(fmt, "segmentation")
        classes = [
            ClassInfo(
                int(c["Value"]),
                str(c.get("Name", c["Value"])),
                list(c["Color"][:3]) if isinstance(c.get("Color"), list) and min(c["Color"]) >= 0 else None,
            )
            for c in emd.get("Classes", [])
            if isinstance(c, dict) and "Value" in c
        ]
        bands_list = emd.get("ExtractBands")
        extract = [int(b) for b in bands_list] if isinstance(bands_list, list) else [0, 1, 2]
        norm = Normalization.from_emd(emd)
        height = int(emd.get("ImageHeight") or 224)
        width = int(emd.get("ImageWidth") or height)
        return cls(
            format=fmt,
            task=task,
            classes=classes,
            bands=len(extract),
            chip_size=(height, width),
            extract_bands=extract,
            normalization=norm,
            is_multispectral=bool(emd.get("IsMultispectral")),
            source_bands=len(extract),
            cell_size=emd.get("MinCellSize"),
        )
