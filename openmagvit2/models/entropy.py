"""Exact MAGVIT-2 entropy terms of a lookup-free quantizer, without materialising the `N x 2^K` table.

The reference (Open-MAGVIT2) computes, for tokens z_n in R^K and all codes c in {-1, 1}^K,

    p_n = softmax_c(2 <z_n, c> / T)
    per_sample_entropy = mean_n H(p_n)
    codebook_entropy   = -sum_c pbar_c log(pbar_c + eps),   pbar = mean_n p_n

with a dense `N x 2^K` tensor (N MiB per fp32 copy at K = 18). Because <z_n, c> is a sum over bits, p_n is a
product of independent bits: p_n(c) = prod_k sigmoid(c_k x_nk) with x = 4 z / T. Hence

- per-sample entropy = mean_n sum_k h(sigmoid(x_nk)), with h(sigmoid(x)) = softplus(x) - x sigmoid(x) (O(NK));
- splitting the bits into halves A (channels [0, K_A)) and B, p_n(a, b) = PA[n, a] PB[n, b] where PA is the softmax
  over the 2^K_A half codes, so pbar = PA^T PB / N: one matrix product, O(N 2^(K/2) + 2^K) memory.

Both are the same numbers as the dense formula (to rounding), and autograd gives the same gradients.
"""
from __future__ import annotations

from typing import Callable

import torch
from einops import rearrange

# The joint table has 2^K entries; past 2^28 (1 GiB per fp32 copy, several copies with autograd) it stops fitting.
MAX_ENTROPY_BITS = 28


def codebook_signs(bits: int, dtype: torch.dtype = torch.float32, device: torch.device | str | None = None
                   ) -> torch.Tensor:
    """All 2^bits codes as +-1, LSB first: row j has +1 at column k iff bit k of j is set. Shape: `2^bits bits`."""
    index = torch.arange(2 ** bits, device=device)
    set_bits = (index[:, None] >> torch.arange(bits, device=device)) & 1
    return (2 * set_bits - 1).to(dtype)


def entropy_memory_bytes(codebook_bits: int, num_tokens: int, bytes_per_value: int = 4) -> int:
    """Rough peak bytes of the factorised entropy (forward + backward): ~4 copies of the half tables and the joint table."""
    half_a = 2 ** (codebook_bits // 2)
    half_b = 2 ** (codebook_bits - codebook_bits // 2)
    return 4 * bytes_per_value * (num_tokens * (half_a + half_b) + 2 ** codebook_bits)


def check_entropy_bits(codebook_bits: int) -> None:
    """Refuse codebooks whose exact entropy cannot fit in memory, naming the need, before any work starts."""
    if codebook_bits > MAX_ENTROPY_BITS:
        need_gib = entropy_memory_bytes(codebook_bits, num_tokens=0) / 2 ** 30
        raise ValueError(
            f"the exact codebook entropy at codebook_bits={codebook_bits} needs a 2^{codebook_bits}-entry table "
            f"(~{need_gib:.0f} GiB with gradients); use codebook_bits <= {MAX_ENTROPY_BITS} or set "
            f"sample_minimization_weight and batch_maximization_weight to 0.")


def per_sample_entropy(logit_gaps: torch.Tensor) -> torch.Tensor:
    """Mean over tokens of the entropy of p_n, as a sum of binary entropies.

    logit_gaps: `n k`, x = 4 z / T (log-odds of bit k being +1). Returns a scalar (nats).
    h(sigmoid(x)) = softplus(x) - x sigmoid(x) is written with a = |x| as log1p(exp(-a)) + a sigmoid(-a): two
    positive terms, no cancellation and no overflow (F.softplus would also switch to its linear branch past x = 20
    and lose the tail that carries the gradient).
    """
    magnitude = logit_gaps.abs()
    bit_entropy = torch.log1p(torch.exp(-magnitude)) + magnitude * torch.sigmoid(-magnitude)
    return bit_entropy.sum(dim=-1).mean()


def half_code_distributions(z: torch.Tensor, temperature: float, signs_a: torch.Tensor, signs_b: torch.Tensor
                            ) -> tuple[torch.Tensor, torch.Tensor]:
    """Marginals of p_n over the low and high halves of the bits.

    z: `n k`; signs_a: `2^ka ka`, signs_b: `2^kb kb` (k = ka + kb). Returns PA `n 2^ka` and PB `n 2^kb`, each row a
    softmax over that half's codes of 2 <z_half, c> / T (the exact marginal, since the bits are independent).
    """
    bits_a = signs_a.shape[1]
    prob_a = torch.softmax(2.0 * (z[:, :bits_a] @ signs_a.T) / temperature, dim=-1)
    prob_b = torch.softmax(2.0 * (z[:, bits_a:] @ signs_b.T) / temperature, dim=-1)
    return prob_a, prob_b


def codebook_entropy(prob_a: torch.Tensor, prob_b: torch.Tensor, eps: float,
                     reduce_sum: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
    """-sum_c pbar_c log(pbar_c + eps) with pbar = PA^T PB / N (the reference's `log(p + eps)` form).

    prob_a: `n 2^ka`, prob_b: `n 2^kb`. With `reduce_sum` (a differentiable sum over ranks, passed in by the
    trainer) the unnormalised joint table and the token count are summed over ranks first, so pbar is the mean over
    the global batch (weighted by each rank's token count). Returns a scalar (nats).
    """
    joint = prob_a.T @ prob_b  # `2^ka 2^kb`, sum over tokens of p_n(a, b)
    count = torch.tensor(float(prob_a.shape[0]), dtype=joint.dtype, device=joint.device)
    if reduce_sum is not None:
        joint, count = reduce_sum(joint), reduce_sum(count)
    mean_prob = joint / count
    return -(mean_prob * torch.log(mean_prob + eps)).sum()


def entropy_terms(z: torch.Tensor, temperature: float, eps: float, signs_a: torch.Tensor, signs_b: torch.Tensor,
                  reduce_sum: Callable[[torch.Tensor], torch.Tensor] | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """(per-sample entropy, codebook entropy) of tokens `n k`, exact and factorised. Same dtype as z.

    `reduce_sum`: see `codebook_entropy` (the per-sample term is a mean over local tokens either way)."""
    per_sample = per_sample_entropy(4.0 * z / temperature)
    prob_a, prob_b = half_code_distributions(z, temperature, signs_a.to(z.dtype), signs_b.to(z.dtype))
    return per_sample, codebook_entropy(prob_a, prob_b, eps, reduce_sum)


def tokens_last(z: torch.Tensor) -> torch.Tensor:
    """`b k h w -> (b h w) k`: one row per token, in row-major (h, w) order."""
    return rearrange(z, "b k h w -> (b h w) k")


__all__ = [
    "MAX_ENTROPY_BITS", "check_entropy_bits", "codebook_entropy", "codebook_signs", "entropy_memory_bytes",
    "entropy_terms", "half_code_distributions", "per_sample_entropy", "tokens_last",
]
