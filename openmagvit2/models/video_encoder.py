"""Causal 3D encoder (Open-MAGVIT2 video layout, REFERENCE-VIDEO §1.3): clips `b 3 t H W` -> latents `b z t' h w`."""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from openmagvit2.models.blocks import group_norm, swish
from openmagvit2.models.video_blocks import CausalConv3d, Triple, VideoResBlock


def downsample_stride(multiplier: int) -> Triple:
    """Stride of the downsampler after a level: space only where ch_mult is 1, else time too (upstream rule, §1.3)."""
    return (1, 2, 2) if multiplier == 1 else (2, 2, 2)


class VideoEncoderLevel(nn.Module):
    """`num_res_blocks` VideoResBlocks, then an optional strided causal conv3x3x3 `downsample` (with bias)."""

    def __init__(self, in_channels: int, out_channels: int, num_res_blocks: int, stride: Triple | None) -> None:
        super().__init__()
        widths = [in_channels] + [out_channels] * num_res_blocks
        self.block = nn.ModuleList(VideoResBlock(widths[j], widths[j + 1]) for j in range(num_res_blocks))
        if stride is not None:
            self.downsample = CausalConv3d(out_channels, out_channels, 3, stride=stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.block:
            x = block(x)
        return self.downsample(x) if hasattr(self, "downsample") else x


class VideoEncoder(nn.Module):
    """conv_in -> levels `down.{i}` (downsampling after all but the last) -> `mid_block` -> norm, swish, conv_out.

    Shapes: `b 3 t H W -> b z t' H/f W/f`, f = 2 ** (len(ch_mult) - 1) and t' = ceil(t / 2^n) where n counts the
    levels before the last with ch_mult != 1 (released [1, 2, 2, 4]: n = 2, 17 frames -> 5). Each strided conv's
    output frame 0 sees only input frame 0, so latent frame 0 depends (through convolutions) on frame 0 alone.
    """

    def __init__(self, ch: int, ch_mult: Sequence[int], num_res_blocks: int, z_channels: int,
                 in_channels: int = 3) -> None:
        super().__init__()
        widths = [ch * m for m in ch_mult]
        in_widths = [ch] + widths[:-1]
        last = len(ch_mult) - 1
        self.conv_in = CausalConv3d(in_channels, ch, 3, bias=False)
        self.down = nn.ModuleList(
            VideoEncoderLevel(in_widths[i], widths[i], num_res_blocks,
                              downsample_stride(ch_mult[i]) if i < last else None) for i in range(len(ch_mult)))
        self.mid_block = nn.ModuleList(VideoResBlock(widths[-1], widths[-1]) for _ in range(num_res_blocks))
        self.norm_out = group_norm(widths[-1])
        self.conv_out = CausalConv3d(widths[-1], z_channels, 1)

    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        """clips: `b 3 t H W` in [-1, 1]. Returns the continuous latent `b z t' h w`."""
        x = self.conv_in(clips)
        for level in self.down:
            x = level(x)
        for block in self.mid_block:
            x = block(x)
        return self.conv_out(swish(self.norm_out(x)))
