"""Per-sub-token sampling: classifier-free guidance, temperature, top-k, top-p, a categorical draw (torch.Generator).

The order per sub-token is the reference's: guidance `u + s (c - u)`, divide by the temperature, top-k then top-p
filtering (HF style, only when asked), softmax, one categorical draw (by inverse CDF, the law of the reference's
torch.multinomial, not its random stream). Unlike the reference, `cfg_scale=1` is plain conditional sampling (no
unconditional rows are run), temperature 0 and `top_k=1` are greedy (argmax, no random draw), and mixed scales
such as (2.0, 1.0) work.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch

Knob = float | int | Sequence[float] | Sequence[int]
Generators = torch.Generator | Sequence[torch.Generator] | None

# The evaluation settings of the released models (scripts/evaluation/sample_*.sh; top_k 0, top_p 1, 50 per class).
PUBLISHED_SAMPLING: dict[str, dict[str, tuple[float, float]]] = {
    "ar_b": {"cfg_scale": (1.9, 2.0), "temperature": (1.0, 1.0)},
    "ar_l": {"cfg_scale": (1.9, 1.9), "temperature": (1.1, 1.0)},
    "ar_xl": {"cfg_scale": (1.75, 1.85), "temperature": (1.1, 1.0)},
}


class SamplingKnobs(NamedTuple):
    """One value per sub-token of each sampling setting."""

    cfg_scale: tuple[float, ...]
    temperature: tuple[float, ...]
    top_k: tuple[int, ...]
    top_p: tuple[float, ...]

    @property
    def guided(self) -> bool:
        """Whether any sub-token needs the unconditional rows."""
        return any(scale != 1.0 for scale in self.cfg_scale)


def per_subtoken(value: Knob, count: int, name: str) -> tuple[float, ...]:
    """A number -> `count` copies; a sequence must have `count` entries."""
    if isinstance(value, (int, float)):
        return (value,) * count
    values = tuple(value)
    if len(values) != count:
        raise ValueError(f"{name}={list(values)} needs one value per sub-token ({count}) or a single number.")
    return values


def sampling_knobs(count: int, cfg_scale: Knob, temperature: Knob, top_k: Knob, top_p: Knob) -> SamplingKnobs:
    """Validated per-sub-token settings for `count` sub-tokens."""
    knobs = SamplingKnobs(tuple(float(v) for v in per_subtoken(cfg_scale, count, "cfg_scale")),
                          tuple(float(v) for v in per_subtoken(temperature, count, "temperature")),
                          tuple(int(v) for v in per_subtoken(top_k, count, "top_k")),
                          tuple(float(v) for v in per_subtoken(top_p, count, "top_p")))
    if min(knobs.temperature) < 0:
        raise ValueError(f"temperature={list(knobs.temperature)} must be >= 0 (0 is greedy).")
    if min(knobs.top_k) < 0:
        raise ValueError(f"top_k={list(knobs.top_k)} must be >= 0 (0 keeps every token, 1 is greedy).")
    if not all(0.0 < p <= 1.0 for p in knobs.top_p):
        raise ValueError(f"top_p={list(knobs.top_p)} must be in (0, 1] (1 keeps every token).")
    return knobs


def guide(logits: torch.Tensor, scale: float, batch: int) -> torch.Tensor:
    """Classifier-free guidance on `(2b) v` logits (conditional rows first): `u + scale (c - u)`, `b v`.

    `b v` logits (no unconditional rows) and scale 1 return the conditional rows unchanged.
    """
    conditional = logits[:batch]
    if scale == 1.0 or logits.shape[0] == batch:
        return conditional
    unconditional = logits[batch:]
    return unconditional + scale * (conditional - unconditional)


def filter_logits(logits: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """Set logits outside the top-k, then outside the smallest set of probability >= top_p, to -inf (`b v`).

    As HF's `top_k_top_p_filtering`: ties with the k-th value are kept, and the token that crosses top_p is kept.
    """
    if top_k > 0 and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        remove_sorted = cumulative > top_p
        remove_sorted[..., 1:] = remove_sorted[..., :-1].clone()  # keep the token that crosses the threshold
        remove_sorted[..., 0] = False
        remove = remove_sorted.scatter(-1, order, remove_sorted)
        logits = logits.masked_fill(remove, float("-inf"))
    return logits


def draw(probs: torch.Tensor, generator: Generators) -> torch.Tensor:
    """One sample per row of `b v` probabilities -> `b` int64, by inverse CDF (one uniform per row).

    The same law as torch.multinomial, which on CPU spends an exponential variate on every entry (the most expensive
    op of a decode step at 4096 entries); here a fp64 cumulative sum and a binary search. `generator` is None (the
    global RNG), one torch.Generator, or one per row: each row's draw then depends only on its own generator.
    """
    rows, size = probs.shape
    if generator is None or isinstance(generator, torch.Generator):
        uniform = torch.rand(rows, 1, dtype=torch.float64, device=probs.device, generator=generator)
    else:
        if len(generator) != rows:
            raise ValueError(f"got {len(generator)} generators for {rows} rows: pass one per row.")
        uniform = torch.cat([torch.rand(1, 1, dtype=torch.float64, device=probs.device, generator=g)
                             for g in generator])
    cdf = probs.double().cumsum(dim=-1)
    # The first index whose cumulative probability exceeds u * total: zero-probability entries are never chosen.
    return torch.searchsorted(cdf, uniform * cdf[:, -1:], right=True).clamp_max_(size - 1)[:, 0]


def sample_subtoken(logits: torch.Tensor, temperature: float, top_k: int, top_p: float, generator: Generators
                    ) -> torch.Tensor:
    """Guided `b v` logits -> `b` int64 sub-token ids; greedy for temperature 0 or top_k 1."""
    logits = logits.float()
    if temperature == 0.0 or top_k == 1:
        return logits.argmax(dim=-1)
    logits = filter_logits(logits / temperature, top_k, top_p)
    return draw(logits.softmax(dim=-1), generator)
