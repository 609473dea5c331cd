"""Decoder heads over FeatureBackbone taps: U-Net decoder, pyramid pooling (PSPNet), ASPP (DeepLab)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def conv_bn_relu(cin: int, cout: int, k: int = 3, dilation: int = 1) -> nn.Sequential:
    pad = dilation * (k // 2)
    return nn.Sequential(
        nn.Conv2d(cin, cout, k, padding=pad, dilation=dilation, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)
    )


class UnetBlock(nn.Module):
    """Upsample to the skip's size, concatenate the skip, two 3x3 convs."""

    def __init__(self, cin: int, cskip: int, cout: int) -> None:
        super().__init__()
        self.convs = nn.Sequential(conv_bn_relu(cin + cskip, cout), conv_bn_relu(cout, cout))

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
        return self.convs(torch.cat([x, skip], 1))


def wide_unet_widths(channels: Sequence[int]) -> list[int]:
    """Decoder widths per shallower tap, each tap's own channels (32..256): gpjobs' first U-Net layout, kept for
    PSPNET and for packages trained with it."""
    return [min(256, max(32, c)) for c in channels[:-1]]


def slim_unet_widths(channels: Sequence[int]) -> list[int]:
    """256 at the deepest skip, halving toward the input (min 16): the widths of the original U-Net's and
    segmentation-models-pytorch's decoders. On ResNet18 taps at 64 px this is ~25 % fewer FLOPs per step than
    wide_unet_widths (the stride-2 level and the full-resolution conv dominate)."""
    n = len(channels) - 1
    return [max(16, 256 >> (n - 1 - i)) for i in range(n)]


