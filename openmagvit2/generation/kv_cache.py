"""A static key/value cache for autoregressive decoding.

Allocated once per `generate` call for all layers of a stack (`l b h s e`), then written in place: no per-step
allocation, and nothing is attached to the modules, so a model that sampled still trains and saves exactly its
weights. The buffers have fixed shapes; each step attends to the filled prefix (a slice, the cheapest in eager mode).
A compiled decode step would instead attend to the full length under a position mask, on the same buffers.
"""
from __future__ import annotations

import torch


class KVCache:
    """Keys and values of `layers` attention layers for `batch` rows and up to `length` positions."""

    def __init__(self, layers: int, batch: int, heads: int, length: int, head_dim: int, dtype: torch.dtype,
                 device: torch.device | str) -> None:
        shape = (layers, batch, heads, length, head_dim)
        self.keys = torch.zeros(shape, dtype=dtype, device=device)
        self.values = torch.zeros(shape, dtype=dtype, device=device)

    @property
    def length(self) -> int:
        return self.keys.shape[3]

    def update(self, layer: int, start: int, keys: torch.Tensor, values: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """Write `b h s e` keys/values at positions start..start+s-1; return this layer's `b h (start+s) e` prefix."""
        end = start + keys.shape[2]
        if end > self.length:
            raise IndexError(f"KV cache of length {self.length} cannot hold position {end - 1}.")
        self.keys[layer, :, :, start:end] = keys
        self.values[layer, :, :, start:end] = values
        return self.keys[layer, :, :, :end], self.values[layer, :, :, :end]
