"""Networks of the image-translation model types (pix2pix / CycleGAN papers, arcgis.learn's layouts).

- `SuperResolutionNet`: U-Net decoder over a task backbone, predicting a residual over its input.
- `UnetGenerator`: pix2pix U-Net (stride-2 4x4 convs down, transposed convs up, dropout 0.5 in the
  deepest up blocks, tanh output); depth adapts to the chip size (8 levels at 256 px, fewer below).
- `ResnetGenerator`: CycleGAN generator (reflection pad, 2 downsamplings, `blocks` residual blocks).
- `PatchDiscriminator`: 70x70 PatchGAN (n_layers stride-2 convs), logits per patch.
- `ImagePool`: CycleGAN's history of generated images for the discriminators.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from gpjobs.training.models.decoders import UnetDecoder


def norm_layer(kind: str, channels: int) -> nn.Module:
    if kind == "instance":
        return nn.InstanceNorm2d(channels, affine=False, track_running_stats=False)
    return nn.BatchNorm2d(channels)


def init_gan_weights(module: nn.Module, gain: float = 0.02) -> None:
    """N(0, 0.02) conv weights and N(1, 0.02) norm scales, as both papers' reference code does."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.normal_(m.weight, 0.0, gain)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.normal_(m.weight, 1.0, gain)
            nn.init.zeros_(m.bias)


