"""2D rotary position embedding of the Open-MAGVIT2 / LlamaGen AR models.

Half of each head's rotation pairs turn with the grid row, the other half with the column. Sequence position 0 is
the class token and gets cos = sin = 0, so its queries and keys are exactly zero (an upstream quirk kept for weight
compatibility); position j >= 1 is grid cell j - 1 in raster order.
"""
from __future__ import annotations

import torch
from einops import rearrange


def rope_table_2d(grid_size: int, head_dim: int, base: float, prefix: int = 1) -> torch.Tensor:
    """Rotations cos + i sin, complex64 `s p`, s = prefix + grid_size^2 positions, p = head_dim / 2 pairs.

    Pair k < p/2 of cell (r, c) turns by r * f_k, pair p/2 + k by c * f_k, with f_k = base^(-2k / p) (fp32, as
    upstream computes it). The first `prefix` rows are zeros (not rotations: they zero q and k).
    """
    pairs = head_dim // 2
    freqs = 1.0 / (base ** (torch.arange(0, pairs, 2)[: pairs // 2].float() / pairs))
    angles_1d = torch.outer(torch.arange(grid_size), freqs)  # `g f`
    angles = torch.cat([rearrange(angles_1d, "r f -> r 1 f").expand(-1, grid_size, -1),
                        rearrange(angles_1d, "c f -> 1 c f").expand(grid_size, -1, -1)], dim=-1)
    angles = rearrange(angles, "r c p -> (r c) p")
    table = torch.cat([torch.zeros(prefix, pairs), torch.ones(grid_size ** 2, pairs)])
    return torch.polar(table, torch.cat([torch.zeros(prefix, pairs), angles]))


def apply_rope(x: torch.Tensor, rotation: torch.Tensor) -> torch.Tensor:
    """Rotate the interleaved pairs (2i, 2i+1) of `b s h e` by a complex `s e/2` table; fp32 math, x's dtype out.

    (x0, x1) -> (x0 cos - x1 sin, x1 cos + x0 sin), a complex product. Upstream returns fp32 whatever the input;
    under autocast attention casts back anyway. Plain views, no einops: this runs ~10 times per decoded token.
    """
    pairs = torch.view_as_complex(x.float().reshape(*x.shape[:-1], -1, 2))
    return torch.view_as_real(pairs * rotation[:, None]).flatten(3).to(x.dtype)
