"""Codebook usage: a histogram of token ids kept on the device (one scatter-add per batch, no per-token Python)."""
from __future__ import annotations

import torch

from openmagvit2.eval.batch import EvalBatch, Metric


class CodebookUsage(Metric):
    """Counts every token id over the evaluated set.

    Reports `usage` (fraction of the `codebook_size` codes hit at least once, the published "utilisation"),
    `codes_used` (their number) and `perplexity` (exp of the entropy of the code histogram, in codes: equals
    `codebook_size` for perfectly uniform use).
    """

    def __init__(self, codebook_size: int, device: torch.device) -> None:
        if codebook_size < 1:
            raise ValueError(f"codebook_size must be positive, got {codebook_size}.")
        self.codebook_size = codebook_size
        self.counts = torch.zeros(codebook_size, dtype=torch.int64, device=device)

    def update(self, batch: EvalBatch) -> None:
        ids = batch.indices.reshape(-1).long()
        if ids.numel() == 0:
            return
        low, high = (int(v) for v in torch.aminmax(ids))
        if low < 0 or high >= self.codebook_size:
            raise ValueError(f"token ids span [{low}, {high}], outside the codebook of {self.codebook_size} codes; "
                             f"pass the tokenizer's real codebook size (2 ** quantizer.codebook_bits).")
        # O(tokens) scatter into the running histogram: a per-batch bincount(minlength=2^18) would touch all 2^18
        # counters every batch, which costs more than the tokens themselves at small batches.
        self.counts.index_add_(0, ids, torch.ones_like(ids))

    def state(self) -> list[torch.Tensor]:
        return [self.counts]

    def compute(self) -> dict[str, float]:
        counts = self.counts.double()
        probabilities = counts / counts.sum()
        entropy = -torch.special.xlogy(probabilities, probabilities).sum()
        used = int((self.counts > 0).sum().item())
        return {"usage": used / self.codebook_size, "codes_used": float(used), "perplexity": entropy.exp().item()}
