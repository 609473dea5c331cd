"""Image translation: SUPERRESOLUTION (single network) and the shared translation plumbing.

Samples are `(image, target)` normalised float32 pairs (Export_Tiles: target = the chip itself; Pix2Pix:
images2/; CycleGAN: an A chip and a B chip). Metrics compare pictures on the 0..1 scaled band values:
PSNR (dB) and SSIM, per chip, averaged. `predict` gives a JSON summary per chip plus `_image`, the
translated chip in the export's band units (H, W, C), which `gpjobs predict --out-dir` writes as a TIFF.
The GAN families (PIX2PIX, CYCLEGAN) live in `gan.py` and use the engine's multi-optimizer hook.
"""

from __future__ import annotations

import abc
import copy
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from gpjobs.training.backbones import build_backbone
from gpjobs.training.models.base import ModelFamily
from gpjobs.training.models.gan_nets import SuperResolutionNet
from gpjobs.training.models.image_quality import PixelScale, QualityMeter, degrade

VGG_FEATURE_WEIGHTS = (5.0, 15.0, 2.0)  # arcgis.learn FeatureLoss on vgg16_bn blocks 2..4 (models.md §1B)
OWN_FEATURE_WEIGHT = 0.1  # the random/ImageNet copy of our own encoder: a light term beside pixel L1


class TranslationFamily(ModelFamily):
    """Shared parts of the image-to-image families: pixel scale, predict summary, show_results."""

    emd_model_configuration = ""
    inference_function = "GpjobsImageTranslator.py"

    def __init__(self, *a: Any, **kw: Any) -> None:
        super().__init__(*a, **kw)
        self.backbone = self.backbone or ""  # the GAN model types have no backbone
        self.scale = PixelScale(self.info)

    @abc.abstractmethod
    def output01(self, model: nn.Module, images: torch.Tensor) -> torch.Tensor:
        """The model's translation of a normalised batch as 0..1 scaled band values."""

    def deployable(self, model: nn.Module) -> nn.Module:
        """The translation in band units, as predict() gives it (the PRF only casts)."""
        return _NativeOutput(self, model)

    def inference_spec(self, network: nn.Module) -> dict[str, Any]:
        return {"output": "image", "bands": int(self.in_channels), "upscale": 1}

    @torch.no_grad()
    def predict(self, model: nn.Module, images: torch.Tensor) -> list[dict[str, Any]]:
        """Per chip: output size and per-band min/mean/max in band units; `_image` = (H, W, C) float32."""
        native = self.scale.to_native(self.output01(model, images).float().cpu().clamp(0, 1))
        results = []
        for chip in native:
            flat = chip.flatten(1)
            results.append(
                {
                    "translated": self.model_type.esri_model_name,
                    "size": [int(chip.shape[1]), int(chip.shape[2])],
                    "bands": int(chip.shape[0]),
                    "band_min": [round(float(v), 3) for v in flat.min(1).values],
                    "band_mean": [round(float(v), 3) for v in flat.mean(1)],
                    "band_max": [round(float(v), 3) for v in flat.max(1).values],
                    "_image": chip.permute(1, 2, 0).numpy(),
                }
            )
        return results

    def show_pairs(self, columns: list[tuple[str, torch.Tensor]], path: Path, rows: int = 4) -> None:
        """One row per chip, one column per (title, 0..1 batch): input, truth, output side by side."""
        from gpjobs.training.model_card import _plt

        plt = _plt()
        n = min(rows, columns[0][1].shape[0])
        fig, axes = plt.subplots(n, len(columns), figsize=(2.5 * len(columns), 2.5 * n), squeeze=False)
        for i in range(n):
            for ax, (title, batch) in zip(axes[i], columns):
                arr = batch[i].detach().float().cpu().clamp(0, 1).numpy()
                arr = arr[:3] if arr.shape[0] >= 3 else arr[:1].repeat(3, 0)
                ax.imshow(arr.transpose(1, 2, 0), interpolation="nearest")
                ax.set_title(title, fontsize=8)
                ax.axis("off")
        fig.tight_layout()
        fig.savefig(path, dpi=80)
        plt.close(fig)

    @staticmethod
    def metric_strings(metrics: dict[str, Any], names: Iterable[str]) -> dict[str, str]:
        """arcgis.learn writes translation metrics into the .emd as strings ("2.7812e+01")."""
        return {name: f"{float(metrics[name]):.4e}" for name in names if name in metrics}