class SuperResolutionNet(nn.Module):
    """backbone -> U-Net decoder -> input + residual (the decoder's last conv starts at zero, so an
    untrained net returns its (upsampled) input and training only has to learn the missing detail)."""

    def __init__(self, backbone: nn.Module, channels: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = UnetDecoder(backbone.out_channels, channels)
        last = self.head.final[-1]
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = list(self.backbone(x).values())
        return x + self.head(feats, None, x.shape[-2:])


def unet_depth(chip_size: Sequence[int], most: int = 8) -> int:
    """Down levels of the pix2pix U-Net: 8 for 256 px chips, fewer so the bottleneck stays >= 1 px."""
    return max(2, min(most, int(math.floor(math.log2(max(2, min(chip_size)))))))


class _Down(nn.Module):
    def __init__(self, cin: int, cout: int, norm: str, use_norm: bool = True) -> None:
        super().__init__()
        self.act = nn.LeakyReLU(0.2, inplace=False)
        self.conv = nn.Conv2d(cin, cout, 4, 2, 1, bias=not use_norm or norm == "instance")
        self.norm = norm_layer(norm, cout) if use_norm else nn.Identity()

    def forward(self, x: torch.Tensor, first: bool = False) -> torch.Tensor:
        return self.norm(self.conv(x if first else self.act(x)))


class _Up(nn.Module):
    def __init__(self, cin: int, cout: int, norm: str, dropout: bool) -> None:
        super().__init__()
        self.conv = nn.ConvTranspose2d(cin, cout, 4, 2, 1, bias=norm == "instance")
        self.norm = norm_layer(norm, cout)
        self.drop = nn.Dropout(0.5) if dropout else nn.Identity()

    def forward(self, x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
        y = self.conv(F.relu(x))
        if tuple(y.shape[-2:]) != tuple(size):  # odd chip sizes: match the skip exactly
            y = F.interpolate(y, size=tuple(size), mode="bilinear", align_corners=False)
        return self.drop(self.norm(y))


class UnetGenerator(nn.Module):
    """pix2pix generator: `depth` encoder levels (filters ngf, 2ngf, 4ngf, 8ngf...) with skips, tanh output."""

    def __init__(self, in_channels: int, out_channels: int, depth: int = 8, ngf: int = 64, norm: str = "batch") -> None:
        super().__init__()
        widths = [ngf * min(8, 2**i) for i in range(depth)]
        self.downs = nn.ModuleList()
        cin = in_channels
        for i, w in enumerate(widths):
            # no norm on the outermost and the innermost level (the 1x1 bottleneck of the reference code)
            self.downs.append(_Down(cin, w, norm, use_norm=0 < i < depth - 1))
            cin = w
        self.ups = nn.ModuleList()
        for i in reversed(range(1, depth)):
            cin_up = widths[i] if i == depth - 1 else widths[i] * 2
            # dropout in the three deepest up blocks below the innermost (reference: num_downs - 5 blocks)
            self.ups.append(_Up(cin_up, widths[i - 1], norm, dropout=depth - 1 - i in (1, 2, 3)))
        self.out = nn.ConvTranspose2d(widths[0] * 2, out_channels, 4, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips, h = [], x
        for i, down in enumerate(self.downs):
            h = down(h, first=i == 0)
            skips.append(h)
        for up, skip in zip(self.ups, reversed(skips[:-1])):
            h = torch.cat([up(h, skip.shape[-2:]), skip], 1)
        y = self.out(F.relu(h))
        if tuple(y.shape[-2:]) != tuple(x.shape[-2:]):
            y = F.interpolate(y, size=x.shape[-2:], mode="bilinear", align_corners=False)
        return torch.tanh(y)


class _ResBlock(nn.Module):
    def __init__(self, channels: int, norm: str) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.ReflectionPad2d(1),
            nn.Conv2d(channels, channels, 3, bias=norm == "instance"),
            norm_layer(norm, channels),
            nn.ReLU(True),
            nn.ReflectionPad2d(1),
            nn.Conv2d(channels, channels, 3, bias=norm == "instance"),
            norm_layer(norm, channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class ResnetGenerator(nn.Module):
    """CycleGAN generator: c7s1-ngf, d2ngf, d4ngf, `blocks` x R4ngf, u2ngf, ungf, c7s1-out, tanh
    (`downsamplings` 2); with more downsamplings it is pix2pixHD's global generator. The last two layers
    of `model` are the output head (a local enhancer drops them and reads the features)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        blocks: int = 9,
        ngf: int = 64,
        norm: str = "instance",
        downsamplings: int = 2,
    ) -> None:
        super().__init__()
        bias = norm == "instance"
        layers: list[nn.Module] = [
            nn.ReflectionPad2d(3),
            nn.Conv2d(in_channels, ngf, 7, bias=bias),
            norm_layer(norm, ngf),
            nn.ReLU(True),
        ]
        for i in range(downsamplings):
            mult = 2**i
            layers += [
                nn.Conv2d(ngf * mult, ngf * mult * 2, 3, 2, 1, bias=bias),
                norm_layer(norm, ngf * mult * 2),
                nn.ReLU(True),
            ]
        layers += [_ResBlock(ngf * 2**downsamplings, norm) for _ in range(blocks)]
        for i in range(downsamplings):
            mult = 2 ** (downsamplings - i)
            layers += [
                nn.ConvTranspose2d(ngf * mult, ngf * mult // 2, 3, 2, 1, output_padding=1, bias=bias),
                norm_layer(norm, ngf * mult // 2),
                nn.ReLU(True),
            ]
        layers += [nn.ReflectionPad2d(3), nn.Conv2d(ngf, out_channels, 7)]
        self.model = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.model(x)
        if tuple(y.shape[-2:]) != tuple(x.shape[-2:]):  # chips not divisible by 4
            y = F.interpolate(y, size=x.shape[-2:], mode="bilinear", align_corners=False)
        return torch.tanh(y)


class PatchDiscriminator(nn.Module):
    """PatchGAN: C64-C128-C256-C512 (4x4 convs, LeakyReLU 0.2), 1-channel logit map."""

    def __init__(self, in_channels: int, ndf: int = 64, n_layers: int = 3, norm: str = "batch") -> None:
        super().__init__()
        bias = norm == "instance"
        layers: list[nn.Module] = [nn.Conv2d(in_channels, ndf, 4, 2, 1), nn.LeakyReLU(0.2, True)]
        mult = 1
        for n in range(1, n_layers + 1):
            prev, mult = mult, min(2**n, 8)
            stride = 2 if n < n_layers else 1
            layers += [
                nn.Conv2d(ndf * prev, ndf * mult, 4, stride, 1, bias=bias),
                norm_layer(norm, ndf * mult),
                nn.LeakyReLU(0.2, True),
            ]
        layers += [nn.Conv2d(ndf * mult, 1, 4, 1, 1)]
        self.model = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


def patch_layers(chip_size: Sequence[int], wanted: int = 3) -> int:
    """PatchGAN depth that still leaves a logit map on small chips (each layer halves; the tail needs ~8 px)."""
    layers = wanted
    while layers > 1 and min(chip_size) / 2**layers < 4:
        layers -= 1
    return layers


class ImagePool:
    """Keeps up to `size` generated images; half the time the discriminator sees an older one (CycleGAN)."""

    def __init__(self, size: int = 50) -> None:
        self.size = size
        self.images: list[torch.Tensor] = []

    def query(self, images: torch.Tensor) -> torch.Tensor:
        if self.size <= 0:
            return images
        out = []
        for image in images.detach():
            image = image[None]
            if len(self.images) < self.size:
                self.images.append(image)
                out.append(image)
            elif random.random() < 0.5:
                i = random.randrange(self.size)
                out.append(self.images[i].clone())
                self.images[i] = image
            else:
                out.append(image)
        return torch.cat(out, 0)


class GanLoss(nn.Module):
    """Adversarial loss against a real/fake label: LSGAN (MSE) or the original BCE-with-logits."""

    def __init__(self, lsgan: bool = True) -> None:
        super().__init__()
        self.lsgan = lsgan

    def forward(self, logits: torch.Tensor, real: bool) -> torch.Tensor:
        target = torch.ones_like(logits) if real else torch.zeros_like(logits)
        if self.lsgan:
            return F.mse_loss(logits.float(), target.float())
        return F.binary_cross_entropy_with_logits(logits.float(), target.float())


class LocalEnhancer(nn.Module):
    """pix2pixHD generator with one local enhancer: the global generator (without its output head) runs on
    the half-resolution chip, its features are added to the full-resolution branch, which finishes."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        ngf: int = 32,
        global_downsamplings: int = 3,
        global_blocks: int = 9,
        local_blocks: int = 3,
        norm: str = "instance",
    ) -> None:
        super().__init__()
        bias = norm == "instance"
        full = ResnetGenerator(in_channels, out_channels, global_blocks, ngf * 2, norm, global_downsamplings)
        self.global_features = nn.Sequential(*list(full.model)[:-2])  # ngf * 2 channels at half resolution
        self.down = nn.Sequential(
            nn.ReflectionPad2d(3),
            nn.Conv2d(in_channels, ngf, 7, bias=bias),
            norm_layer(norm, ngf),
            nn.ReLU(True),
            nn.Conv2d(ngf, ngf * 2, 3, 2, 1, bias=bias),
            norm_layer(norm, ngf * 2),
            nn.ReLU(True),
        )
        self.up = nn.Sequential(
            *[_ResBlock(ngf * 2, norm) for _ in range(local_blocks)],
            nn.ConvTranspose2d(ngf * 2, ngf, 3, 2, 1, output_padding=1, bias=bias),
            norm_layer(norm, ngf),
            nn.ReLU(True),
            nn.ReflectionPad2d(3),
            nn.Conv2d(ngf, out_channels, 7),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        coarse = self.global_features(F.avg_pool2d(x, 3, stride=2, padding=1, count_include_pad=False))
        fine = self.down(x)
        if coarse.shape[-2:] != fine.shape[-2:]:
            coarse = F.interpolate(coarse, size=fine.shape[-2:], mode="bilinear", align_corners=False)
        y = self.up(fine + coarse)
        if tuple(y.shape[-2:]) != tuple(x.shape[-2:]):
            y = F.interpolate(y, size=x.shape[-2:], mode="bilinear", align_corners=False)
        return torch.tanh(y)


class MultiscaleDiscriminator(nn.Module):
    """pix2pixHD: `scales` PatchGANs on the input and its 2x, 4x... average-pooled versions; each returns
    its intermediate feature maps (for the feature-matching loss) with the logit map last."""

    def __init__(
        self,
        in_channels: int,
        chip_size: Sequence[int],
        ndf: int = 64,
        n_layers: int = 3,
        scales: int = 2,
        norm: str = "instance",
    ) -> None:
        super().__init__()
        self.nets = nn.ModuleList()
        for s in range(scales):
            size = [max(1, c // 2**s) for c in chip_size]
            layers = PatchDiscriminator(in_channels, ndf, patch_layers(size, n_layers), norm).model
            groups, current = [], []
            for layer in layers:
                current.append(layer)
                if isinstance(layer, nn.LeakyReLU) or layer is layers[-1]:
                    groups.append(nn.Sequential(*current))
                    current = []
            self.nets.append(nn.ModuleList(groups))

    def forward(self, x: torch.Tensor) -> list[list[torch.Tensor]]:
        outputs = []
        for s, groups in enumerate(self.nets):
            if s:
                x = F.avg_pool2d(x, 3, stride=2, padding=1, count_include_pad=False)
            feats, h = [], x
            for group in groups:
                h = group(h)
                feats.append(h)
            outputs.append(feats)
        return outputs
