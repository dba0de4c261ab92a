"""MAGVIT-2 encoder (Open-MAGVIT2 layout): images `b 3 H W` -> continuous latents `b z H/f W/f`."""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from openmagvit2.models.blocks import ResBlock, group_norm, swish


class EncoderLevel(nn.Module):
    """One resolution level: `num_res_blocks` ResBlocks, then an optional stride-2 conv (`downsample`)."""

    def __init__(self, in_channels: int, out_channels: int, num_res_blocks: int, downsample: bool) -> None:
        super().__init__()
        widths = [in_channels] + [out_channels] * num_res_blocks
        self.block = nn.ModuleList(ResBlock(widths[j], widths[j + 1]) for j in range(num_res_blocks))
        if downsample:
            self.downsample = nn.Conv2d(out_channels, out_channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.block:
            x = block(x)
        return self.downsample(x) if hasattr(self, "downsample") else x


class Encoder(nn.Module):
    """conv_in -> levels `down.{i}` (downsampling after all but the last) -> `mid_block` -> norm, swish, 1x1 conv_out.

    Shapes: `b in_channels H W -> b z_channels H/f W/f` with f = 2 ** (len(ch_mult) - 1). There is no separate
    pre-quantisation conv: `conv_out` maps straight to the `z_channels` = codebook bits of the LFQ.
    """

    def __init__(self, ch: int, ch_mult: Sequence[int], num_res_blocks: int, z_channels: int,
                 in_channels: int = 3) -> None:
        super().__init__()
        widths = [ch * m for m in ch_mult]
        in_widths = [ch] + widths[:-1]
        last = len(ch_mult) - 1
        self.conv_in = nn.Conv2d(in_channels, ch, 3, padding=1, bias=False)
        self.down = nn.ModuleList(
            EncoderLevel(in_widths[i], widths[i], num_res_blocks, downsample=i < last) for i in range(len(ch_mult)))
        self.mid_block = nn.ModuleList(ResBlock(widths[-1], widths[-1]) for _ in range(num_res_blocks))
        self.norm_out = group_norm(widths[-1])
        self.conv_out = nn.Conv2d(widths[-1], z_channels, 1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """images: `b 3 H W` in [-1, 1]. Returns the continuous latent `b z H/f W/f`."""
        x = self.conv_in(images)
        for level in self.down:
            x = level(x)
        for block in self.mid_block:
            x = block(x)
        return self.conv_out(swish(self.norm_out(x)))
