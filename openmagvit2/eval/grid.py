"""A PNG grid that puts each row of originals above the row of their reconstructions."""
from __future__ import annotations

from pathlib import Path

import torch
from einops import rearrange
from PIL import Image
from torchvision.utils import make_grid

from openmagvit2.eval.images import to_uint8


def reconstruction_grid(images: torch.Tensor, reconstructions: torch.Tensor, nrow: int = 8) -> torch.Tensor:
    """`b 3 h w` x2 in [-1, 1] -> `3 H W` uint8 grid: rows of `nrow` originals, each followed by its reconstructions.

    Only the first `nrow * floor(b / nrow)` images are used (all of them when b < nrow).
    """
    if images.shape != reconstructions.shape:
        raise ValueError(f"images {tuple(images.shape)} and reconstructions {tuple(reconstructions.shape)} differ.")
    if images.shape[0] == 0:
        raise ValueError("no images to put in the grid.")
    nrow = max(1, min(nrow, images.shape[0]))
    keep = images.shape[0] // nrow * nrow
    pairs = torch.stack([to_uint8(images[:keep]), to_uint8(reconstructions[:keep])]).cpu()
    interleaved = rearrange(pairs, "pair (row k) c h w -> (row pair k) c h w", k=nrow)
    return make_grid(interleaved, nrow=nrow, padding=2, pad_value=255)


def save_reconstruction_grid(images: torch.Tensor, reconstructions: torch.Tensor, path: str | Path,
                             nrow: int = 8) -> Path:
    """Write `reconstruction_grid(...)` as a PNG at `path` (parent folders created); returns the path."""
    grid = reconstruction_grid(images, reconstructions, nrow)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rearrange(grid, "c h w -> h w c").numpy()).save(path)
    return path
