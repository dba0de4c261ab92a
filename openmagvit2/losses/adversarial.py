"""GAN objectives of the recipe: hinge loss for D, non-saturating loss for G, and the VQGAN adaptive weight."""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from einops import reduce


def hinge_d_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    """0.5 * (mean relu(1 - D(x)) + mean relu(1 + D(x_hat))) over all patches of `b 1 h w` logits (in float32)."""
    return 0.5 * (F.relu(1.0 - logits_real.float()).mean() + F.relu(1.0 + logits_fake.float()).mean())


def non_saturating_g_loss(logits_fake: torch.Tensor) -> torch.Tensor:
    """-log sigmoid(mean of each image's patch logits), averaged over the batch.

    `b 1 h w` logits are averaged per image first (not per patch), as the reference's `non_saturate_gen_loss`;
    computed in float32 whatever the autocast dtype.
    """
    per_image = reduce(logits_fake.float(), "b ... -> b", "mean")
    return F.binary_cross_entropy_with_logits(per_image, torch.ones_like(per_image))


def adopt_weight(step: int, start: int) -> float:
    """1.0 from step `start` on, 0.0 before: gates the adversarial terms (`loss.disc_start`)."""
    return 1.0 if step >= start else 0.0


def adaptive_generator_weight(nll_loss: torch.Tensor, gen_loss: torch.Tensor, last_layer: torch.Tensor,
                              disc_weight: float,
                              reduce_mean: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
    """VQGAN's balance ||grad nll|| / (||grad gen|| + 1e-4), clamped to [0, 1e4], times `disc_weight` (detached).

    Gradients are taken w.r.t. `last_layer` (the decoder's `conv_out.weight`). With `reduce_mean` (the trainer's
    mean over ranks) both gradients are averaged over ranks before the norms (a deliberate change from the reference, which uses the
    per-rank gradients): every rank then applies the same weight, the one a single process would compute on the
    global batch, so multi-GPU runs match single-GPU ones.
    """
    (nll_grad,) = torch.autograd.grad(nll_loss, last_layer, retain_graph=True)
    (gen_grad,) = torch.autograd.grad(gen_loss, last_layer, retain_graph=True)
    if reduce_mean is not None:
        nll_grad, gen_grad = reduce_mean(torch.stack([nll_grad, gen_grad]))
    weight = torch.linalg.vector_norm(nll_grad) / (torch.linalg.vector_norm(gen_grad) + 1e-4)
    return weight.clamp(0.0, 1e4).detach() * disc_weight