class UnetDecoder(nn.Module):
    """U-Net decoder over taps [shallow .. deep]: the deepest map (optionally replaced by a context module's
    output with `deep_channels`) is upsampled through every shallower tap, then to the input size.
    `widths`: output channels per shallower tap (default wide_unet_widths)."""

    def __init__(
        self,
        channels: Sequence[int],
        num_outputs: int,
        deep_channels: int | None = None,
        widths: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        deep = deep_channels or channels[-1]
        width = list(widths) if widths is not None else wide_unet_widths(channels)
        self.middle = conv_bn_relu(deep, width[-1] * 2 if width else deep)
        blocks, cin = [], width[-1] * 2 if width else deep
        for skip_c, out_c in zip(reversed(channels[:-1]), reversed(width)):
            blocks.append(UnetBlock(cin, skip_c, out_c))
            cin = out_c
        self.blocks = nn.ModuleList(blocks)
        self.final = nn.Sequential(conv_bn_relu(cin, max(16, cin // 2)), nn.Conv2d(max(16, cin // 2), num_outputs, 1))

    def forward(
        self, feats: Sequence[torch.Tensor], deep: torch.Tensor | None = None, size: Sequence[int] | None = None
    ) -> torch.Tensor:
        x = self.middle(feats[-1] if deep is None else deep)
        for block, skip in zip(self.blocks, reversed(feats[:-1])):
            x = block(x, skip)
        if size is not None:
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        return self.final(x)


class PyramidPooling(nn.Module):
    """PSPNet pyramid pooling: pool to each size, 1x1 conv, upsample, concatenate with the input."""

    def __init__(self, cin: int, sizes: Sequence[int], cout: int = 256) -> None:
        super().__init__()
        branch = max(16, cin // max(1, len(sizes)))
        self.branches = nn.ModuleList(
            nn.Sequential(
                nn.AdaptiveAvgPool2d(int(s)),
                nn.Conv2d(cin, branch, 1, bias=False),
                nn.BatchNorm2d(branch),
                nn.ReLU(inplace=True),
            )
            for s in sizes
        )
        self.fuse = conv_bn_relu(cin + branch * len(sizes), cout)
        self.out_channels = cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        pooled = [F.interpolate(b(x), size=size, mode="bilinear", align_corners=False) for b in self.branches]
        return self.fuse(torch.cat([x, *pooled], 1))


class FCNHead(nn.Sequential):
    """Auxiliary head on an intermediate tap (PSPNet/DeepLab aux loss)."""

    def __init__(self, cin: int, num_outputs: int) -> None:
        mid = max(16, cin // 4)
        super().__init__(conv_bn_relu(cin, mid), nn.Dropout(0.1), nn.Conv2d(mid, num_outputs, 1))


class SegmentationNet(nn.Module):
    """backbone -> (context) -> decoder; forward gives logits at input size, forward_train adds aux logits."""

    def __init__(
        self,
        backbone: nn.Module,
        head: nn.Module,
        *,
        context: nn.Module | None = None,
        aux: nn.Module | None = None,
        unet: bool = True,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.context = context
        self.head = head
        self.aux = aux
        self.unet = unet
        self.head_takes_image = bool(getattr(head, "needs_input", False))

    def forward_train(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        size = x.shape[-2:]
        feats = list(self.backbone(x).values())
        deep = self.context(feats[-1]) if self.context is not None else None
        if self.unet:
            logits = self.head(feats, deep, size, image=x) if self.head_takes_image else self.head(feats, deep, size)
        else:
            logits = F.interpolate(
                self.head(deep if deep is not None else feats[-1]), size=size, mode="bilinear", align_corners=False
            )
        aux = None
        if self.aux is not None and self.training:
            aux = F.interpolate(self.aux(feats[-2]), size=size, mode="bilinear", align_corners=False)
        return logits, aux

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_train(x)[0]


# --- fastai's DynamicUnet (what arcgis.learn's UnetClassifier trains) -------------------------------------------


def fastai_conv(cin: int, cout: int, k: int = 3, *, batchnorm: bool = False, activation: bool = True) -> nn.Sequential:
    """fastai v1 `conv_layer`: conv (Kaiming init), ReLU, then BatchNorm; the conv has a bias only without BN.

    The child indices (0 conv, 1 ReLU, 2 BN) are fastai's, so its saved weights map key for key.
    """
    conv = nn.Conv2d(cin, cout, k, padding=(k - 1) // 2, bias=not batchnorm)
    nn.init.kaiming_normal_(conv.weight)
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)
    layers: list[nn.Module] = [conv]
    if activation:
        layers.append(nn.ReLU(inplace=True))
    if batchnorm:
        layers.append(nn.BatchNorm2d(cout))
    return nn.Sequential(*layers)


def _fastai_batchnorm(channels: int) -> nn.BatchNorm2d:
    bn = nn.BatchNorm2d(channels)
    nn.init.constant_(bn.bias, 1e-3)  # fastai's batchnorm_2d
    return bn


class PixelShuffleUp(nn.Module):
    """x2 upsampling by a 1x1 conv to 4x channels and a pixel shuffle, ICNR-initialised (Aitken et al. 2017):
    the four sub-pixel filters start equal, so an untrained layer upsamples without checkerboard artefacts."""

    def __init__(self, cin: int, cout: int | None = None, *, batchnorm: bool = False) -> None:
        super().__init__()
        cout = cout or cin
        self.conv = fastai_conv(cin, cout * 4, k=1, batchnorm=batchnorm, activation=False)
        with torch.no_grad():
            base = torch.empty(cout, cin, 1, 1)
            nn.init.kaiming_normal_(base)
            self.conv[0].weight.copy_(base.repeat_interleave(4, dim=0))
        self.shuf = nn.PixelShuffle(2)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.shuf(self.relu(self.conv(x)))


class DynamicUnetBlock(nn.Module):
    """fastai `UnetBlock`: pixel-shuffle the deeper map to half its channels, concatenate the BatchNorm'ed skip,
    ReLU, two 3x3 convs (the last block halves the channels)."""

    def __init__(self, up_channels: int, skip_channels: int, *, final: bool, batchnorm: bool) -> None:
        super().__init__()
        self.shuf = PixelShuffleUp(up_channels, up_channels // 2, batchnorm=batchnorm)
        self.bn = _fastai_batchnorm(skip_channels)
        cin = up_channels // 2 + skip_channels
        self.out_channels = cin // 2 if final else cin
        self.conv1 = fastai_conv(cin, self.out_channels, batchnorm=batchnorm)
        self.conv2 = fastai_conv(self.out_channels, self.out_channels, batchnorm=batchnorm)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        up = self.shuf(x)
        if up.shape[-2:] != skip.shape[-2:]:
            up = F.interpolate(up, size=skip.shape[-2:], mode="nearest")
        return self.conv2(self.conv1(self.relu(torch.cat([up, self.bn(skip)], 1))))


class CrossResBlock(nn.Module):
    """fastai `res_block(bottle=True)` after the `last_cross` concatenation of the input image."""

    def __init__(self, channels: int, *, batchnorm: bool) -> None:
        super().__init__()
        inner = channels // 2
        self.layers = nn.ModuleList(
            [fastai_conv(channels, inner, batchnorm=batchnorm), fastai_conv(inner, channels, batchnorm=batchnorm)]
        )
        if batchnorm:  # fastai's NormType.BatchZero: the block starts as the identity
            nn.init.zeros_(self.layers[1][2].weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.layers[1](self.layers[0](x))


class DynamicUnetDecoder(nn.Module):
    """fastai v1 `DynamicUnet` over FeatureBackbone taps, as arcgis.learn's UnetClassifier builds it
    (`unet_learner(..., bottle=True, last_cross=True)`, no BatchNorm in the decoder convs).

    BatchNorm + ReLU on the deepest map, a middle block (3x3 convs to 2x and back), then one `UnetBlock` per
    resolution change of the encoder (the deepest tap of each stride, shallow taps of the output stride excluded),
    a last pixel shuffle to the input size, the input image concatenated (`last_cross`), a bottleneck residual
    block and a 1x1 conv to the classes. `fastai_layers` lists the fastai `layers.<i>` index of each part, so a
    saved arcgis.learn U-Net loads key for key.
    """

    needs_input = True

    def __init__(
        self,
        channels: Sequence[int],
        strides: Sequence[int],
        num_outputs: int,
        in_channels: int,
        *,
        batchnorm: bool = False,
        last_cross: bool = True,
    ) -> None:
        super().__init__()
        deep = int(channels[-1])
        self.skips = [i for i in range(len(strides) - 1) if strides[i] < strides[-1] and strides[i + 1] != strides[i]]
        self.bn = _fastai_batchnorm(deep)
        self.middle = nn.Sequential(
            fastai_conv(deep, deep * 2, batchnorm=batchnorm), fastai_conv(deep * 2, deep, batchnorm=batchnorm)
        )
        blocks, cin = [], deep
        for n, index in enumerate(reversed(self.skips)):
            block = DynamicUnetBlock(cin, int(channels[index]), final=n == len(self.skips) - 1, batchnorm=batchnorm)
            blocks.append(block)
            cin = block.out_channels
        self.blocks = nn.ModuleList(blocks)
        shallowest = strides[self.skips[0]] if self.skips else strides[-1]
        self.shuffle = PixelShuffleUp(cin, batchnorm=batchnorm) if shallowest > 1 else None
        self.cross = CrossResBlock(cin + in_channels, batchnorm=batchnorm) if last_cross else None
        self.final = fastai_conv(
            cin + (in_channels if last_cross else 0), num_outputs, k=1, batchnorm=batchnorm, activation=False
        )

    def fastai_layers(self) -> list[tuple[int, str]]:
        """(fastai DynamicUnet `layers` index, our attribute) for every part with weights."""
        parts = [(1, "bn"), (3, "middle")] + [(4 + i, f"blocks.{i}") for i in range(len(self.blocks))]
        index = 4 + len(self.blocks)
        if self.shuffle is not None:
            parts.append((index, "shuffle"))
            index += 1
        if self.cross is not None:
            parts.append((index + 1, "cross"))  # index itself is the MergeLayer (no weights)
            index += 2
        return parts + [(index, "final")]

    def forward(
        self,
        feats: Sequence[torch.Tensor],
        deep: torch.Tensor | None = None,
        size: Sequence[int] | None = None,
        image: torch.Tensor | None = None,
    ) -> torch.Tensor:
        x = self.middle(F.relu(self.bn(feats[-1] if deep is None else deep)))
        for block, index in zip(self.blocks, reversed(self.skips)):
            x = block(x, feats[index])
        if self.shuffle is not None:
            x = self.shuffle(x)
        target = image.shape[-2:] if image is not None else size
        if target is not None and x.shape[-2:] != tuple(target):
            x = F.interpolate(x, size=tuple(target), mode="nearest")
        if self.cross is not None:
            if image is None:
                raise ValueError("DynamicUnetDecoder with last_cross needs the input image")
            x = self.cross(torch.cat([x, image], 1))
        return self.final(x)
