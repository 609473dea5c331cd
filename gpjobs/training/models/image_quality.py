"""Image-translation helpers: pixel scale of the normalised data, degradation, PSNR and SSIM.

Images arrive normalised (`DataInfo.normalization`: x01 = scaled 0..1 band value, n = (x01 - mean) / std).
Quality metrics compare pictures, so they are computed on x01 clamped to 0..1 (data range 1), per chip,
then averaged over the validation set.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


class PixelScale:
    """Converts between the normalised model space and the 0..1 scaled band values of one DataInfo."""

    def __init__(self, info) -> None:
        norm = info.normalization
        self.mean = torch.tensor(norm.mean, dtype=torch.float32).view(1, -1, 1, 1)
        self.std = torch.tensor(norm.std, dtype=torch.float32).view(1, -1, 1, 1)
        self.lo = torch.tensor(norm.band_min, dtype=torch.float32).view(1, -1, 1, 1)
        self.hi = torch.tensor(norm.band_max, dtype=torch.float32).view(1, -1, 1, 1)

    def _on(self, t: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        return value.to(device=t.device, dtype=t.dtype)

    def to01(self, normalised: torch.Tensor) -> torch.Tensor:
        """Normalised (B, C, H, W) -> scaled band values (0..1 inside the export's band range)."""
        return normalised * self._on(normalised, self.std) + self._on(normalised, self.mean)

    def from01(self, x01: torch.Tensor) -> torch.Tensor:
        return (x01 - self._on(x01, self.mean)) / self._on(x01, self.std)

    def to_native(self, x01: torch.Tensor) -> torch.Tensor:
        """0..1 scaled values -> the export's band units (e.g. 0..255 for 8-bit chips)."""
        lo, hi = self._on(x01, self.lo), self._on(x01, self.hi)
        return lo + x01.clamp(0, 1) * (hi - lo)


def degrade(images: torch.Tensor, factor: int) -> torch.Tensor:
    """Super-resolution input: downsample by `factor` (anti-aliased) and upsample back to the same size.

    Both steps are linear with weights summing to one, so doing them in the normalised space equals doing
    them on the raw bands and normalising afterwards.
    """
    if factor <= 1:
        return images
    h, w = images.shape[-2:]
    low = F.interpolate(
        images, size=(max(1, h // factor), max(1, w // factor)), mode="bilinear", align_corners=False, antialias=True
    )
    return F.interpolate(low, size=(h, w), mode="bilinear", align_corners=False)


def psnr(pred01: torch.Tensor, target01: torch.Tensor) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB per chip (B,), data range 1; identical chips are capped at 100 dB."""
    mse = (pred01.clamp(0, 1) - target01.clamp(0, 1)).float().pow(2).flatten(1).mean(1)
    return (10 * torch.log10(1.0 / mse.clamp_min(1e-10))).clamp(max=100.0)


def _gaussian_window(size: int, sigma: float, device, dtype) -> torch.Tensor:
    coords = torch.arange(size, device=device, dtype=dtype) - (size - 1) / 2
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    g = g / g.sum()
    return g[:, None] * g[None, :]


def ssim(pred01: torch.Tensor, target01: torch.Tensor, window: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """Structural similarity per chip (B,) (Wang et al. 2004: Gaussian window 11 / sigma 1.5, K1 0.01,
    K2 0.03, data range 1), averaged over channels and valid window positions. Chips smaller than the
    window use a window of the chip's size."""
    x = pred01.clamp(0, 1).float()
    y = target01.clamp(0, 1).float()
    c = x.shape[1]
    size = min(window, x.shape[-2], x.shape[-1])
    sig = sigma * size / window
    kernel = _gaussian_window(size, sig, x.device, x.dtype).expand(c, 1, size, size).contiguous()

    def blur(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(t, kernel, groups=c)

    mu_x, mu_y = blur(x), blur(y)
    sxx = blur(x * x) - mu_x**2
    syy = blur(y * y) - mu_y**2
    sxy = blur(x * y) - mu_x * mu_y
    c1, c2 = 0.01**2, 0.03**2
    value = ((2 * mu_x * mu_y + c1) * (2 * sxy + c2)) / ((mu_x**2 + mu_y**2 + c1) * (sxx + syy + c2))
    return value.flatten(1).mean(1)


class QualityMeter:
    """Sums of per-chip PSNR/SSIM over a validation pass (kept on the device; one sync at the end)."""

    def __init__(self) -> None:
        self.sums: dict[str, torch.Tensor] = {}
        self.count = 0

    def update(self, prefix: str, pred01: torch.Tensor, target01: torch.Tensor) -> None:
        for name, fn in (("PSNR", psnr), ("SSIM", ssim)):
            key = f"{name}{prefix}"
            value = fn(pred01, target01).sum()
            self.sums[key] = self.sums[key] + value if key in self.sums else value

    def add_count(self, n: int) -> None:
        self.count += n

    def result(self) -> dict[str, float]:
        n = max(self.count, 1)
        out = {k: float(v) / n for k, v in self.sums.items()}
        return {k: (v if math.isfinite(v) else 0.0) for k, v in out.items()}
