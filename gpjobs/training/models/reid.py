"""DEEPSORT: the appearance (re-identification) network that Deep SORT's tracker uses at inference.

arcgis.learn's DeepSort trains only the Re-ID CNN; the Kalman filter + Hungarian association is
inference-time configuration, not trained. The training data is Imagenet-style identity-per-folder crops
(images/<identity>/<crop>), so training is classification over identities with a 128-d embedding in front of
the classifier (the Deep SORT "cosine metric learning" reid_v1 layout: small residual CNN, L2-normalised
embedding). Backbones are the network variants, not torchvision models:

  REID_V1   2 conv + 6 residual blocks (32-64-128 channels), 128-d embedding (the Deep SORT paper net)
  REID_V2   the same with doubled width (64-128-256), 256-wide residual stages, 128-d embedding

Training, metrics (accuracy, per-class) and `.emd` come from the feature classifier; `predict` adds the
L2-normalised embedding per chip, which is what the tracker compares (cosine distance).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from gpjobs.training.models.base import ModelFamily
from gpjobs.training.models.classification import FeatureClassifierFamily

EMBEDDING_SIZE = 128
_WIDTHS = {"REID_V1": 32, "REID_V2": 64}


class ResidualBlock(nn.Module):
    """Pre-activation-free basic block (two 3x3 convs), optional stride-2 downsampling."""

    def __init__(self, cin: int, cout: int, downsample: bool) -> None:
        super().__init__()
        stride = 2 if downsample else 1
        self.body = nn.Sequential(
            nn.Conv2d(cin, cout, 3, stride, 1, bias=False),
            nn.BatchNorm2d(cout),
            nn.ELU(inplace=True),
            nn.Conv2d(cout, cout, 3, 1, 1, bias=False),
            nn.BatchNorm2d(cout),
        )
        self.skip = (
            nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
            if downsample or cin != cout
            else nn.Identity()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.elu(self.body(x) + self.skip(x))


class ReidTrunk(nn.Module):
    """Convolutional feature extractor of the Re-ID net (the part `freeze_model` fixes)."""

    def __init__(self, in_channels: int, width: int) -> None:
        super().__init__()
        w = width
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, w, 3, 1, 1, bias=False),
            nn.BatchNorm2d(w),
            nn.ELU(inplace=True),
            nn.Conv2d(w, w, 3, 1, 1, bias=False),
            nn.BatchNorm2d(w),
            nn.ELU(inplace=True),
            nn.MaxPool2d(3, 2, 1),
        )
        self.stages = nn.Sequential(
            ResidualBlock(w, w, False),
            ResidualBlock(w, w, False),
            ResidualBlock(w, 2 * w, True),
            ResidualBlock(2 * w, 2 * w, False),
            ResidualBlock(2 * w, 4 * w, True),
            ResidualBlock(4 * w, 4 * w, False),
        )
        self.out_channels = [4 * w]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(self.stem(x))


class ReidNet(nn.Module):
    """Trunk -> global pooling -> 128-d embedding (BN) -> identity logits.

    `forward` returns logits (the engine's classifier loss); `embed` returns the L2-normalised embedding.
    """

    def __init__(self, in_channels: int, num_identities: int, width: int) -> None:
        super().__init__()
        self.backbone = ReidTrunk(in_channels, width)
        cout = self.backbone.out_channels[-1]
        self.embedding = nn.Sequential(
            nn.Dropout(0.4), nn.Linear(cout, EMBEDDING_SIZE, bias=False), nn.BatchNorm1d(EMBEDDING_SIZE)
        )
        self.classifier = nn.Linear(EMBEDDING_SIZE, num_identities)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.embedding(F.adaptive_avg_pool2d(self.backbone(x), 1).flatten(1))

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.features(x), dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(F.elu(self.features(x)))


class DeepSortFamily(FeatureClassifierFamily):
    emd_model_type = "ObjectTracking"
    emd_model_configuration = "_DeepSort"
    default_monitor = "valid_loss"

    def __init__(self, *a: Any, **kw: Any) -> None:
        super().__init__(*a, **kw)
        if self.multilabel:
            from gpjobs.catalog import ArgumentError

            raise ArgumentError("DEEPSORT trains on one identity per crop (Imagenet folders), not multi-label data")

    def build(self) -> nn.Module:
        self.weights.outcome = f"none: {self.backbone.lower()} has no pretrained weights on this server"
        return ReidNet(self.in_channels, self.num_classes, _WIDTHS[self.backbone])

    def train_loader(self, data: Any, batch_size: int, **loader_kw: Any):
        return None  # oversample is a FEATURE_CLASSIFIER argument; identities stay as drawn

    @torch.no_grad()
    def predict(self, model: nn.Module, images: torch.Tensor) -> list[dict[str, Any]]:
        results = super().predict(model, images)
        for result, vector in zip(results, model.embed(images).float().cpu()):
            result["embedding"] = [round(float(v), 6) for v in vector]
        return results

    def model_parameters(self) -> dict[str, Any]:
        return {
            **super().model_parameters(),
            "embedding_size": EMBEDDING_SIZE,
            "implementation": "gpjobs Re-ID CNN (softmax over identities); tracker runs at inference",
        }

    def emd_fields(self, metrics: dict[str, Any]) -> dict[str, Any]:
        fields = super().emd_fields(metrics)
        fields.update(
            {
                "ModelType": "ObjectTracking",
                "ModelName": "DeepSort",
                "IsMultiLabel": False,
                "EmbeddingSize": EMBEDDING_SIZE,
            }
        )
        return fields


FAMILIES: dict[str, type[ModelFamily]] = {"DEEPSORT": DeepSortFamily}
