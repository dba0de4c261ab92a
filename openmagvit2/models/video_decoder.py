"""Causal 3D decoder (Open-MAGVIT2 video layout, REFERENCE-VIDEO §1.4): codes `b z t h w` -> clips `b 3 T H W`."""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from openmagvit2.models.blocks import group_norm, swish
from openmagvit2.models.video_blocks import CausalConv3d, Triple, VideoAdaptiveGroupNorm, VideoResBlock, VideoUpsampler


def upsample_block(multiplier_below: int) -> Triple:
    """Block of level i's upsampler from ch_mult[i - 1]: mirrors the encoder's downsampler after level i - 1."""
    return (1, 2, 2) if multiplier_below == 1 else (2, 2, 2)


class VideoDecoderLevel(nn.Module):
    """`num_res_blocks` VideoResBlocks, then an optional `upsample` (conv + 3D depth-to-space, frame 1 dropped)."""

    def __init__(self, in_channels: int, out_channels: int, num_res_blocks: int, block: Triple | None) -> None:
        super().__init__()
        widths = [in_channels] + [out_channels] * num_res_blocks
        self.block = nn.ModuleList(VideoResBlock(widths[j], widths[j + 1]) for j in range(num_res_blocks))
        if block is not None:
            self.upsample = VideoUpsampler(out_channels, block)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.block:
            x = block(x)
        return self.upsample(x) if hasattr(self, "upsample") else x


class VideoDecoder(nn.Module):
    """conv_in -> `mid_block` -> levels from the deepest up (`up.{i}`), each after its `adaptive.{i}` -> norm, conv_out.

    The adaptive GroupNorm (always on, as in the release) is driven by the decoder input. Shapes:
    `b z t h w -> b 3 (2^n (t - 1) + 1) hf wf` (released: 5 latent frames -> 17). No final tanh.
    """

    def __init__(self, ch: int, ch_mult: Sequence[int], num_res_blocks: int, z_channels: int,
                 out_channels: int = 3) -> None:
        super().__init__()
        widths = [ch * m for m in ch_mult]
        in_widths = widths[1:] + widths[-1:]
        self.conv_in = CausalConv3d(z_channels, widths[-1], 3)
        self.mid_block = nn.ModuleList(VideoResBlock(widths[-1], widths[-1]) for _ in range(num_res_blocks))
        self.up = nn.ModuleList(
            VideoDecoderLevel(in_widths[i], widths[i], num_res_blocks, upsample_block(ch_mult[i - 1]) if i else None)
            for i in range(len(ch_mult)))
        self.adaptive = nn.ModuleList(VideoAdaptiveGroupNorm(z_channels, in_widths[i]) for i in range(len(ch_mult)))
        self.norm_out = group_norm(widths[0])
        self.conv_out = CausalConv3d(widths[0], out_channels, 3)

    def forward(self, quantized: torch.Tensor) -> torch.Tensor:
        """quantized: `b z t h w` (+-1 codes or the straight-through latent). Returns clips `b 3 T H W`."""
        x = self.conv_in(quantized)
        for block in self.mid_block:
            x = block(x)
        for i in reversed(range(len(self.up))):
            x = self.up[i](self.adaptive[i](x, quantized))
        return self.conv_out(swish(self.norm_out(x)))
