"""The SIAMMASK network (Wang et al. 2019, "Fast Online Object Tracking and Segmentation") and its tracker step.

  - trunk: a ResNet's stem and layers 1-3, layer 3 at stride 8 (its first block's stride 2 becomes 1 and
    the later blocks' 3x3 convolutions are dilated by 2, as SiamMask/SiamRPN++ do), shared by the template
    (exemplar x exemplar) and the search crop (instance x instance); adjust layer: 1x1 conv + BN to 256;
  - three depth-wise cross-correlation branches (3x3 convs on both crops, template features as
    per-channel kernels over the search features, 1x1 head): RPN scores (one sigmoid logit per anchor),
    RPN box deltas (4 per anchor), and the mask branch's 256-d "response of a candidate window" (RoW);
  - anchors: k = 5 aspect ratios (0.33, 0.5, 1, 2, 3) of one size (exemplar / 2, the target's size in the
    search crop) at every response cell; response cell j lies at instance / 2 + 8 (j - (R - 1) / 2);
  - refine module (SiamMask "sharp"): the RoW vector is deconvolved to the exemplar footprint at stride 8
    and upsampled twice, merged each time with the search features of layer 2, layer 1 and the stem
    cropped (RoIAlign) to the same footprint; output: mask logits at stride 2 over an exemplar-sized
    square centred on the RoW's cell. (Crops of feature maps use grid_sample, as the image crops do, not
    torchvision's roi_align: the traced module then needs torch alone.)

Loss (per pair): anchors with IoU > 0.6 to the target are positive (the best anchor always), < 0.3
negative; balanced BCE on the scores, smooth-L1 on the positive anchors' deltas, BCE on the mask of the
best anchor's cell; weights 1, 1.2, 2 (SiamMask weights its mask loss highest).

`forward(template_frame, template_box, frame, previous_box)` is one tracking step, tensor operations only
(so the traced TorchScript module tracks): crop the template around its box with context, crop the search
region around the previous box, score every anchor, penalise changes of size and aspect ratio
(`penalty_k`) and distance (cosine window, `window_influence`), take the best box and paste the best
cell's refined mask back into the frame. Returns (box (4,), score (), mask probability (H, W)).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import box_iou

from gpjobs.training.data.tracking import box_centers, context_side, crop_square, to_crop

RATIOS = (0.33, 0.5, 1.0, 2.0, 3.0)
STRIDE = 8
WIDTH = 256
LOSS_WEIGHTS = {"cls": 1.0, "loc": 1.2, "mask": 2.0}
POS_IOU, NEG_IOU = 0.6, 0.3


def _cbr(cin: int, cout: int, k: int, padding: int = 0) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, k, padding=padding, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)
    )


def stride8_layer3(layer3: nn.Sequential) -> None:
    """Layer 3 at stride 8: no stride in its first block, dilation 2 in the 3x3 convolutions after it."""
    for i, block in enumerate(layer3):
        for conv in (m for m in block.modules() if isinstance(m, nn.Conv2d)):
            if conv.stride == (2, 2):
                conv.stride = (1, 1)
            elif i > 0 and conv.kernel_size == (3, 3):
                conv.dilation, conv.padding = (2, 2), (2, 2)


def depthwise_xcorr(search: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    b, c, h, w = search.shape
    out = F.conv2d(search.reshape(1, b * c, h, w), kernel.reshape(b * c, 1, *kernel.shape[-2:]), groups=b * c)
    return out.reshape(b, c, *out.shape[-2:])


class DepthwiseXCorr(nn.Module):
    def __init__(self, cin: int, hidden: int, cout: int) -> None:
        super().__init__()
        self.kernel = _cbr(cin, hidden, 3)
        self.search = _cbr(cin, hidden, 3)
        self.head = nn.Sequential(_cbr(hidden, hidden, 1), nn.Conv2d(hidden, cout, 1))

    def forward(self, z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return self.head(depthwise_xcorr(self.search(x), self.kernel(z)))


class Refine(nn.Module):
    """RoW vector + search features around its footprint -> mask logits (exemplar / 2 square)."""

    def __init__(self, channels: list[int], exemplar: int) -> None:
        super().__init__()
        c0, c1, c2 = channels[0], channels[1], channels[2]
        self.side8 = exemplar // STRIDE
        self.deconv = nn.ConvTranspose2d(WIDTH, 32, self.side8)
        self.skip2, self.skip1, self.skip0 = _cbr(c2, 32, 3, 1), _cbr(c1, 16, 3, 1), _cbr(c0, 8, 3, 1)
        self.merge2, self.merge1, self.merge0 = _cbr(64, 16, 3, 1), _cbr(32, 8, 3, 1), _cbr(16, 8, 3, 1)
        self.out = nn.Conv2d(8, 1, 3, padding=1)

    def forward(self, row: torch.Tensor, feats: list[torch.Tensor], centers: torch.Tensor, side: float) -> torch.Tensor:
        """Footprints: squares of `side` search-crop pixels around `centers` (N, 2), one per crop of the batch."""
        x = self.deconv(row[:, :, None, None])
        size = self.side8
        sides = torch.full((len(centers),), side, device=centers.device)
        levels = (
            (self.skip2, self.merge2, feats[2], 8),
            (self.skip1, self.merge1, feats[1], 4),
            (self.skip0, self.merge0, feats[0], 2),
        )
        for skip, merge, feat, stride in levels:
            # RoIAlign with one bilinear sample per cell, written with grid_sample: the TorchScript module must
            # run where only torch is installed (torchvision's roi_align is a torchvision operator)
            crop = crop_square(feat, centers / stride, sides / stride, size)
            x = merge(torch.cat([x, skip(crop)], 1))
            if stride > 2:
                size *= 2
                x = F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)
        return self.out(x)[:, 0]


class SiamMaskNet(nn.Module):
    def __init__(
        self,
        backbone: nn.Module,
        exemplar: int,
        instance: int,
        *,
        seg_thr: float = 0.35,
        penalty_k: float = 0.04,
        window_influence: float = 0.4,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        channels = list(backbone.out_channels)
        self.exemplar, self.instance = exemplar, instance
        self.seg_thr, self.penalty_k, self.window_influence = seg_thr, penalty_k, window_influence
        self.adjust = nn.Sequential(nn.Conv2d(channels[-1], WIDTH, 1, bias=False), nn.BatchNorm2d(WIDTH))
        k = len(RATIOS)
        self.rpn_cls = DepthwiseXCorr(WIDTH, WIDTH, k)
        self.rpn_loc = DepthwiseXCorr(WIDTH, WIDTH, 4 * k)
        self.mask_corr = DepthwiseXCorr(WIDTH, WIDTH, WIDTH)
        self.refine = Refine(channels[:3], exemplar)
        self.response = instance // STRIDE - exemplar // STRIDE + 1
        self.register_buffer("anchors", self._anchors(), persistent=False)

    def _anchors(self) -> torch.Tensor:
        """(k * R * R, 4) anchors (cx, cy, w, h) in search-crop pixels, anchor-major then row, column."""
        r, base = self.response, self.exemplar / 2
        offsets = self.instance / 2 + STRIDE * (torch.arange(r, dtype=torch.float32) - (r - 1) / 2)
        cy, cx = torch.meshgrid(offsets, offsets, indexing="ij")
        out = []
        for ratio in RATIOS:
            w, h = base / math.sqrt(ratio), base * math.sqrt(ratio)
            out.append(torch.stack([cx, cy, torch.full_like(cx, w), torch.full_like(cx, h)], -1).reshape(-1, 4))
        return torch.cat(out)

    def cell_center(self, cell: torch.Tensor) -> torch.Tensor:
        """(N, 2) crop-pixel centres of response cells given as row * R + column."""
        r = self.response
        row, col = cell // r, cell % r
        offset = self.instance / 2 - STRIDE * (r - 1) / 2
        return torch.stack([offset + STRIDE * col, offset + STRIDE * row], 1).float()

    def pair_outputs(self, z: torch.Tensor, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Template and search crops -> scores (B, k R R), deltas (B, k R R, 4), RoWs, search features."""
        fz, fx = list(self.backbone(z).values()), list(self.backbone(x).values())
        az, ax = self.adjust(fz[-1]), self.adjust(fx[-1])
        b, k = x.shape[0], len(RATIOS)
        scores = self.rpn_cls(az, ax).reshape(b, -1)
        deltas = self.rpn_loc(az, ax).reshape(b, 4, k, -1).permute(0, 2, 3, 1).reshape(b, -1, 4)
        return {"scores": scores, "deltas": deltas, "rows": self.mask_corr(az, ax), "search": fx}

    def masks_at(self, out: dict[str, torch.Tensor], cells: torch.Tensor) -> torch.Tensor:
        """Mask logits (B, exemplar / 2, exemplar / 2) of one response cell per crop."""
        rows = out["rows"].flatten(2)
        b = rows.shape[0]
        row = rows.gather(2, cells.view(b, 1, 1).expand(b, rows.shape[1], 1))[:, :, 0]
        return self.refine(row, out["search"], self.cell_center(cells), float(self.exemplar))

    def decode(self, deltas: torch.Tensor) -> torch.Tensor:
        """Deltas (..., N, 4) -> boxes (cx, cy, w, h) of the anchors."""
        a = self.anchors
        return torch.stack(
            [
                a[:, 0] + deltas[..., 0] * a[:, 2],
                a[:, 1] + deltas[..., 1] * a[:, 3],
                a[:, 2] * torch.exp(deltas[..., 2].clamp(max=4.0)),
                a[:, 3] * torch.exp(deltas[..., 3].clamp(max=4.0)),
            ],
            -1,
        )

    def loss(
        self, z: torch.Tensor, x: torch.Tensor, boxes: torch.Tensor, masks: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """SiamMask's loss for template crops, search crops, target boxes and masks in the search crops."""
        out = self.pair_outputs(z, x)
        a = self.anchors
        corners = torch.cat([a[:, :2] - a[:, 2:] / 2, a[:, :2] + a[:, 2:] / 2], 1)
        iou = box_iou(boxes.float(), corners)  # (B, N)
        best = iou.argmax(1)
        pos = iou > POS_IOU
        pos[torch.arange(len(best), device=best.device), best] = True
        neg = (iou < NEG_IOU) & ~pos
        scores = out["scores"].float()
        bce = F.binary_cross_entropy_with_logits(scores, pos.float(), reduction="none")
        cls = (bce * pos).sum() / pos.sum().clamp_min(1) / 2 + (bce * neg).sum() / neg.sum().clamp_min(1) / 2
        w, h = (boxes[:, 2] - boxes[:, 0]).clamp_min(1.0), (boxes[:, 3] - boxes[:, 1]).clamp_min(1.0)
        cx, cy = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
        target = torch.stack(
            [
                (cx[:, None] - a[:, 0]) / a[:, 2],
                (cy[:, None] - a[:, 1]) / a[:, 3],
                torch.log(w[:, None] / a[:, 2]),
                torch.log(h[:, None] / a[:, 3]),
            ],
            -1,
        )
        smooth = F.smooth_l1_loss(out["deltas"].float(), target, reduction="none", beta=1 / 9).sum(-1)
        loc = (smooth * pos).sum() / pos.sum().clamp_min(1)
        cells = best % (self.response * self.response)
        logits = self.masks_at(out, cells).float()
        center = self.cell_center(cells)
        side = torch.full((len(cells),), float(self.exemplar), device=x.device)
        truth = crop_square(masks[:, None].float(), center, side, logits.shape[-1])[:, 0] > 0.5
        mask = F.binary_cross_entropy_with_logits(logits, truth.float())
        parts = {"cls": cls, "loc": loc, "mask": mask}
        return sum(LOSS_WEIGHTS[k] * v for k, v in parts.items()), parts

    def forward(
        self, template_frame: torch.Tensor, template_box: torch.Tensor, frame: torch.Tensor, previous_box: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        zb, pb = template_box.reshape(1, 4).float(), previous_box.reshape(1, 4).float()
        z = crop_square(template_frame, box_centers(zb), context_side(zb), self.exemplar)
        side = context_side(pb) * (self.instance / self.exemplar)
        center = box_centers(pb)
        x = crop_square(frame, center, side, self.instance)
        out = self.pair_outputs(z, x)
        score = torch.sigmoid(out["scores"][0].float())
        boxes = self.decode(out["deltas"][0].float())  # (N, 4) cx, cy, w, h in crop pixels
        previous = to_crop(pb, center, side, self.instance)[0]
        pw, ph = (previous[2] - previous[0]).clamp_min(1.0), (previous[3] - previous[1]).clamp_min(1.0)

        def change(r: torch.Tensor) -> torch.Tensor:
            return torch.maximum(r, 1.0 / r)

        def size(w: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
            pad = (w + h) / 2
            return torch.sqrt((w + pad) * (h + pad))

        s_c = change(size(boxes[:, 2], boxes[:, 3]) / size(pw, ph))
        r_c = change((pw / ph) / (boxes[:, 2] / boxes[:, 3].clamp_min(1e-3)))
        penalty = torch.exp(-(r_c * s_c - 1) * self.penalty_k)
        r = self.response
        hann = torch.hann_window(r + 2, periodic=False, device=frame.device)[1:-1]
        window = (hann[:, None] * hann[None, :]).flatten().repeat(len(RATIOS))
        pscore = penalty * score * (1 - self.window_influence) + window * self.window_influence
        best = pscore.argmax()
        scale = side[0] / self.instance
        chosen = boxes[best]
        rate = penalty[best] * score[best]  # SiamRPN's size update rate (arcgis.learn's lr = 1.0)
        cx = center[0, 0] + (chosen[0] - self.instance / 2) * scale
        cy = center[0, 1] + (chosen[1] - self.instance / 2) * scale
        w = (pb[0, 2] - pb[0, 0]) * (1 - rate) + chosen[2] * scale * rate
        h = (pb[0, 3] - pb[0, 1]) * (1 - rate) + chosen[3] * scale * rate
        height, width = frame.shape[-2], frame.shape[-1]
        cx, cy = cx.clamp(0, width), cy.clamp(0, height)
        w, h = w.clamp(4.0, float(width)), h.clamp(4.0, float(height))
        box = torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2])
        cell = (best % (r * r)).reshape(1)
        mask = torch.sigmoid(self.masks_at(out, cell).float())  # (1, m, m) over the cell's footprint
        foot = self.cell_center(cell)[0]
        fcx = center[0, 0] + (foot[0] - self.instance / 2) * scale
        fcy = center[0, 1] + (foot[1] - self.instance / 2) * scale
        fside = self.exemplar * scale
        theta = torch.zeros(1, 2, 3, device=frame.device)
        theta[0, 0, 0], theta[0, 0, 2] = width / fside, (width - 2 * fcx) / fside
        theta[0, 1, 1], theta[0, 1, 2] = height / fside, (height - 2 * fcy) / fside
        grid = F.affine_grid(theta, [1, 1, height, width], align_corners=False)
        pasted = F.grid_sample(mask[:, None], grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        return box, score[best], pasted[0, 0]
