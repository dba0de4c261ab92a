"""Building blocks of the MAGVIT-2 encoder and decoder (Open-MAGVIT2 layout).

Every module here keeps the attribute names of the released checkpoints (`norm1`, `conv1`, `nin_shortcut`,
`upsample.conv1`, `gamma`, `beta`, ...) so that their state-dict keys match the published files without renaming.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

GROUPS = 32
NORM_EPS = 1e-6


def swish(x: torch.Tensor) -> torch.Tensor:
    """x * sigmoid(x), the only activation of the generator."""
    return F.silu(x)


def group_norm(channels: int, affine: bool = True) -> nn.GroupNorm:
    """GroupNorm(32 groups, eps 1e-6) as in the release; `channels` must be a multiple of 32."""
    if channels % GROUPS:
        raise ValueError(f"a layer has {channels} channels, but GroupNorm uses {GROUPS} groups: "
                         f"choose `ch` and `ch_mult` so that every width is a multiple of {GROUPS}.")
    return nn.GroupNorm(GROUPS, channels, eps=NORM_EPS, affine=affine)


class ResBlock(nn.Module):
    """Pre-activation residual block: norm -> swish -> conv3x3 (twice), 1x1 shortcut when widths differ.

    Shapes: `b in h w -> b out h w`. Convolutions have no bias (the following GroupNorm would cancel it).
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        # Registration order norm1, norm2, conv1, conv2 reproduces the released state-dict order.
        self.norm1 = group_norm(in_channels)
        self.norm2 = group_norm(out_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        if in_channels != out_channels:
            self.nin_shortcut = nn.Conv2d(in_channels, out_channels, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(swish(self.norm1(x)))
        h = self.conv2(swish(self.norm2(h)))
        shortcut = self.nin_shortcut(x) if hasattr(self, "nin_shortcut") else x
        return h + shortcut


def depth_to_space_dcr(x: torch.Tensor, block: int = 2) -> torch.Tensor:
    """Depth-to-space in DCR order, as the released upsamplers use it.

    `b (bh bw c) h w -> b c (h bh) (w bw)`: output[c, 2h+a, 2w+b] = input[(2a+b)*C + c, h, w]. This is not
    `F.pixel_shuffle`, which reads channel `4c + 2a + b`; the released `upsample.conv1` weights assume this order.
    """
    return rearrange(x, "b (bh bw c) h w -> b c (h bh) (w bw)", bh=block, bw=block)


class Upsampler(nn.Module):
    """2x upsampling: 3x3 conv to 4x the channels, then DCR depth-to-space. Shapes: `b c h w -> b c 2h 2w`."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels * 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return depth_to_space_dcr(self.conv1(x))


class AdaptiveGroupNorm(nn.Module):
    """GroupNorm whose scale and shift are predicted from the quantized latent (the v3 "Large" decoders).

    scale = gamma(std_hw(q)), shift = beta(mean_hw(q)), with std = sqrt(var + 1e-6) and torch's default unbiased
    variance, exactly as in the release (its comment says otherwise, the code does this). The statistics are global
    over the latent map, so they shift slightly when the same model runs at another resolution. The same module
    serves the video decoder, with statistics over (t, h, w) of the whole clip (REFERENCE-VIDEO §1.5): there they are
    the main source of the decoder's non-causality.
    """

    def __init__(self, z_channels: int, channels: int) -> None:
        super().__init__()
        self.gn = group_norm(channels, affine=False)
        self.gamma = nn.Linear(z_channels, channels)
        self.beta = nn.Linear(z_channels, channels)

    def forward(self, x: torch.Tensor, quantized: torch.Tensor) -> torch.Tensor:
        """x: `b c ...` features (`b c H W`, or `b c T H W` for video); quantized: `b K ...` decoder input (the
        "style"). Returns the shape of x."""
        flat = quantized.flatten(2)  # `b K (h w)` or `b K (t h w)`
        std = torch.sqrt(flat.var(dim=-1) + NORM_EPS)
        mean = flat.mean(dim=-1)
        spatial = (1,) * (x.ndim - 2)  # broadcast `b c` over the feature map
        return self.gn(x) * self.gamma(std).view(*std.shape[:1], -1, *spatial) \
            + self.beta(mean).view(*mean.shape[:1], -1, *spatial)
