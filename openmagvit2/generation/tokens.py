"""Splitting token ids into sub-tokens and back (LSB first, as the LFQ packs bits).

An 18-bit id of the Open-MAGVIT2 v2/v3 tokenizers has channel c as bit c. With `factorized_bits = [6, 12]` the AR
model predicts `pre = idx & 63` (channels 0..5) and then `post = idx >> 6` (channels 6..17); `idx = pre + 64 post`.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch


def split_indices(indices: torch.Tensor, bits: Sequence[int]) -> tuple[torch.Tensor, ...]:
    """Token ids (any shape, int64) -> one tensor of sub-token ids per entry of `bits`, least significant first."""
    parts, shift = [], 0
    for width in bits:
        parts.append((indices >> shift) & ((1 << width) - 1))
        shift += width
    return tuple(parts)


def combine_subtokens(subtokens: Sequence[torch.Tensor], bits: Sequence[int]) -> torch.Tensor:
    """The inverse of `split_indices`: sub-token ids (same shapes) -> token ids."""
    indices, shift = torch.zeros_like(subtokens[0]), 0
    for part, width in zip(subtokens, bits, strict=True):
        indices = indices | (part << shift)
        shift += width
    return indices
