"""Conversions between the model's [-1, 1] tensors and 8-bit pixel values, the unit every metric is defined in."""
from __future__ import annotations

import torch

UINT8_MODES = ("round", "truncate")


def to_pixels(images: torch.Tensor) -> torch.Tensor:
    """`b 3 h w` in [-1, 1] -> float pixel values in [0, 255] (clamped, not quantised)."""
    return ((images.float().clamp(-1.0, 1.0) + 1.0) * 127.5).clamp(0.0, 255.0)


def to_uint8(images: torch.Tensor, mode: str = "round") -> torch.Tensor:
    """`b 3 h w` in [-1, 1] -> `b 3 h w` uint8, as if the images were saved as PNG.

    `round` is the correct quantisation; `truncate` reproduces the reference script (`(x + 1) / 2 * 255` cast to
    uint8), which biases both images by -0.5 on average and shifts PSNR slightly.
    """
    pixels = to_pixels(images)
    if mode == "round":
        pixels = pixels.round()
    elif mode == "truncate":
        pixels = pixels.floor()
    else:
        raise ValueError(f"uint8 mode must be one of {UINT8_MODES}, got {mode!r}.")
    return pixels.to(torch.uint8)
