"""`TokenizerLoss`: the generator and discriminator objectives of the Open-MAGVIT2 recipe.

Generator: L1 + perceptual_weight * LPIPS + g_weight * non-saturating GAN loss
           + codebook_weight * enlarge(step) * entropy loss + commit_weight * commitment.
Discriminator: hinge + lecam_weight * LeCam, on detached images.

The same objective trains the video tokenizer (REFERENCE-VIDEO §5): on clips `b 3 t h w`, L1 and LPIPS are means over
every frame (LPIPS sees the frames as a `(b t) 3 h w` batch) and the discriminator is the 3D one, run on whole clips.

The discriminator itself is not owned here (the trainer wraps it in DDP and passes it in); this module holds the
frozen LPIPS network and the LeCam EMA buffers. LPIPS is left out of `state_dict()` (it is reloadable from the
`lpips` package and torchvision's cache) and is filled back in from the live network on `load_state_dict()`, so
training checkpoints only carry the LeCam state.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Callable, Protocol

import torch
from einops import rearrange
from torch import nn

from openmagvit2.losses.adversarial import (adaptive_generator_weight, adopt_weight, hinge_d_loss,
                                            non_saturating_g_loss)
from openmagvit2.losses.config import LossConfig
from openmagvit2.losses.lecam import LeCamEMA
from openmagvit2.losses.perceptual import build_perceptual_loss, freeze

PERCEPTUAL = "perceptual_loss"


class QuantizerLosses(Protocol):
    """The fields of the LFQ output this loss reads (scalar tensors)."""

    entropy_loss: torch.Tensor
    per_sample_entropy: torch.Tensor
    codebook_entropy: torch.Tensor
    commitment: torch.Tensor


class TokenizerLoss(nn.Module):
    """The recipe's losses; see the module docstring for the formulas and `LossConfig` for the keys.

    `perceptual` overrides the LPIPS network built from the config (e.g. `build_perceptual_loss(False)` in tests);
    it is ignored, and no network is built, when `loss.perceptual_weight` is 0. `reduce_mean` is the trainer's
    mean over ranks (None in one process): the LeCam EMA and the adaptive weight then use the global batch.
    """

    def __init__(self, loss_cfg: Mapping[str, Any] | Any = None, perceptual: nn.Module | None = None,
                 reduce_mean: Callable[[torch.Tensor], torch.Tensor] | None = None) -> None:
        super().__init__()
        self.reduce_mean = reduce_mean
        self.config = loss_cfg if isinstance(loss_cfg, LossConfig) else LossConfig.from_config(loss_cfg)
        if self.config.perceptual_weight > 0:
            network = perceptual if perceptual is not None else build_perceptual_loss()
            self.perceptual_loss: nn.Module | None = freeze(network)
        else:
            self.perceptual_loss = None
        self.lecam = LeCamEMA(self.config.lecam_decay, reduce_mean)
        self.register_state_dict_post_hook(_drop_perceptual_keys)
        self.register_load_state_dict_pre_hook(_fill_perceptual_keys)

    def train(self, mode: bool = True) -> "TokenizerLoss":
        """Switch mode, keeping LPIPS in eval mode (its heads have dropout layers)."""
        super().train(mode)
        if self.perceptual_loss is not None:
            self.perceptual_loss.eval()
        return self

    def codebook_scale(self, step: int) -> float:
        """1 + codebook_enlarge_ratio * max(0, 1 - step / codebook_enlarge_steps): the entropy term's multiplier."""
        ratio = self.config.codebook_enlarge_ratio
        return 1.0 + ratio * max(0.0, 1.0 - step / self.config.codebook_enlarge_steps) if ratio > 0 else 1.0

    def generator_loss(self, images: torch.Tensor, reconstruction: torch.Tensor, quantizer_out: QuantizerLosses,
                       discriminator: nn.Module, step: int,
                       last_layer: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The generator's objective for one batch of `b 3 h w` images (or `b 3 t h w` clips) and reconstructions.

        `discriminator` is the plain module (its parameters' requires_grad off, set by the trainer). `last_layer`
        (the decoder's `conv_out.weight`) is needed only for the adaptive weight (`loss.gen_loss_weight: null`);
        without autograd (e.g. validation under `torch.no_grad`) that weight is reported as 0, as in the reference.
        Returns the scalar total and detached scalar logs; `gen_weight` is the effective multiplier of `loss/gen`
        in `loss/g_total` (0 before `loss.disc_start`).
        """
        cfg = self.config
        l1 = (images.float() - reconstruction.float()).abs().mean()
        if self.perceptual_loss is not None:
            perceptual = self.perceptual_loss(frames(images), frames(reconstruction)).mean()
        else:
            perceptual = torch.zeros((), device=images.device)
        nll = l1 + cfg.perceptual_weight * perceptual

        if adopt_weight(step, cfg.disc_start) > 0:
            gen = non_saturating_g_loss(discriminator(reconstruction))
            gen_weight = self._gen_weight(nll, gen, last_layer)
            adversarial = gen_weight * gen
        else:
            # Before disc_start the reference multiplies the term by 0; leaving it out is the same gradient, saves
            # the backward through D, and cannot turn a non-finite logit into a NaN loss. Still logged.
            with torch.no_grad():
                gen = non_saturating_g_loss(discriminator(reconstruction))
            gen_weight = torch.zeros((), device=images.device)
            adversarial = torch.zeros((), device=images.device)

        entropy = quantizer_out.entropy_loss
        commitment = quantizer_out.commitment
        total = (nll + adversarial + cfg.codebook_weight * self.codebook_scale(step) * entropy
                 + cfg.commit_weight * commitment)
        logs = {
            "loss/l1": l1, "loss/perceptual": perceptual, "loss/nll": nll, "loss/gen": gen,
            "loss/entropy": entropy, "loss/commitment": commitment, "loss/g_total": total,
            "gen_weight": gen_weight, "entropy/per_sample": quantizer_out.per_sample_entropy,
            "entropy/codebook": quantizer_out.codebook_entropy,
        }
        return total, _detached(logs)

    def _gen_weight(self, nll: torch.Tensor, gen: torch.Tensor, last_layer: torch.Tensor | None) -> torch.Tensor:
        if self.config.gen_loss_weight is not None:
            return torch.tensor(float(self.config.gen_loss_weight), device=nll.device)
        if not (torch.is_grad_enabled() and nll.requires_grad and gen.requires_grad):
            return torch.zeros((), device=nll.device)
        if last_layer is None:
            raise ValueError("loss.gen_loss_weight=null (adaptive weight) needs last_layer: pass the decoder's "
                             "conv_out.weight to generator_loss, or set loss.gen_loss_weight to a number.")
        return adaptive_generator_weight(nll, gen, last_layer, self.config.disc_weight, self.reduce_mean)

    def discriminator_loss(self, images: torch.Tensor, reconstruction: torch.Tensor, discriminator: nn.Module,
                           step: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The discriminator's objective: hinge + lecam_weight * LeCam on detached `b 3 h w` images.

        Real and fake go through two separate forwards, as in the reference, so that BatchNorm normalises each
        with its own statistics. The LeCam EMA is updated first (also before `loss.disc_start`) and the
        regulariser uses the updated values, as in the reference. Before `loss.disc_start` the total is multiplied
        by 0 (kept in the graph so a DDP-wrapped discriminator still sees a backward).
        """
        logits_real = discriminator(images.detach())
        logits_fake = discriminator(reconstruction.detach())
        self.lecam.update(logits_real, logits_fake)
        hinge = hinge_d_loss(logits_real, logits_fake)
        lecam = self.lecam.regularizer(logits_real, logits_fake)
        total = adopt_weight(step, self.config.disc_start) * (hinge + self.config.lecam_weight * lecam)
        logs = {
            "loss/d_total": total, "loss/hinge": hinge, "loss/lecam": lecam,
            "logits/real": logits_real.mean(), "logits/fake": logits_fake.mean(),
            "lecam/ema_real": self.lecam.ema_real, "lecam/ema_fake": self.lecam.ema_fake,
        }
        return total, _detached(logs)


def frames(batch: torch.Tensor) -> torch.Tensor:
    """Images as they are; clips `b c t h w` as their frames `(b t) c h w` (for the per-frame perceptual loss)."""
    return rearrange(batch, "b c t h w -> (b t) c h w") if batch.ndim == 5 else batch


def _detached(logs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {name: value.detach().float().clone() for name, value in logs.items()}


def _drop_perceptual_keys(module: nn.Module, state_dict: dict[str, Any], prefix: str, local_metadata: Any) -> None:
    for key in [key for key in state_dict if key.startswith(f"{prefix}{PERCEPTUAL}.")]:
        del state_dict[key]


def _fill_perceptual_keys(module: nn.Module, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
    network = getattr(module, PERCEPTUAL)
    if network is None:
        return
    for name, tensor in network.state_dict().items():
        state_dict.setdefault(f"{prefix}{PERCEPTUAL}.{name}", tensor)
