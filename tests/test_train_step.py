"""The shared training step (`openmagvit2.train.step`): the loss owns `disc_start`, both losses are checked."""
from __future__ import annotations

import math

import pytest
import torch

from conftest import FAST, compose_config
from openmagvit2.losses import TokenizerLoss, build_discriminator
from openmagvit2.models import Tokenizer
from openmagvit2.train.distributed import DistributedContext, flags_across_ranks
from openmagvit2.train.precision import Precision
from openmagvit2.train.step import build_gan_training, compute_losses, training_step

CPU = DistributedContext(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))


def tiny_gan(overrides: list[str]):
    cfg = compose_config(FAST + ["optim.weight_decay=0"] + overrides)
    torch.manual_seed(0)
    tokenizer = Tokenizer.from_config(cfg.model, cfg.quantizer)
    discriminator = build_discriminator(cfg.loss)
    criterion = TokenizerLoss(cfg.loss)
    return build_gan_training(cfg, tokenizer, discriminator, criterion, Precision("fp32", CPU.device), False)


def images(batch: int = 2, size: int = 32) -> torch.Tensor:
    return torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(1)) * 2 - 1


def test_before_disc_start_the_discriminator_runs_but_does_not_move_and_lecam_ema_does() -> None:
    gan = tiny_gan(["loss.disc_start=100"])
    before = {k: v.clone() for k, v in gan.discriminator.state_dict().items() if "running" not in k}
    for step in range(2):
        losses = training_step(gan, images(), step)
    assert losses.d_loss.item() == 0.0 and losses.logs["loss/hinge"].item() > 0  # computed, multiplied by 0
    after = gan.discriminator.state_dict()
    for key, value in before.items():
        if value.is_floating_point():
            assert torch.equal(value, after[key]), key  # Adam with zero gradients leaves the weights
    assert gan.criterion.lecam.ema_real.item() != 0.0  # the EMA moves from step 0, as in the reference


def test_after_disc_start_the_discriminator_trains() -> None:
    gan = tiny_gan(["loss.disc_start=0"])
    before = {k: v.clone() for k, v in gan.discriminator.state_dict().items()}
    training_step(gan, images(), 0)
    assert any(not torch.equal(v, gan.discriminator.state_dict()[k]) for k, v in before.items()
               if v.is_floating_point() and "running" not in k)


class NaNLogits(torch.nn.Module):
    """NaN logits on detached inputs (the discriminator step's), finite ones on the generator's graph."""

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.inner(x)
        return out * math.nan if not x.requires_grad and x.grad_fn is None else out


def test_a_non_finite_discriminator_loss_is_caught_like_a_generator_one() -> None:
    gan = tiny_gan(["loss.disc_start=0"])
    gan.discriminator_ddp = NaNLogits(gan.discriminator)
    losses = compute_losses(gan, images(), 0)
    assert torch.isfinite(losses.g_loss) and not torch.isfinite(losses.d_loss)
    assert bool(losses.non_finite())
    with pytest.raises(FloatingPointError, match="non-finite loss"):
        training_step(gan, images(), 0)


def test_stop_flags_take_tensors_and_bools_in_one_call() -> None:
    assert flags_across_ranks([torch.tensor(False), True], CPU) == [False, True]
    assert flags_across_ranks([torch.tensor(True), False], CPU) == [True, False]
