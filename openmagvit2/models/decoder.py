"""MAGVIT-2 decoder (Open-MAGVIT2 layout): quantized codes `b z h w` -> images `b 3 hf wf`."""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from openmagvit2.models.blocks import AdaptiveGroupNorm, ResBlock, Upsampler, group_norm, swish


class DecoderLevel(nn.Module):
    """One resolution level: `num_res_blocks` ResBlocks, then an optional 2x `upsample` (conv + DCR depth-to-space)."""

    def __init__(self, in_channels: int, out_channels: int, num_res_blocks: int, upsample: bool) -> None:
        super().__init__()
        widths = [in_channels] + [out_channels] * num_res_blocks
        self.block = nn.ModuleList(ResBlock(widths[j], widths[j + 1]) for j in range(num_res_blocks))
        if upsample:
            self.upsample = Upsampler(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.block:
            x = block(x)
        return self.upsample(x) if hasattr(self, "upsample") else x


class Decoder(nn.Module):
    """conv_in -> `mid_block` -> levels from the deepest up (`up.{i}`, i = 0 is full resolution) -> norm, swish, conv_out.

    With `adaptive_norm` (v3 "Large"), `adaptive.{i}` (an AdaptiveGroupNorm driven by the decoder input) runs at the
    start of every level, before its blocks. Shapes: `b z_channels h w -> b out_channels h*f w*f`, f = 2 ** (L - 1).
    There is no post-quantisation conv: `conv_in` reads the +-1 codes directly. No final tanh (clamp at eval time).
    """

    def __init__(self, ch: int, ch_mult: Sequence[int], num_res_blocks: int, z_channels: int,
                 out_channels: int = 3, adaptive_norm: bool = False) -> None:
        super().__init__()
        widths = [ch * m for m in ch_mult]
        # Level i reads the output width of level i + 1; the deepest level reads the mid-block width.
        in_widths = widths[1:] + widths[-1:]
        self.conv_in = nn.Conv2d(z_channels, widths[-1], 3, padding=1)
        self.mid_block = nn.ModuleList(ResBlock(widths[-1], widths[-1]) for _ in range(num_res_blocks))
        self.up = nn.ModuleList(
            DecoderLevel(in_widths[i], widths[i], num_res_blocks, upsample=i > 0) for i in range(len(ch_mult)))
        if adaptive_norm:
            self.adaptive = nn.ModuleList(AdaptiveGroupNorm(z_channels, in_widths[i]) for i in range(len(ch_mult)))
        self.norm_out = group_norm(widths[0])
        self.conv_out = nn.Conv2d(widths[0], out_channels, 3, padding=1)

    def forward(self, quantized: torch.Tensor) -> torch.Tensor:
        """quantized: `b z h w` (+-1 codes, or the straight-through latent). Returns images `b 3 hf wf`."""
        x = self.conv_in(quantized)
        for block in self.mid_block:
            x = block(x)
        for i in reversed(range(len(self.up))):
            if hasattr(self, "adaptive"):
                x = self.adaptive[i](x, quantized)
            x = self.up[i](x)
        return self.conv_out(swish(self.norm_out(x)))
