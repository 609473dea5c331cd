"""MMSEGMENTATION: every `model` name arcgis.learn documents, trained by our own networks.

arcgis.learn wraps OpenMMLab mmsegmentation configs; that stack (mmcv, CUDA-ABI pinned wheels,
downloaded checkpoints) is not available offline, so each name is trained by one of these implementations
over a torchvision backbone (`backbone_model`, default resnet50 as in the mmseg configs):

  unet           U-Net decoder over the backbone (mmseg's UNet has its own encoder; ours is the backbone)
  pspnet         pyramid pooling (1, 2, 3, 6) head + auxiliary FCN head (weight 0.4), no U-Net decoder
  deeplabv3      ASPP head (rates 6/12/18) + auxiliary FCN head
  deeplabv3plus  ASPP (rates 6/12/18) + low-level (stride 4) decoder + aux
  fcn            FCN head on the deepest map + auxiliary FCN head
  mobilenet_v2   deeplabv3 on a MobileNetV2 backbone (mmseg's m-v2 configs)
  upernet        UPerNet: pyramid pooling + FPN fusion (segmentation_heads.py) + aux
  ocrnet         OCRNet (HRNet-OCR style, stride-8 concatenated taps): object-contextual representations
                 from the aux head's soft regions
  sem_fpn        Semantic FPN (Panoptic FPN's semantic branch) + aux
  hrnet          HRNetV2's head (all taps resized and concatenated) over backbone_model + aux
  nonlocal_net, dnlnet, gcnet, ccnet   non-local / disentangled non-local / global context / criss-cross
                 attention heads (segmentation_attention.py) + aux, on the deepest tap (stride 16)

pspnet, deeplabv3(plus), fcn, mobilenet_v2 and the attention heads run on the backbone dilated to output stride
16 (mmseg's `-d8` configs use 8: a simplification that quarters the cost of the deep layers). unet and the
multi-scale heads (upernet, sem_fpn, hrnet, ocrnet) read the undilated stride-4..32 taps, as mmseg's UPerNet,
Semantic FPN and HRNet configs do.

The other names arcgis.learn lists train as the closest of these; a job message and the `.emd`
(ModelParameters `trained_as`, `mapping_note`) say exactly what was trained. A config path or an unknown name
is refused at submit time by the catalog, which lists the names.
Training, losses (class_balancing, ignore_classes, ...), metrics and predictions are the segmentation family's.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from gpjobs.training.models.base import ModelFamily
from gpjobs.training.models.decoders import FCNHead, PyramidPooling, SegmentationNet, UnetDecoder, conv_bn_relu
from gpjobs.training.models.segmentation import SegmentationFamily
from gpjobs.training.models.segmentation_attention import ContextHead
from gpjobs.training.models.segmentation_heads import HRNetV2Head, OCRNet, SemanticFPNHead, UPerHead

IMPLEMENTATIONS = (
    "unet",
    "pspnet",
    "deeplabv3",
    "deeplabv3plus",
    "fcn",
    "mobilenet_v2",
    "upernet",
    "ocrnet",
    "sem_fpn",
    "hrnet",
    "nonlocal_net",
    "dnlnet",
    "gcnet",
    "ccnet",
)
# these read the stride-4..32 taps themselves (FPN fusion, concatenation); the others get a dilated backbone
UNDILATED = ("unet", "upernet", "sem_fpn", "hrnet", "ocrnet")
# every accepted name -> (implementation, what the OpenMMLab model is and what this server trains instead)
MODELS: dict[str, tuple[str, str]] = {name: (name, "") for name in IMPLEMENTATIONS}
MODELS.update(
    {
        "hrnet": (
            "hrnet",
            "HRNetV2: its head over an HRNet backbone, which is not available here; the head runs over backbone_model",
        ),
        "ann": (
            "nonlocal_net",
            "ANN (asymmetric non-local attention over pyramid-pooled keys); trained with the full non-local block",
        ),
        "emanet": (
            "nonlocal_net",
            "EMANet (expectation-maximisation attention over a compact basis); trained with "
            "non-local attention over all positions",
        ),
        "psanet": ("nonlocal_net", "PSANet (point-wise spatial attention); trained with non-local attention"),
        "apcnet": ("pspnet", "APCNet (adaptive pyramid context); trained with PSPNet's pyramid pooling"),
        "dmnet": ("pspnet", "DMNet (dynamic multi-scale filters); trained with PSPNet's pyramid pooling"),
        "cgnet": (
            "mobilenet_v2",
            "CGNet, a light network with its own context-guided backbone; trained as the light "
            "network here, DeepLabV3 on MobileNetV2",
        ),
        "fastscnn": (
            "mobilenet_v2",
            "Fast-SCNN, a light network with its own backbone; trained as the light network "
            "here, DeepLabV3 on MobileNetV2",
        ),
        "resnest": (
            "deeplabv3",
            "DeepLabV3 over a ResNeSt (split-attention) backbone, which is not available here; "
            "trained over backbone_model",
        ),
    }
)


class DeepLabV3PlusHead(nn.Module):
    """DeepLabV3+ decoder: ASPP on the deepest tap, upsampled to the stride-4 tap, fused with it."""

    def __init__(self, channels: Sequence[int], num_outputs: int) -> None:
        super().__init__()
        from torchvision.models.segmentation.deeplabv3 import ASPP

        self.aspp = ASPP(channels[-1], [6, 12, 18], 256)
        self.low = conv_bn_relu(channels[1], 48, k=1)
        self.fuse = nn.Sequential(conv_bn_relu(256 + 48, 256), conv_bn_relu(256, 256), nn.Conv2d(256, num_outputs, 1))

    def forward(
        self, feats: Sequence[torch.Tensor], deep: torch.Tensor | None = None, size: Sequence[int] | None = None
    ) -> torch.Tensor:
        low = self.low(feats[1])
        x = F.interpolate(self.aspp(feats[-1]), size=low.shape[-2:], mode="bilinear", align_corners=False)
        x = self.fuse(torch.cat([x, low], 1))
        return x if size is None else F.interpolate(x, size=size, mode="bilinear", align_corners=False)


class MMSegmentationFamily(SegmentationFamily):
    emd_model_configuration = "_model_extension_inferencing"

    def __init__(self, *a: Any, **kw: Any) -> None:
        super().__init__(*a, **kw)
        self.model_name = str(self.args.get("model") or "deeplabv3").strip().lower()
        if self.model_name not in MODELS:  # the catalog's choices make this unreachable from submit
            from gpjobs.catalog import ArgumentError

            raise ArgumentError(
                f"MMSEGMENTATION model '{self.model_name}' is not an mmsegmentation model this "
                f"server trains; use one of: {', '.join(sorted(MODELS))}"
            )
        self.implementation, self.mapping_note = MODELS[self.model_name]
        if self.mapping_note:
            self.say(
                "warning",
                f"model={self.model_name}: {self.mapping_note}. This server trains "
                f"{self.implementation} (the .emd records it)",
            )
        if self.implementation == "mobilenet_v2" and self.backbone != "MOBILENET_V2":
            self.say(
                "info",
                f"model={self.model_name} is deeplabv3 on a MobileNetV2 backbone; "
                f"backbone_model {self.backbone} is not used",
            )
            self.backbone = "MOBILENET_V2"

    def build(self) -> nn.Module:
        from torchvision.models.segmentation.deeplabv3 import DeepLabHead

        if self.args.get("model_weight"):
            self.say(
                "warning",
                "model_weight: OpenMMLab checkpoints are not available on this server; the "
                "backbone starts from the weights directory (or random) instead",
            )
        name = self.implementation
        backbone = self._backbone(32 if name in UNDILATED else 16)
        channels = backbone.out_channels
        if name == "ocrnet":  # its head needs the aux head's regions: a network of its own
            return OCRNet(backbone, self.num_outputs)
        aux = FCNHead(channels[-2], self.num_outputs)
        if name == "upernet":
            return SegmentationNet(backbone, UPerHead(channels, self.num_outputs), aux=aux, unet=True)
        if name == "sem_fpn":
            return SegmentationNet(
                backbone, SemanticFPNHead(channels, self.num_outputs, backbone.strides), aux=aux, unet=True
            )
        if name == "hrnet":
            return SegmentationNet(backbone, HRNetV2Head(channels, self.num_outputs), aux=aux, unet=True)
        if name in ("nonlocal_net", "dnlnet", "gcnet", "ccnet"):
            return SegmentationNet(backbone, ContextHead(channels[-1], self.num_outputs, name), aux=aux, unet=False)
        if name == "unet":
            return SegmentationNet(backbone, UnetDecoder(channels, self.num_outputs))
        if name == "pspnet":
            context = PyramidPooling(channels[-1], [1, 2, 3, 6], cout=min(512, channels[-1]))
            head = nn.Sequential(nn.Dropout(0.1), nn.Conv2d(context.out_channels, self.num_outputs, 1))
            return SegmentationNet(backbone, head, context=context, aux=aux, unet=False)
        if name in ("deeplabv3", "mobilenet_v2"):
            head = DeepLabHead(channels[-1], self.num_outputs, atrous_rates=(6, 12, 18))
            return SegmentationNet(backbone, head, aux=aux, unet=False)
        if name == "deeplabv3plus":
            return SegmentationNet(backbone, DeepLabV3PlusHead(channels, self.num_outputs), aux=aux, unet=True)
        if name == "fcn":
            return SegmentationNet(backbone, FCNHead(channels[-1], self.num_outputs), aux=aux, unet=False)
        from gpjobs.catalog import ArgumentError  # the catalog's choices make this unreachable from submit

        raise ArgumentError(f"MMSEGMENTATION model '{name}' has no equivalent on this server")

    def model_parameters(self) -> dict[str, Any]:
        params = {
            **super().model_parameters(),
            "model": self.model_name,
            "model_weight": bool(self.args.get("model_weight")),
            "trained_as": self.implementation,
            "implementation": f"gpjobs {self.implementation} over torchvision {self.backbone.lower()} (not OpenMMLab)",
        }
        if self.mapping_note:
            params["mapping_note"] = f"{self.model_name}: {self.mapping_note}"
        return params

    def emd_fields(self, metrics: dict[str, Any]) -> dict[str, Any]:
        fields = super().emd_fields(metrics)
        fields.update(
            {
                "DatasetType": self.info.format,
                "Kwargs": {"model": self.model_name, "model_weight": bool(self.args.get("model_weight"))},
            }
        )
        return fields


FAMILIES: dict[str, type[ModelFamily]] = {"MMSEGMENTATION": MMSegmentationFamily}
