"""The sampling loop of `ARModel.generate`: one token per step, its sub-tokens in turn, with static KV caches.

Per step t, the spatial stack runs one position (the class token at t = 0, else token t-1) against its cache; then
the intra stack runs position 0 (h_t) and, for each next sub-token, one more position against a small intra cache
of `k` positions that is overwritten every step (never re-allocated). With guidance, the batch is
`[conditional rows; unconditional rows]` and each sampled sub-token is fed to both halves. `kv_cache=False`
recomputes the whole spatial prefix and intra context at every step instead (the reference for equality tests).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from openmagvit2.generation.kv_cache import KVCache
from openmagvit2.generation.sampling import Generators, Knob, guide, sample_subtoken, sampling_knobs
from openmagvit2.generation.tokens import combine_subtokens

if TYPE_CHECKING:
    from openmagvit2.generation.model import ARModel


def generate_tokens(model: ARModel, labels: torch.Tensor, cfg_scale: Knob, temperature: Knob, top_k: Knob,
                    top_p: Knob, kv_cache: bool, generator: Generators) -> torch.Tensor:
    """See `ARModel.generate`."""
    config = model.config
    k = len(config.factorized_bits)
    knobs = sampling_knobs(k, cfg_scale, temperature, top_k, top_p)
    if labels.ndim != 1 or labels.dtype != torch.long:
        raise ValueError(f"labels must be a (b,) int64 tensor, got {tuple(labels.shape)} {labels.dtype}.")
    batch, n = labels.shape[0], config.num_tokens
    rows = torch.cat([labels, torch.full_like(labels, config.num_classes)]) if knobs.guided else labels
    was_training = model.training
    model.eval()
    try:
        step = CachedStep(model, rows.shape[0]) if kv_cache else RecomputeStep(model)
        x = model.class_emb(rows)[:, None]  # `r 1 d`, the input at sequence position 0
        tokens = torch.empty(batch, n, dtype=torch.long, device=labels.device)
        for t in range(n):
            h = step.spatial(x, t)
            subtokens, subtoken_inputs = [], []
            for i in range(k):
                out = step.intra(h if i == 0 else subtoken_inputs[-1], i)
                logits = guide(model.head[i](model.norm(out[:, -1])), knobs.cfg_scale[i], batch)
                sub = sample_subtoken(logits, knobs.temperature[i], knobs.top_k[i], knobs.top_p[i], generator)
                subtokens.append(sub)
                sub_rows = sub if rows.shape[0] == batch else torch.cat([sub, sub])  # both guidance halves
                subtoken_inputs.append(model.sub_embeddings[i](sub_rows)[:, None])
            tokens[:, t] = combine_subtokens(subtokens, config.factorized_bits)
            x = torch.stack(subtoken_inputs).sum(0)
    finally:
        model.train(was_training)
    return tokens


class CachedStep:
    """One-position forward passes through static spatial (`n` positions) and intra (`k` positions) caches."""

    def __init__(self, model: ARModel, rows: int) -> None:
        config = model.config
        device = model.pre_emb.weight.device
        # Keys and values come out of the projections in the autocast dtype when autocast is on.
        dtype = (torch.get_autocast_dtype(device.type) if torch.is_autocast_enabled(device.type)
                 else model.pre_emb.weight.dtype)
        self.model = model
        self.spatial_cache = KVCache(config.spatial_layers, rows, config.num_heads, config.num_tokens,
                                     config.head_dim, dtype, device)
        self.intra_cache = KVCache(config.factorized_layers, rows, config.num_heads, len(config.factorized_bits),
                                   config.head_dim, dtype, device)

    def spatial(self, x: torch.Tensor, position: int) -> torch.Tensor:
        """`r 1 d` input at sequence position `position` -> `r 1 d` spatial output."""
        return self.model.spatial(x, position, self.spatial_cache)

    def intra(self, x: torch.Tensor, position: int) -> torch.Tensor:
        """`r 1 d` input at intra position `position` (0 is h_t; earlier positions of this step are cached)."""
        return self.model.intra(x, position, self.intra_cache)


class RecomputeStep:
    """The same interface without caches: every call reruns the whole prefix (O(n^2) work over a grid)."""

    def __init__(self, model: ARModel) -> None:
        self.model = model
        self.spatial_inputs: list[torch.Tensor] = []
        self.intra_inputs: list[torch.Tensor] = []

    def spatial(self, x: torch.Tensor, position: int) -> torch.Tensor:
        self.spatial_inputs.append(x)
        return self.model.spatial(torch.cat(self.spatial_inputs, dim=1), 0)[:, -1:]

    def intra(self, x: torch.Tensor, position: int) -> torch.Tensor:
        if position == 0:
            self.intra_inputs = []
        self.intra_inputs.append(x)
        return self.model.intra(torch.cat(self.intra_inputs, dim=1), 0)[:, -1:]
