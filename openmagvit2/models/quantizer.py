"""Lookup-free quantizer (LFQ, MAGVIT-2) with exact, factorised entropy terms.

Each of the K latent channels is one bit: q = +1 where z > 0 else -1, the token index packs the bits, and the
codebook {-1, 1}^K is implicit (no parameters, no persistent buffers, so checkpoints hold no `quantizer.*` keys).
"""
from __future__ import annotations

from typing import Callable, Literal, NamedTuple

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from openmagvit2.config import BIT_ORDERS, QuantizerConfig, check
from openmagvit2.models.entropy import codebook_signs, entropy_terms, tokens_last

BitOrder = Literal["lsb_first", "msb_first"]
_LFQ = QuantizerConfig()  # the schema's defaults (the Open-MAGVIT2 recipe)


class LFQOutput(NamedTuple):
    """What `LFQ.forward` returns. Losses are scalars; they are zeros when not computed (eval mode)."""

    quantized: torch.Tensor  # `b k h w` (video: `b k t h w`), +-1 values with a straight-through gradient to z
    indices: torch.Tensor  # `b h w` (video: `b t h w`), int64 in [0, 2^k)
    entropy_loss: torch.Tensor  # sample_minimization_weight * per_sample - batch_maximization_weight * codebook
    per_sample_entropy: torch.Tensor  # mean over tokens of H(p_n), nats
    codebook_entropy: torch.Tensor  # H(mean_n p_n) in the reference's log(p + eps) form, nats
    commitment: torch.Tensor  # mean((z - sg(q))^2)


