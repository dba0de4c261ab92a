"""PSNR and SSIM per image on 8-bit pixels, batched on the device, matching scikit-image's definitions.

PSNR: `10 log10(255^2 / MSE)` per image (scikit-image `peak_signal_noise_ratio(data_range=255)`), averaged over
images. The reference script's v1 computed one PSNR over a whole batch array instead; per-image is the standard.
SSIM: scikit-image `structural_similarity(data_range=255, channel_axis=-1)` defaults: 7x7 uniform window, sample
covariance (N/(N-1)), K1 = 0.01, K2 = 0.03, the map cropped by 3 pixels on each side, averaged over channels.
"""
from __future__ import annotations

from abc import abstractmethod

import torch
import torch.nn.functional as F

from openmagvit2.eval.batch import EvalBatch, Metric

SSIM_WINDOW = 7
SSIM_K1, SSIM_K2 = 0.01, 0.03
DATA_RANGE = 255.0
# An exact reconstruction has MSE 0 and infinite PSNR; one such image (e.g. a black frame) would make the mean
# infinite, so the per-image MSE is floored at 1e-10, i.e. PSNR is capped at ~148 dB.
MIN_MSE = 1e-10


def psnr_per_image(images: torch.Tensor, reconstructions: torch.Tensor) -> torch.Tensor:
    """`b c h w` uint8 (or 0..255 floats) x2 -> `b` PSNR in dB, in float64."""
    diff = images.double() - reconstructions.double()
    mse = diff.square().flatten(1).mean(dim=1).clamp_min(MIN_MSE)
    return 10.0 * torch.log10(DATA_RANGE**2 / mse)


def ssim_per_image(images: torch.Tensor, reconstructions: torch.Tensor) -> torch.Tensor:
    """`b c h w` uint8 (or 0..255 floats) x2 -> `b` mean SSIM, in float64 (within 1e-10 of scikit-image)."""
    if min(images.shape[-2:]) < SSIM_WINDOW:
        raise ValueError(f"SSIM needs images of at least {SSIM_WINDOW}x{SSIM_WINDOW} pixels, got "
                         f"{tuple(images.shape[-2:])}; evaluate at a larger data.image_size or drop ssim.")
    x, y = images.double(), reconstructions.double()

    def window_mean(t: torch.Tensor) -> torch.Tensor:
        # A valid (unpadded) box filter gives exactly scikit-image's filtered map after its border crop.
        return F.avg_pool2d(t, SSIM_WINDOW, stride=1)

    num_pixels = SSIM_WINDOW**2
    cov_norm = num_pixels / (num_pixels - 1)
    mean_x, mean_y = window_mean(x), window_mean(y)
    var_x = cov_norm * (window_mean(x * x) - mean_x * mean_x)
    var_y = cov_norm * (window_mean(y * y) - mean_y * mean_y)
    cov_xy = cov_norm * (window_mean(x * y) - mean_x * mean_y)
    c1, c2 = (SSIM_K1 * DATA_RANGE) ** 2, (SSIM_K2 * DATA_RANGE) ** 2
    numerator = (2 * mean_x * mean_y + c1) * (2 * cov_xy + c2)
    denominator = (mean_x.square() + mean_y.square() + c1) * (var_x + var_y + c2)
    return (numerator / denominator).flatten(1).mean(dim=1)


class MeanPerImage(Metric):
    """Mean over images of a per-image score on 8-bit images (float64 sums, so 50k images lose no precision)."""

    name: str

    def __init__(self, device: torch.device) -> None:
        self.total = torch.zeros((), dtype=torch.float64, device=device)
        self.count = torch.zeros((), dtype=torch.float64, device=device)

    @abstractmethod
    def per_image(self, images: torch.Tensor, reconstructions: torch.Tensor) -> torch.Tensor:
        """`b c h w` uint8 pairs -> `b` scores."""

    def update(self, batch: EvalBatch) -> None:
        values = self.per_image(batch.images_uint8, batch.reconstructions_uint8)
        self.total += values.sum()
        self.count += values.numel()

    def state(self) -> list[torch.Tensor]:
        return [self.total, self.count]

    def compute(self) -> dict[str, float]:
        return {self.name: (self.total / self.count).item()}


class PSNR(MeanPerImage):
    """Mean per-image PSNR (dB) on 8-bit images."""

    name = "psnr"

    def per_image(self, images: torch.Tensor, reconstructions: torch.Tensor) -> torch.Tensor:
        return psnr_per_image(images, reconstructions)


class SSIM(MeanPerImage):
    """Mean per-image SSIM on 8-bit images."""

    name = "ssim"

    def per_image(self, images: torch.Tensor, reconstructions: torch.Tensor) -> torch.Tensor:
        return ssim_per_image(images, reconstructions)
