"""LeCam regularisation (Tseng et al., 2021) with the EMA state kept as buffers so that it is checkpointed."""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

Reduction = Callable[[torch.Tensor], torch.Tensor]


class LeCamEMA(nn.Module):
    """EMAs of the discriminator's mean real and fake logits, and the LeCam regulariser against them.

    The reference keeps these as Python floats (`.item()`, a device sync every step) that are lost on resume; here
    they are persistent float32 buffers `ema_real` / `ema_fake`, initialised to 0 as in the reference.
    """

    def __init__(self, decay: float = 0.999, reduce_mean: Reduction | None = None) -> None:
        super().__init__()
        self.reduce_mean = reduce_mean
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"LeCam decay={decay!r} is invalid: expected a number in [0, 1), e.g. 0.999.")
        self.decay = decay
        self.register_buffer("ema_real", torch.zeros((), dtype=torch.float32))
        self.register_buffer("ema_fake", torch.zeros((), dtype=torch.float32))

    @torch.no_grad()
    def update(self, logits_real: torch.Tensor, logits_fake: torch.Tensor) -> None:
        """ema <- decay * ema + (1 - decay) * mean logit, for real and fake (`b 1 h w` logits).

        Deliberate change from the reference: with `reduce_mean` (the trainer's mean over ranks) the mean logits
        are averaged over ranks first (one all-reduce of 2 numbers), so every rank holds the same EMA, the one a
        single process would hold with the global batch; the state is then identical on every rank and safe to
        checkpoint from rank 0. The reference updates a separate EMA per rank from its local batch.
        """
        means = torch.stack([logits_real.detach().float().mean(), logits_fake.detach().float().mean()])
        if self.reduce_mean is not None:
            means = self.reduce_mean(means)
        means = means.to(self.ema_real.device)
        self.ema_real.mul_(self.decay).add_(means[0], alpha=1.0 - self.decay)
        self.ema_fake.mul_(self.decay).add_(means[1], alpha=1.0 - self.decay)

    def regularizer(self, logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
        """mean(relu(D(x) - ema_fake)^2) + mean(relu(ema_real - D(x_hat))^2), the reference's `lecam_reg`.

        Computed in float32 whatever the autocast dtype (the EMAs are float32).
        """
        ema_real, ema_fake = self.ema_real.to(logits_real.device), self.ema_fake.to(logits_real.device)
        return (F.relu(logits_real.float() - ema_fake).pow(2).mean()
                + F.relu(ema_real - logits_fake.float()).pow(2).mean())

    def extra_repr(self) -> str:
        return f"decay={self.decay}"
