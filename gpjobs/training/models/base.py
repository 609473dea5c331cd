"""What every model family gives the shared engine and the package writer.

A family turns (model type, data info, backbone, arguments) into a torch model and knows how to compute
its training loss, validate it (loss + metrics), predict with it, and describe it in the `.emd`. The engine
(`gpjobs.training.engine`) owns the loop, optimiser, schedule, checkpoints and events; families own no loop.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from gpjobs.training.backbones import set_backbone_frozen
from gpjobs.training.weights import WeightsPolicy

if TYPE_CHECKING:  # data layer types; imported for annotations only
    from gpjobs.catalog import ModelTypeInfo
    from gpjobs.export import DataInfo

Say = Callable[[str, str], None]


class ModelFamily(ABC):
    """Base of the per-family adapters (classification, segmentation, detection).

    Subclasses set `model_type` specific class attributes:
      - `default_monitor`: the metric early stopping watches unless `arguments.monitor` says otherwise
        ("valid_loss" or one of the names `validate` returns);
      - `emd_model_type` / `emd_model_configuration` / `inference_function`: `.emd` identity (export-format §3.3).
    A built model keeps its backbone as `model.backbone` (a FeatureBackbone or any nn.Module); the default
    `backbone_parameters` / `head_parameters` / `freeze` rely on that attribute.
    """

    default_monitor: str = "valid_loss"
    emd_model_type: str = ""
    emd_model_configuration: str = ""
    inference_function: str = "GpjobsPixelClassifier.py"  # the package's PRF (gpjobs/training/inference/)
    supports_variable_tile_size: bool = False

    def __init__(
        self,
        model_type: ModelTypeInfo,
        info: DataInfo,
        backbone: str,
        args: dict[str, Any],
        weights: WeightsPolicy,
        say: Say,
    ) -> None:
        self.model_type = model_type
        self.info = info
        self.backbone = backbone
        self.args = dict(args)
        self.weights = weights
        self.say = say

    # --- construction --------------------------------------------------------------------------

    def attach_data(self, data: Any) -> None:
        """Called with the TrainingData before build() when training (not when loading a package):
        families take what they need from it (e.g. class weights)."""

    def load_emd(self, emd: dict[str, Any]) -> None:
        """Called with a package's .emd before build() when a model is rebuilt from its package (not when
        training): families take back what they learned from the training data (e.g. a vocabulary)."""

    @abstractmethod
    def build(self) -> nn.Module:
        """A fresh model (backbone weights per the WeightsPolicy), in train mode, on the CPU."""

    @property
    def in_channels(self) -> int:
        bands = self.info.extract_bands if getattr(self.info, "extract_bands", None) else None
        return len(bands) if bands else int(self.info.bands)

    @property
    def num_classes(self) -> int:
        return len(self.info.classes)

    @property
    def monitor(self) -> str:
        monitor = self.args.get("monitor") or "valid_loss"
        return str(monitor)

    # --- parameters and freezing ---------------------------------------------------------------

    def backbone_module(self, model: nn.Module) -> nn.Module | None:
        return getattr(model, "backbone", None)

    def backbone_parameters(self, model: nn.Module) -> list[nn.Parameter]:
        """Parameters trained at the lower, discriminative learning rate (lr / 10)."""
        backbone = self.backbone_module(model)
        return list(backbone.parameters()) if backbone is not None else []

    def head_parameters(self, model: nn.Module) -> list[nn.Parameter]:
        """Everything that is not backbone: decoder and heads, trained at the full learning rate."""
        ids = {id(p) for p in self.backbone_parameters(model)}
        return [p for p in model.parameters() if id(p) not in ids]

    def freeze(self, model: nn.Module, frozen: bool = True) -> None:
        """freeze_model=true: backbone fixed except BatchNorm and a rebuilt first conv (fastai semantics)."""
        backbone = self.backbone_module(model)
        if backbone is not None:
            set_backbone_frozen(backbone, frozen)

    def train_loader(self, data: Any, batch_size: int, **loader_kw: Any):
        """A family-specific training DataLoader (e.g. oversampling), or None for data.loaders()'s."""
        return None

    # --- training and evaluation ---------------------------------------------------------------

    @abstractmethod
    def training_loss(self, model: nn.Module, batch: Any, device: torch.device) -> torch.Tensor:
        """Scalar loss of one training batch (model is in train mode; the engine does backward)."""

    @abstractmethod
    def validate(self, model: nn.Module, loader: Iterable, device: torch.device) -> tuple[float, dict[str, Any]]:
        """(validation loss, metrics). Scalar metrics are floats; the monitor metric comes first."""

    @abstractmethod
    def predict(self, model: nn.Module, images: torch.Tensor) -> list[dict[str, Any]]:
        """Predictions, one dict per chip of a normalised (B, C, H, W) batch (model in eval mode).

        Values are JSON-able except keys starting with "_" (e.g. "_mask", a numpy class-value raster),
        which callers strip before printing JSON.
        """

    # --- package -------------------------------------------------------------------------------

    def model_parameters(self) -> dict[str, Any]:
        """`.emd` ModelParameters: backbone (lower case, as arcgis writes it) plus family extras."""
        return {"backbone": self.backbone.lower(), "backend": "pytorch"}

    def emd_fields(self, metrics: dict[str, Any]) -> dict[str, Any]:
        """Model-specific `.emd` keys; the package writer adds data, learning-rate and bookkeeping keys."""
        return {
            "Framework": "PyTorch",
            "ModelConfiguration": self.emd_model_configuration,
            "ModelType": self.emd_model_type,
            "InferenceFunction": self.inference_function,
            "ModelName": self.model_type.esri_model_name,
            "ModelParameters": self.model_parameters(),
            "SupportsVariableTileSize": self.supports_variable_tile_size,
        }

    def show_results(self, model: nn.Module, batch: Any, path: Path) -> None:
        """Write a PNG with ground truth next to prediction for a few validation chips (optional)."""

    def extra_characteristics(self, model: nn.Module, metrics: dict[str, Any], folder: Path) -> None:
        """Write further ModelCharacteristics files (e.g. confusion_matrix.png); optional."""

    def example_input(self) -> torch.Tensor | None:
        """A batch for TorchScript tracing; None skips TorchScript for this family."""
        h, w = self.info.chip_size
        return torch.zeros(1, self.in_channels, int(h), int(w))

    def deployable(self, model: nn.Module) -> nn.Module:
        """The network the package's PRF runs, traced to TorchScript on `example_input()`: dense layers only,
        its outputs as `inference_spec()` describes them (the model itself by default). A network with a
        `trace(example)` method traces itself (several entry points)."""
        return model

    def trace(self, network: nn.Module) -> torch.jit.ScriptModule | None:
        """`network` (from deployable()) as TorchScript, or None when this family has no example input."""
        example = self.example_input()
        if example is None:
            return None
        if hasattr(network, "trace"):
            return network.trace(example)
        return torch.jit.trace(network, example, check_trace=False, strict=False)

    def inference_spec(self, network: nn.Module) -> dict[str, Any]:
        """The `.emd`'s GpjobsInference section: what the deployable network outputs and how the PRF reads it.
        Default: class scores per pixel, model index i -> class value (index 0 = NoData, value 0)."""
        return {"output": "pixel_classes", "index_values": [0] + [int(c.value) for c in self.info.classes]}
