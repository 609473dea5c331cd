"""The MAXDEEPLAB network: a small MaX-DeepLab (Wang et al. 2021, "MaX-DeepLab: End-to-End Panoptic
Segmentation with Mask Transformers"), sized for chips of 64-512 px.

  - pixel path: a convolutional stem to stride 4 (32 channels), residual stages to stride 8 (64) and
    stride 16 (WIDTH), then DEPTH dual-path transformer blocks at stride 16;
  - memory path: `n_masks` learned slots of WIDTH channels;
  - dual-path block (pre-norm): axial attention over the pixels (along the height, then along the width,
    each with a learned position embedding), pixel-to-memory attention (pixels read the memory),
    memory-to-pixel + memory-to-memory attention (the memory reads pixels and itself), a feed-forward
    layer on each path;
  - decoder: stride 16 -> 8 -> 4 with the stage-2 and stem features added back;
  - heads: per slot, a class (the data's classes with background at 0, plus "no object" last) and a
    mask embedding; per pixel (stride 4), a mask feature (batch-normalised, as the paper does), a semantic
    class and an instance-discrimination embedding. Mask logits = slot embedding . pixel feature, a
    softmax over the slots gives each pixel its mask ID.

`forward(images)` is the inference: slots whose best class is "no object" or whose class probability is
below `score_thresh` are dropped, each pixel takes the kept slot with the highest mask probability
(the semantic head decides where no slot is kept), and returns (class index map (B, H, W), instance map
(B, H, W): slot + 1 on pixels of "thing" classes, 0 elsewhere), all tensor operations (traceable:
`PanopticDeploy` is the same with the threshold as an input, traced for the package's raster function).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

WIDTH = 128
HEADS = 4
DEPTH = 2
MASK_DIM = 64
INSTANCE_DIM = 32


def _cbr(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class Residual(nn.Module):
    """Two 3x3 convolutions with a (strided 1x1) shortcut."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            _cbr(cin, cout, stride), nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout)
        )
        self.short = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.body(x) + self.short(x))


class AxialAttention(nn.Module):
    """Multi-head self-attention along one axis of a (B, C, H, W) map, with a learned position embedding."""

    def __init__(self, dim: int, length: int, axis: int) -> None:
        super().__init__()
        self.axis = axis  # 2: along the height, 3: along the width
        self.norm = nn.LayerNorm(dim)
        self.position = nn.Parameter(torch.zeros(1, length, dim))
        nn.init.normal_(self.position, std=0.02)
        self.attention = nn.MultiheadAttention(dim, HEADS, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        if self.axis == 2:
            seq = x.permute(0, 3, 2, 1).reshape(b * w, h, c)
        else:
            seq = x.permute(0, 2, 3, 1).reshape(b * h, w, c)
        q = self.norm(seq) + self.position
        out = self.attention(q, q, self.norm(seq), need_weights=False)[0]
        if self.axis == 2:
            out = out.reshape(b, w, h, c).permute(0, 3, 2, 1)
        else:
            out = out.reshape(b, h, w, c).permute(0, 3, 1, 2)
        return x + out


class DualPathBlock(nn.Module):
    def __init__(self, dim: int, grid: tuple[int, int]) -> None:
        super().__init__()
        self.along_h = AxialAttention(dim, grid[0], 2)
        self.along_w = AxialAttention(dim, grid[1], 3)
        self.p_norm, self.m_norm = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.p2m = nn.MultiheadAttention(dim, HEADS, batch_first=True)
        self.m2pm = nn.MultiheadAttention(dim, HEADS, batch_first=True)
        self.p_ffn = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))
        self.m_ffn = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, pixels: torch.Tensor, memory: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, c, h, w = pixels.shape
        pixels = self.along_w(self.along_h(pixels))
        p = pixels.flatten(2).transpose(1, 2)  # (B, HW, C)
        pn, mn = self.p_norm(p), self.m_norm(memory)
        p = p + self.p2m(pn, mn, mn, need_weights=False)[0]
        both = torch.cat([pn, mn], 1)
        memory = memory + self.m2pm(mn, both, both, need_weights=False)[0]
        p = p + self.p_ffn(p)
        memory = memory + self.m_ffn(memory)
        return p.transpose(1, 2).reshape(b, c, h, w), memory