class LFQ(nn.Module):
    """Lookup-free quantizer over `codebook_bits` channels with the MAGVIT-2 entropy loss, computed exactly.

    Args:
        codebook_bits: K, the number of channels (= bits) of z; the codebook has 2^K entries.
        bit_order: how bits pack into indices: "lsb_first" (channel 0 is bit 0; Open-MAGVIT2 v2/v3) or
            "msb_first" (channel 0 is the top bit; the v1 release).
        entropy_temperature: T of the code distribution softmax(2 <z, c> / T).
        entropy_eps: eps in the codebook entropy -sum pbar log(pbar + eps).
        sample_minimization_weight: weight of the per-sample entropy (minimised).
        batch_maximization_weight: weight of the codebook entropy (maximised).
        entropy_across_ranks: average pbar over all ranks (the MAGVIT-2 paper's batch) instead of the local batch
            (the released recipe). The quantizer knows nothing of ranks: the trainer sets `reduce_sum` to its
            differentiable all-reduce when this is on; without one (a single process) the local batch is the
            global batch.
    """

    # A differentiable sum over ranks, set by the trainer when entropy_across_ranks is on (None: local batch).
    reduce_sum: Callable[[torch.Tensor], torch.Tensor] | None = None

    def __init__(self, *, codebook_bits: int = _LFQ.codebook_bits, bit_order: BitOrder = "lsb_first",
                 entropy_temperature: float = _LFQ.entropy_temperature, entropy_eps: float = _LFQ.entropy_eps,
                 sample_minimization_weight: float = _LFQ.sample_minimization_weight,
                 batch_maximization_weight: float = _LFQ.batch_maximization_weight,
                 entropy_across_ranks: bool = _LFQ.entropy_across_ranks) -> None:
        super().__init__()
        # The bounds live in the config schema (one place); constructing it checks them.
        QuantizerConfig(codebook_bits=codebook_bits, entropy_temperature=entropy_temperature, entropy_eps=entropy_eps,
                        sample_minimization_weight=sample_minimization_weight,
                        batch_maximization_weight=batch_maximization_weight, entropy_across_ranks=entropy_across_ranks)
        check(bit_order in BIT_ORDERS, "bit_order", bit_order, "lsb_first (v2/v3 releases) or msb_first (v1)")
        self.codebook_bits = int(codebook_bits)
        self.bit_order = bit_order
        self.entropy_temperature = float(entropy_temperature)
        self.entropy_eps = float(entropy_eps)
        self.sample_minimization_weight = float(sample_minimization_weight)
        self.batch_maximization_weight = float(batch_maximization_weight)
        self.entropy_across_ranks = bool(entropy_across_ranks)

        bits = torch.arange(self.codebook_bits)
        if bit_order == "msb_first":
            bits = self.codebook_bits - 1 - bits
        self.register_buffer("bit_values", 2 ** bits, persistent=False)  # weight of channel k in the index
        half = self.codebook_bits // 2
        if self.computes_entropy:
            self.register_buffer("signs_low", codebook_signs(half), persistent=False)
            self.register_buffer("signs_high", codebook_signs(self.codebook_bits - half), persistent=False)

    @property
    def computes_entropy(self) -> bool:
        """False when both entropy weights are zero (the entropy path is then skipped entirely)."""
        return bool(self.sample_minimization_weight or self.batch_maximization_weight)

    @property
    def codebook_size(self) -> int:
        """2^codebook_bits."""
        return 2 ** self.codebook_bits

    def extra_repr(self) -> str:
        return (f"codebook_bits={self.codebook_bits}, bit_order={self.bit_order}, T={self.entropy_temperature}, "
                f"across_ranks={self.entropy_across_ranks}")

    def codes_to_indices(self, codes: torch.Tensor) -> torch.Tensor:
        """Pack bits (channel > 0) into token indices. codes: `b k h w` or `b k t h w` (any real values).

        Returns `b h w` (or `b t h w`) int64.
        """
        self._check_channels(codes)
        bits = (codes > 0).long()
        bit_values = self.bit_values.to(bits.device).view(-1, *[1] * (codes.ndim - 2))  # `k 1 1` or `k 1 1 1`
        return (bits * bit_values).sum(dim=1)

    def indices_to_codes(self, indices: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Unpack token indices `b h w` or `b t h w` (int) into +-1 codes `b k h w` / `b k t h w`, same bit order."""
        if indices.dtype.is_floating_point or indices.dtype == torch.bool:
            raise TypeError(f"indices must be an integer tensor, got {indices.dtype}; pass the `indices` of encode().")
        if indices.numel() and (int(indices.min()) < 0 or int(indices.max()) >= self.codebook_size):
            raise ValueError(f"indices must lie in [0, {self.codebook_size}) for codebook_bits={self.codebook_bits}; "
                             f"got values in [{int(indices.min())}, {int(indices.max())}].")
        bits = (indices.long()[..., None] // self.bit_values.to(indices.device)) % 2  # `b h w k` or `b t h w k`
        return rearrange(2 * bits - 1, "b ... k -> b k ...").to(dtype)

    def forward(self, z: torch.Tensor, compute_losses: bool | None = None) -> LFQOutput:
        """Quantize `b k h w` image latents or `b k t h w` video latents (then indices are `b t h w`).

        Video latents are quantized as `b k (t h) w`: every (t, h, w) position is one token, and the entropy terms
        run over all of them in (b, t, h, w) order, as the reference's `b d t h w -> b (t h w) d` does.

        compute_losses: compute entropy and commitment (default: in training mode only, as the reference does);
        otherwise they are returned as zeros and no entropy work is done. The entropy terms run in fp32 (fp64 for
        fp64 input) even under autocast.
        """
        if z.ndim == 5:
            frames = z.shape[2]
            out = self.forward(rearrange(z, "b k t h w -> b k (t h) w"), compute_losses)
            return out._replace(quantized=rearrange(out.quantized, "b k (t h) w -> b k t h w", t=frames),
                                indices=rearrange(out.indices, "b (t h) w -> b t h w", t=frames))
        self._check_channels(z)
        ones = torch.ones((), dtype=z.dtype, device=z.device)
        codes = torch.where(z > 0, ones, -ones)
        quantized = z + (codes - z).detach()  # straight-through estimator
        indices = self.codes_to_indices(z)
        if compute_losses is None:
            compute_losses = self.training
        zero = torch.zeros((), dtype=torch.float32, device=z.device)
        if not compute_losses:
            return LFQOutput(quantized, indices, zero, zero, zero, zero)

        compute_dtype = torch.float64 if z.dtype == torch.float64 else torch.float32
        with torch.autocast(device_type=z.device.type, enabled=False):
            z_full = z.to(compute_dtype)
            commitment = F.mse_loss(z_full, codes.detach().to(compute_dtype))
            if not self.computes_entropy:
                return LFQOutput(quantized, indices, zero.to(compute_dtype), zero.to(compute_dtype),
                                 zero.to(compute_dtype), commitment)
            per_sample, codebook = entropy_terms(
                tokens_last(z_full), self.entropy_temperature, self.entropy_eps, self.signs_low, self.signs_high,
                reduce_sum=self.reduce_sum if self.entropy_across_ranks else None)
            entropy_loss = self.sample_minimization_weight * per_sample - self.batch_maximization_weight * codebook
        return LFQOutput(quantized, indices, entropy_loss, per_sample, codebook, commitment)

    def _check_channels(self, z: torch.Tensor) -> None:
        if z.ndim not in (4, 5) or z.shape[1] != self.codebook_bits:
            raise ValueError(f"LFQ expects latents of shape (b, {self.codebook_bits}, h, w) or (b, "
                             f"{self.codebook_bits}, t, h, w), got {tuple(z.shape)}: "
                             f"the encoder's z_channels must equal quantizer.codebook_bits.")
