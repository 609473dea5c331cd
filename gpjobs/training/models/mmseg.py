"""MMSEGMENTATION: the `model` names that have an equivalent here, built from our own decoders.

arcgis.learn wraps OpenMMLab mmsegmentation configs; that stack (mmcv, CUDA-ABI pinned wheels,
downloaded checkpoints) is not available offline, so the names map onto the shared segmentation pieces
over a torchvision backbone (`backbone_model`, default resnet50 as in the mmseg configs):

  unet           U-Net decoder over the backbone (mmseg's UNet has its own encoder; ours is the backbone)
  pspnet         pyramid pooling (1, 2, 3, 6) head + auxiliary FCN head (weight 0.4), no U-Net decoder
  deeplabv3      ASPP head (rates 6/12/18) + auxiliary FCN head
  deeplabv3plus  ASPP (rates 6/12/18) + low-level (stride 4) decoder + aux
  fcn            FCN head on the deepest map + auxiliary FCN head
  mobilenet_v2   deeplabv3 on a MobileNetV2 backbone (mmseg's m-v2 configs)

All but unet run on the backbone dilated to output stride 16 (mmseg's `-d8` configs use 8: a simplification
that quarters the cost of the deep layers).

Any other name (or a config path) is refused at submit time by the catalog, which lists these.
Training, losses (class_balancing, ignore_classes, ...), metrics and predictions are the segmentation family's.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from gpjobs.training.models.base import ModelFamily
from gpjobs.training.models.decoders import FCNHead, PyramidPooling, SegmentationNet, UnetDecoder, conv_bn_relu
from gpjobs.training.models.segmentation import SegmentationFamily


class DeepLabV3PlusHead(nn.Module):
    """DeepLabV3+ decoder: ASPP on the deepest tap, upsampled to the stride-4 tap, fused with it."""

    def __init__(self, channels: Sequence[int], num_outputs: int) -> None:
        super().__init__()
        from torchvision.models.segmentation.deeplabv3 import ASPP

        self.aspp = ASPP(channels[-1], [6, 12, 18], 256)
        self.low = conv_bn_relu(channels[1], 48, k=1)
        self.fuse = nn.Sequential(conv_bn_relu(256 + 48, 256), conv_bn_relu(256, 256), nn.Conv2d(256, num_outputs, 1))

    def forward(self, feats: Sequence[torch.Tensor], deep: torch.Tensor | None = None,
                size: Sequence[int] | None = None) -> torch.Tensor:
        low = self.low(feats[1])
        x = F.interpolate(self.aspp(feats[-1]), size=low.shape[-2:], mode="bilinear", align_corners=False)
        x = self.fuse(torch.cat([x, low], 1))
        return x if size is None else F.interpolate(x, size=size, mode="bilinear", align_corners=False)


class MMSegmentationFamily(SegmentationFamily):
    emd_model_configuration = "_model_extension_inferencing"

    def __init__(self, *a: Any, **kw: Any) -> None:
        super().__init__(*a, **kw)
        self.model_name = str(self.args.get("model") or "deeplabv3")
        if self.model_name == "mobilenet_v2" and self.backbone != "MOBILENET_V2":
            self.say("info", f"model=mobilenet_v2 is deeplabv3 on a MobileNetV2 backbone; "
                             f"backbone_model {self.backbone} is not used")
            self.backbone = "MOBILENET_V2"

    def build(self) -> nn.Module:
        from torchvision.models.segmentation.deeplabv3 import DeepLabHead

        if self.args.get("model_weight"):
            self.say("warning", "model_weight: OpenMMLab checkpoints are not available on this server; the "
                                "backbone starts from the weights directory (or random) instead")
        name = self.model_name
        backbone = self._backbone(32 if name == "unet" else 16)
        channels = backbone.out_channels
        aux = FCNHead(channels[-2], self.num_outputs)
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
        return {**super().model_parameters(), "model": self.model_name,
                "model_weight": bool(self.args.get("model_weight")),
                "implementation": f"gpjobs {self.model_name} over torchvision {self.backbone.lower()} "
                                  "(not OpenMMLab)"}


FAMILIES: dict[str, type[ModelFamily]] = {"MMSEGMENTATION": MMSegmentationFamily}