class _NativeOutput(nn.Module):
    """A translation network followed by predict()'s conversion to band units."""

    def __init__(self, family: TranslationFamily, model: nn.Module) -> None:
        super().__init__()
        self.family = family
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.family.scale.to_native(self.family.output01(self.model, images).float().clamp(0, 1))


class _Upsampled(nn.Module):
    def __init__(self, model: nn.Module, size: tuple[int, ...]) -> None:
        super().__init__()
        self.model = model
        self.size = size

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(F.interpolate(images, size=self.size, mode="bilinear", align_corners=False))


class FeatureLoss(nn.Module):
    """Pixel L1 + weighted L1 between feature maps (+ Gram matrices for VGG, as arcgis.learn's FeatureLoss)."""

    def __init__(
        self, layers: nn.ModuleList, weights: Iterable[float], gram: bool, rgb_only: bool, pixel: bool = True
    ) -> None:
        super().__init__()
        self.pixel = pixel
        self.layers = layers
        self.weights = list(weights)
        self.gram = gram
        self.rgb_only = rgb_only
        for p in self.layers.parameters():
            p.requires_grad_(False)
        self.layers.eval()

    def train(self, mode: bool = True) -> FeatureLoss:
        return super().train(False)  # frozen BatchNorm statistics, always

    def _features(self, x: torch.Tensor) -> list[torch.Tensor]:
        if self.rgb_only:
            x = x[:, :3] if x.shape[1] >= 3 else x[:, :1].expand(-1, 3, -1, -1)
        out = []
        for layer in self.layers:
            x = layer(x)
            out.append(x)
        return out

    @staticmethod
    def _gram(f: torch.Tensor) -> torch.Tensor:
        b, c, h, w = f.shape
        flat = f.reshape(b, c, h * w)
        return flat @ flat.transpose(1, 2) / (c * h * w)

    def per_sample(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        loss = (pred - target).abs().flatten(1).mean(1) if self.pixel else pred.new_zeros(pred.shape[0])
        for w, fp, ft in zip(self.weights, self._features(pred), self._features(target.detach())):
            loss = loss + w * (fp - ft).abs().flatten(1).mean(1)
            if self.gram:
                loss = loss + w**2 * 5e3 * (self._gram(fp) - self._gram(ft)).abs().flatten(1).mean(1)
        return loss


def vgg_feature_loss(weights, say, what: str) -> FeatureLoss | None:
    """arcgis.learn's VGG16-BN FeatureLoss when vgg16_bn-6c64b313.pth is in the weights directory, else None."""
    path = weights.find_file("VGG16_BN") if weights.skip_reason is None else None
    if path is None:
        return None
    try:
        import torchvision

        vgg = torchvision.models.vgg16_bn(weights=None)
        vgg.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    except Exception as exc:  # a broken file: the caller falls back, and we say so
        say("warning", f"{what}: {path.name} could not be used ({exc})")
        return None
    feats = vgg.features
    pools = [i for i, m in enumerate(feats) if isinstance(m, nn.MaxPool2d)]
    cuts = [0] + [pools[k] for k in (1, 2, 3)]  # ReLU outputs before pools 2, 3 and 4
    layers = nn.ModuleList(feats[a:b] for a, b in zip(cuts, cuts[1:]))
    say("info", f"{what}: VGG16_BN features ({path.name})")
    return FeatureLoss(layers, VGG_FEATURE_WEIGHTS, gram=True, rgb_only=True)


class SuperResolutionFamily(TranslationFamily):
    """fastai-style super-resolution: U-Net over the task backbone trained on degraded -> original chips."""

    emd_model_type = "SuperResolution"
    emd_model_configuration = "_superres"

    def __init__(self, *a: Any, **kw: Any) -> None:
        super().__init__(*a, **kw)
        self.factor = int(self.args.get("downsample_factor") or 2)
        if self.factor < 1:
            raise ValueError("downsample_factor must be 1 or more")
        self.loss: FeatureLoss | None = None

    def build(self) -> nn.Module:
        backbone = build_backbone(self.backbone, self.in_channels, weights=self.weights, say=self.say)
        model = SuperResolutionNet(backbone, self.in_channels)
        self.loss = self._feature_loss(backbone)
        return model

    def _feature_loss(self, backbone: nn.Module) -> FeatureLoss:
        """VGG16-BN features when its ImageNet file is in the weights directory (arcgis.learn's loss),
        else a frozen copy of the first stages of our own encoder (as initialised: ImageNet or random)."""
        vgg = vgg_feature_loss(self.weights, self.say, "SuperResolution feature loss")
        if vgg is not None:
            return vgg
        stages = list(backbone.stages.values())[:3]
        layers = nn.ModuleList(copy.deepcopy(s) for s in stages)
        pretrained = self.weights.outcome.startswith("loaded")
        self.say(
            "info" if pretrained else "warning",
            (
                "SuperResolution feature loss: no VGG16_BN weights (vgg16_bn-6c64b313.pth) in the weights directory; "
                f"using a frozen copy of the first {self.backbone} stages"
                + ("" if pretrained else " (randomly initialised, so the term is weak: pixel L1 does most of the work)")
            ),
        )
        return FeatureLoss(layers, [OWN_FEATURE_WEIGHT] * len(layers), gram=False, rgb_only=False)

    def _loss_module(self, device: torch.device) -> FeatureLoss:
        assert self.loss is not None, "build() first"
        if next(self.loss.parameters()).device != device:
            self.loss.to(device)
        return self.loss

    def training_loss(self, model: nn.Module, batch: Any, device: torch.device) -> torch.Tensor:
        _, target = batch
        target = target.to(device, non_blocking=True)
        out = model(degrade(target, self.factor))
        return self._loss_module(device).per_sample(out, target).mean()

    @torch.no_grad()
    def validate(self, model: nn.Module, loader: Iterable, device: torch.device) -> tuple[float, dict[str, Any]]:
        loss_fn = self._loss_module(device)
        meter = QualityMeter()
        total, count = torch.zeros((), device=device), 0
        for _, target in loader:
            target = target.to(device, non_blocking=True)
            low = degrade(target, self.factor)
            out = model(low)
            total += loss_fn.per_sample(out.float(), target).sum()
            truth = self.scale.to01(target)
            meter.update("", self.scale.to01(out.float()), truth)
            meter.update("_upsampled", self.scale.to01(low), truth)  # the bilinear baseline to beat
            count += target.shape[0]
            meter.add_count(target.shape[0])
        return float(total) / max(count, 1), meter.result()

    def output01(self, model: nn.Module, images: torch.Tensor) -> torch.Tensor:
        # predict feeds chips already resized to the chip size: a chip of chip_size / downsample_factor
        # pixels is upsampled bilinearly (to_model_input) exactly as the training inputs were.
        return self.scale.to01(model(images))

    def model_parameters(self) -> dict[str, Any]:
        return {**super().model_parameters(), "downsample_factor": self.factor}

    def example_input(self) -> torch.Tensor | None:
        """The PRF feeds tiles at the raster's own (coarse) cell size: chip_size / downsample_factor."""
        h, w = self.info.chip_size
        return torch.zeros(1, self.in_channels, max(1, int(h) // self.factor), max(1, int(w) // self.factor))

    def deployable(self, model: nn.Module) -> nn.Module:
        """Coarse tile -> bilinear upsampling to the chip size (as predict resizes a small chip) -> network."""
        return _Upsampled(super().deployable(model), tuple(int(v) for v in self.info.chip_size))

    def inference_spec(self, network: nn.Module) -> dict[str, Any]:
        return {**super().inference_spec(network), "upscale": self.factor}

    def emd_fields(self, metrics: dict[str, Any]) -> dict[str, Any]:
        return {
            **super().emd_fields(metrics),
            "downsample_factor": self.factor,
            **self.metric_strings(metrics, ("PSNR", "SSIM")),
        }

    def show_results(self, model: nn.Module, batch: Any, path: Path) -> None:
        _, target = batch
        model.eval()
        with torch.no_grad():
            low = degrade(target, self.factor)
            out = model(low)
        self.show_pairs(
            [
                (f"input (1/{self.factor})", self.scale.to01(low)),
                ("original", self.scale.to01(target)),
                ("prediction", self.scale.to01(out)),
            ],
            path,
        )


FAMILIES: dict[str, type[ModelFamily]] = {"SUPERRESOLUTION": SuperResolutionFamily}
