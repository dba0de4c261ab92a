"""Building blocks of the causal 3D video tokenizer (Open-MAGVIT2 video layout, REFERENCE-VIDEO §1).

Attribute names are the released checkpoint's: every 3D convolution is an `nn.Conv3d` registered as `conv_1` inside a
`CausalConv3d` wrapper (upstream `ConvBlock3D`), hence keys such as `encoder.conv_in.conv_1.weight`; the residual
blocks keep `norm1`, `norm2`, `conv1`, `conv2`, `nin_shortcut`, the upsampler `conv1`, the adaptive norm `gamma`,
`beta`. Norms come from the image blocks (`group_norm`: 32 groups, eps 1e-6); on a `b c t h w` tensor their
statistics run over (c/32, t, h, w) jointly, i.e. over the whole clip, as upstream.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from openmagvit2.models.blocks import AdaptiveGroupNorm, group_norm, swish

Triple = tuple[int, int, int]


def _triple(value: int | Triple) -> Triple:
    return (value, value, value) if isinstance(value, int) else tuple(value)  # type: ignore[return-value]


class CausalConv3d(nn.Module):
    """3D convolution that never looks at later frames (upstream `ConvBlock3D(causal=True)`, §1.1).

    The input is zero-padded by `kt - 1` frames in front only and by `k // 2` pixels on each spatial side (zeros, not
    replicate), then convolved with the given stride and no further padding. Output frame j of a time stride s sees
    input frames s*j - (kt - 1) .. s*j. Shapes: `b in t h w -> b out t' h' w'`, t' = ceil(t / s_t) for kt = 3.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int | Triple = 3,
                 stride: int | Triple = 1, bias: bool = True) -> None:
        super().__init__()
        self.kernel_size = _triple(kernel_size)
        self.conv_1 = nn.Conv3d(in_channels, out_channels, self.kernel_size, stride=stride, padding=0, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        kt, kh, kw = self.kernel_size
        return self.conv_1(F.pad(x, (kw // 2, kw // 2, kh // 2, kh // 2, kt - 1, 0)))


class VideoResBlock(nn.Module):
    """GN -> swish -> causal conv3x3x3 (twice), 1x1x1 `nin_shortcut` when widths differ; no conv biases (§1.2).

    Shapes: `b in t h w -> b out t h w`. Registration order matches the image ResBlock, so the 2D and 3D state dicts
    list their tensors in the same order.
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.norm1 = group_norm(in_channels)
        self.norm2 = group_norm(out_channels)
        self.conv1 = CausalConv3d(in_channels, out_channels, 3, bias=False)
        self.conv2 = CausalConv3d(out_channels, out_channels, 3, bias=False)
        if in_channels != out_channels:
            self.nin_shortcut = CausalConv3d(in_channels, out_channels, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(swish(self.norm1(x)))
        h = self.conv2(swish(self.norm2(h)))
        shortcut = self.nin_shortcut(x) if hasattr(self, "nin_shortcut") else x
        return h + shortcut


def depth_to_space_3d(x: torch.Tensor, block: Triple) -> torch.Tensor:
    """Depth-to-space in (t, h, w), DCR order as upstream `depth_to_space3d` (§1.4).

    `b (bt bh bw c) t h w -> b c (t bt) (h bh) (w bw)`: the block offsets are the most significant part of the
    channel index, which the released `upsample.conv1` weights and the inflation rule (§4.3) assume.
    """
    bt, bh, bw = block
    return rearrange(x, "b (bt bh bw c) t h w -> b c (t bt) (h bh) (w bw)", bt=bt, bh=bh, bw=bw)


def drop_second_frame(x: torch.Tensor) -> torch.Tensor:
    """Keep frames 0, 2, 3, ... of `b c t h w` (upstream drops output frame 1 after a temporal depth-to-space).

    Latent frame 0 thus yields one frame and every later one two, so 2t frames become 2t - 1 (§1.4).
    """
    return torch.cat([x[:, :, :1], x[:, :, 2:]], dim=2)


class VideoUpsampler(nn.Module):
    """Causal conv3x3x3 to C * bt * 4 channels, DCR depth-to-space by `block` = (bt, 2, 2), frame 1 dropped if bt = 2.

    Shapes: `b c t h w -> b c (bt t - bt + 1) 2h 2w` (t frames -> 2t - 1 when bt = 2, t when bt = 1).
    """

    def __init__(self, channels: int, block: Triple) -> None:
        super().__init__()
        self.block = block
        self.conv1 = CausalConv3d(channels, channels * block[0] * block[1] * block[2], 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = depth_to_space_3d(self.conv1(x), self.block)
        return drop_second_frame(x) if self.block[0] > 1 else x


# The 2D module, statistics over (t, h, w): one implementation for images and clips (REFERENCE-VIDEO §1.5).
VideoAdaptiveGroupNorm = AdaptiveGroupNorm