class MaXDeepLabNet(nn.Module):
    def __init__(
        self,
        in_channels: int,
        chip_size: tuple[int, int],
        n_classes: int,
        n_masks: int,
        thing_classes: list[int],
        score_thresh: float = 0.5,
    ) -> None:
        """`n_classes` includes background (index 0); the class head has one more output: "no object"."""
        super().__init__()
        self.stem = nn.Sequential(_cbr(in_channels, 16, 2), _cbr(16, 32, 2))
        self.stage2 = Residual(32, 64, 2)
        self.stage3 = Residual(64, WIDTH, 2)
        grid = (chip_size[0] // 16, chip_size[1] // 16)
        self.blocks = nn.ModuleList(DualPathBlock(WIDTH, grid) for _ in range(DEPTH))
        self.memory = nn.Parameter(torch.randn(1, n_masks, WIDTH) * 0.02)
        self.up8 = nn.Sequential(nn.Conv2d(WIDTH, 64, 1, bias=False), nn.BatchNorm2d(64))
        self.fuse8 = _cbr(64, 64)
        self.up4 = nn.Sequential(nn.Conv2d(64, 32, 1, bias=False), nn.BatchNorm2d(32))
        self.fuse4 = _cbr(32, 64)
        self.mask_feature = nn.Sequential(nn.Conv2d(64, MASK_DIM, 1, bias=False), nn.BatchNorm2d(MASK_DIM))
        self.semantic = nn.Conv2d(64, n_classes, 1)
        self.instance = nn.Conv2d(64, INSTANCE_DIM, 1)
        self.classify = nn.Sequential(nn.Linear(WIDTH, WIDTH), nn.ReLU(inplace=True), nn.Linear(WIDTH, n_classes + 1))
        self.mask_embed = nn.Sequential(nn.Linear(WIDTH, WIDTH), nn.ReLU(inplace=True), nn.Linear(WIDTH, MASK_DIM))
        self.n_classes, self.n_masks, self.score_thresh = n_classes, n_masks, score_thresh
        is_thing = torch.zeros(n_classes, dtype=torch.bool)
        is_thing[thing_classes] = True
        self.register_buffer("is_thing", is_thing, persistent=False)

    def outputs(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Training outputs: mask logits (B, N, H/4, W/4), class logits (B, N, K+1), semantic logits
        (B, K, H/4, W/4), instance embedding (B, INSTANCE_DIM, H/4, W/4)."""
        s4 = self.stem(images)
        s8 = self.stage2(s4)
        pixels = self.stage3(s8)
        memory = self.memory.expand(images.shape[0], -1, -1)
        for block in self.blocks:
            pixels, memory = block(pixels, memory)
        x = self.fuse8(F.interpolate(self.up8(pixels), size=s8.shape[-2:], mode="bilinear", align_corners=False) + s8)
        x = self.fuse4(F.interpolate(self.up4(x), size=s4.shape[-2:], mode="bilinear", align_corners=False) + s4)
        features = self.mask_feature(x)
        masks = torch.einsum("bnd,bdhw->bnhw", self.mask_embed(memory), features)
        return {
            "masks": masks,
            "classes": self.classify(memory),
            "semantic": self.semantic(x),
            "instance": self.instance(x),
        }

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.postprocess(self.outputs(images), images.shape[-2:])

    def postprocess(
        self, out: dict[str, torch.Tensor], size: Sequence[int], score_thresh: float | torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(class index map, instance map) at `size` from the training outputs (see the module docstring);
        `score_thresh` (default: the model's) may be a tensor, so that the traced network takes it as an input."""
        size = tuple(size)
        probs = torch.softmax(out["classes"].float(), -1)  # (B, N, K+1)
        score, cls = probs.max(-1)
        thresh = self.score_thresh if score_thresh is None else score_thresh
        keep = (cls < self.n_classes) & (score >= thresh)
        logits = F.interpolate(out["masks"].float(), size=size, mode="bilinear", align_corners=False)
        logits = logits.masked_fill(~keep[:, :, None, None], -1e4)
        slot = logits.argmax(1)  # (B, H, W)
        semantic = F.interpolate(out["semantic"].float(), size=size, mode="bilinear", align_corners=False).argmax(1)
        kept = keep.gather(1, slot.flatten(1)).view_as(slot)
        slot_class = cls.clamp(max=self.n_classes - 1).gather(1, slot.flatten(1)).view_as(slot)
        classes = torch.where(kept, slot_class, semantic)
        instances = torch.where(kept & self.is_thing[classes], slot + 1, torch.zeros_like(slot))
        return classes, instances


class PanopticDeploy(nn.Module):
    """What a package's GpjobsPanopticSegmenter.py runs: (images, slot score threshold) -> class index map
    (B, H, W), instance map (B, H, W; slot + 1 on "thing" pixels, else 0) and each slot's class probability
    (B, N), the instances' confidence. The same arithmetic as `MaXDeepLabNet.forward`, traced whole."""

    def __init__(self, net: MaXDeepLabNet) -> None:
        super().__init__()
        self.net = net

    def forward(
        self, images: torch.Tensor, score_thresh: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        out = self.net.outputs(images)
        classes, instances = self.net.postprocess(out, images.shape[-2:], score_thresh)
        return classes, instances, torch.softmax(out["classes"].float(), -1).max(-1)[0]

    def trace(self, example: torch.Tensor) -> torch.jit.ScriptModule:
        return torch.jit.trace(self, (example, torch.tensor(self.net.score_thresh)), check_trace=False, strict=False)
