"""`FeatureBackbone` (a network as stages whose outputs are feature taps) and the multispectral first conv.

A leaf module: the backbone factory (`backbones.py`) and Darknet-53 (`models/detection/darknet.py`) both build
on it, so neither has to import the other.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator

import torch
from torch import nn


class FeatureBackbone(nn.Module):
    """Stages run in order; the output of each stage is one tap.

    `source_names` maps each state-dict key of this module to the key the same tensor has in the network it was
    cut from (torchvision's names for torchvision families), and `source_children` / `source_features` list that
    network's top-level children and its `features` children in order: what is needed to read weights saved
    under other layouts (fastai's `create_body`, torchvision detectors) onto these stages.
    """

    def __init__(
        self,
        name: str,
        stages: OrderedDict[str, nn.Module],
        in_channels: int,
        first_conv_name: str,
        first_conv_adapted: bool,
        *,
        source_names: dict[str, str] | None = None,
        source_children: list[str] | None = None,
        source_features: list[str] | None = None,
        output_stride: int = 32,
    ) -> None:
        super().__init__()
        self.name = name
        self.stages = nn.ModuleDict(stages)
        self.in_channels = in_channels
        self.first_conv_name = first_conv_name  # dotted path inside this module
        self.first_conv_adapted = first_conv_adapted
        self.source_names = dict(source_names or {k: k for k in self.state_dict()})
        self.source_children = list(source_children or [])
        self.source_features = list(source_features or [])
        self.output_stride = output_stride
        self.out_channels, self.strides = self.probe()

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        features: OrderedDict[str, torch.Tensor] = OrderedDict()
        for tap, stage in self.stages.items():
            x = stage(x)
            features[tap] = x
        return features

    @property
    def tap_names(self) -> list[str]:
        return list(self.stages.keys())

    def first_conv(self) -> nn.Conv2d:
        return self.get_submodule(self.first_conv_name)  # type: ignore[return-value]

    def first_conv_parameters(self) -> Iterator[nn.Parameter]:
        return self.first_conv().parameters()

    @torch.no_grad()
    def probe(self) -> tuple[list[int], list[int]]:
        # One tiny forward in eval mode (running BN stats untouched) tells channels and strides exactly.
        was_training = self.training
        self.eval()
        size = 64
        feats = self.forward(torch.zeros(1, self.in_channels, size, size))
        self.train(was_training)
        return [f.shape[1] for f in feats.values()], [size // f.shape[-1] for f in feats.values()]


def adapt_first_conv(conv: nn.Conv2d, in_channels: int, pretrained: bool) -> tuple[nn.Conv2d, bool]:
    """`conv` for `in_channels` inputs: unchanged for its own band count, else rebuilt from its RGB filters."""
    if in_channels == conv.in_channels:
        return conv, False
    # torch annotates a Conv2d's own kernel_size/stride/padding/dilation as tuple[int, ...]; they are pairs
    new = nn.Conv2d(
        in_channels,
        conv.out_channels,
        conv.kernel_size,
        conv.stride,  # type: ignore[arg-type]
        conv.padding,
        conv.dilation,
        conv.groups,
        conv.bias is not None,
    )  # type: ignore[arg-type]
    if pretrained:
        with torch.no_grad():
            new.weight.copy_(spread_band_filters(conv.weight, in_channels))
            if conv.bias is not None:
                assert new.bias is not None  # made with a bias just above
                new.bias.copy_(conv.bias)
    return new, True


def spread_band_filters(weight: torch.Tensor, in_channels: int) -> torch.Tensor:
    """First-conv filters [out, bands, k, k] spread over `in_channels` bands.

    Cycling R,G,B over the bands keeps the learned edge detectors; the bands/N factor keeps the summed response
    (and so the following BatchNorm statistics) at the original scale.
    """
    idx = torch.arange(in_channels) % weight.shape[1]
    return weight[:, idx] * (weight.shape[1] / in_channels)
