"""One training step of the tokenizer GAN, shared by `train.py` and `bench/train_step.py` (no second copy).

A step is split in two so that the loop can make one collective stop decision between them:
- `compute_losses`: the generator forward and its loss (discriminator frozen), then the discriminator's loss on the
  detached reconstruction (no second generator forward). No parameter is updated yet.
- `apply_updates`: generator backward and optimiser step, discriminator backward and step, EMA.

The discriminator runs every step. `loss.disc_start` is owned by the loss alone (`TokenizerLoss`): before it, the
adversarial terms are multiplied by 0 and the LeCam EMA still moves, as in the reference (Open-MAGVIT2
`vqperceptual.py`), and the discriminator's BatchNorm statistics see real images as well as reconstructions.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterable, NamedTuple

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from openmagvit2.losses import TokenizerLoss
from openmagvit2.models.tokenizer import TokenizerOutput
from openmagvit2.train.ema import ModelEMA
from openmagvit2.train.precision import Precision


@dataclass
class GanTraining:
    """The nouns of one tokenizer training step: raw and wrapped (DDP / compiled) models, loss, optimisers."""

    tokenizer: nn.Module  # raw Tokenizer or VideoTokenizer: parameters, EMA, checkpoints
    tokenizer_ddp: nn.Module  # what runs the forward: DDP and/or torch.compile around `tokenizer`
    discriminator: nn.Module  # 2D PatchGAN for images, 3D for clips
    discriminator_ddp: nn.Module
    criterion: TokenizerLoss
    opt_g: torch.optim.Optimizer
    opt_d: torch.optim.Optimizer
    scaler_g: torch.amp.GradScaler
    scaler_d: torch.amp.GradScaler
    precision: Precision
    ema: ModelEMA | None = None
    grad_clip: float | None = None
    channels_last: bool = False

    @property
    def optimizers(self) -> tuple[torch.optim.Optimizer, torch.optim.Optimizer]:
        return self.opt_g, self.opt_d

    def checkpointed(self) -> dict[str, Any]:
        """What a checkpoint holds of this task (`TrainState`'s shared entries), under the file format's keys.

        `generator_ema` is the EMA's shadow model (read by `Tokenizer.from_checkpoint`), `ema` its counter.
        """
        return {"generator": self.tokenizer, "generator_ema": self.ema.module if self.ema else None,
                "ema": self.ema, "discriminator": self.discriminator, "loss": self.criterion,
                "opt_g": self.opt_g, "opt_d": self.opt_d, "scaler_g": self.scaler_g, "scaler_d": self.scaler_d}


class StepLosses(NamedTuple):
    """What `compute_losses` returns: both losses (graphs attached), detached logs, and the generator output."""

    images: torch.Tensor
    output: TokenizerOutput
    g_loss: torch.Tensor
    d_loss: torch.Tensor
    logs: dict[str, torch.Tensor]

    def non_finite(self) -> torch.Tensor:
        """A 0-dim bool tensor on the device (no host sync): either loss is NaN or infinite."""
        return ~(torch.isfinite(self.g_loss) & torch.isfinite(self.d_loss))


def compute_losses(gan: GanTraining, images: torch.Tensor, step: int) -> StepLosses:
    """Forward both players on one batch, images `b 3 h w` or clips `b 3 t h w` in [-1, 1]; nothing is updated.

    Buffers a forward moves (the discriminator's BatchNorm statistics, the LeCam EMA) do move; when the loop then
    stops on a non-finite loss it saves nothing, so they never reach a checkpoint.
    """
    if gan.channels_last:
        images = images.contiguous(memory_format=gan.tokenizer.memory_format)
    gan.discriminator.requires_grad_(False)  # the generator's adversarial term must not train D
    with gan.precision.autocast():
        output = gan.tokenizer_ddp(images)
        g_loss, g_logs = gan.criterion.generator_loss(images, output.reconstruction, output.quantizer,
                                                      gan.discriminator, step,
                                                      last_layer=gan.tokenizer.last_layer)
    gan.discriminator.requires_grad_(True)
    with gan.precision.autocast():
        d_loss, d_logs = gan.criterion.discriminator_loss(images, output.reconstruction.detach(),
                                                          gan.discriminator_ddp, step)
    return StepLosses(images, output, g_loss, d_loss, {**g_logs, **d_logs})


def apply_updates(gan: GanTraining, losses: StepLosses) -> dict[str, torch.Tensor]:
    """Backward and step the generator, then the discriminator, then the EMA; returns the pre-clip grad norms.

    The generator goes first: its graph passes through the (frozen) discriminator, whose weights must not have
    changed in place before that backward.
    """
    gan.opt_g.zero_grad(set_to_none=True)
    gan.scaler_g.scale(losses.g_loss).backward()
    g_norm = clip_and_step(gan.opt_g, gan.scaler_g, gan.tokenizer.parameters(), gan.grad_clip)
    gan.opt_d.zero_grad(set_to_none=True)
    gan.scaler_d.scale(losses.d_loss).backward()
    d_norm = clip_and_step(gan.opt_d, gan.scaler_d, gan.discriminator.parameters(), gan.grad_clip)
    if gan.ema is not None:
        gan.ema.update(gan.tokenizer)
    return {"grad_norm/generator": g_norm, "grad_norm/discriminator": d_norm}


def training_step(gan: GanTraining, images: torch.Tensor, step: int) -> StepLosses:
    """`compute_losses` then `apply_updates`, for single-process callers (the benchmark); raises on a NaN loss."""
    losses = compute_losses(gan, images, step)
    if bool(losses.non_finite()):
        raise FloatingPointError(f"non-finite loss at step {step} ({gan.precision.name}): "
                                 f"{format_logs(losses.logs)}")
    apply_updates(gan, losses)
    return losses


def clip_and_step(optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler, parameters: Iterable[nn.Parameter],
                  max_norm: float | None) -> torch.Tensor:
    """Unscale, measure (and optionally clip) the gradient norm, then step; returns the pre-clip norm."""
    scaler.unscale_(optimizer)
    with_grad = [p for p in parameters if p.grad is not None]
    norm = torch.nn.utils.clip_grad_norm_(with_grad, max_norm if max_norm is not None else math.inf)
    scaler.step(optimizer)
    scaler.update()
    return norm.detach()


def set_learning_rates(optimizers: Iterable[torch.optim.Optimizer], base_lrs: Iterable[float],
                       multiplier: float) -> None:
    """lr = base lr x the schedule's multiplier, for every parameter group of each optimiser."""
    for optimizer, base_lr in zip(optimizers, base_lrs, strict=True):
        for group in optimizer.param_groups:
            group["lr"] = base_lr * multiplier


def format_logs(logs: dict[str, torch.Tensor]) -> str:
    """`key=value` pairs for a one-line message (a host sync per value: for error messages only)."""
    return " ".join(f"{k}={float(v):.4g}" for k, v in sorted(logs.items()))


def build_gan_training(cfg: Any, tokenizer: nn.Module, discriminator: nn.Module, criterion: TokenizerLoss,
                       precision: Precision, distributed: bool) -> GanTraining:
    """Memory format, EMA, optimisers, scalers and the DDP / compile wrappers around built (and initialised) models.

    The EMA copies `tokenizer` as it is now, so call this after any `train.init_from` weights are loaded.
    """
    if cfg.train.channels_last:  # channels_last for images, channels_last_3d for clips
        tokenizer.to(memory_format=tokenizer.memory_format)
        discriminator.to(memory_format=tokenizer.memory_format)
    ema = ModelEMA(tokenizer, cfg.train.ema_decay) if cfg.train.ema_decay is not None else None
    betas = tuple(cfg.optim.betas)
    opt_g = torch.optim.Adam(tokenizer.parameters(), lr=cfg.optim.lr, betas=betas, weight_decay=cfg.optim.weight_decay)
    opt_d = torch.optim.Adam(discriminator.parameters(), lr=cfg.optim.disc_lr, betas=betas,
                             weight_decay=cfg.optim.weight_decay)
    tokenizer_ddp = DistributedDataParallel(tokenizer) if distributed else tokenizer
    discriminator_ddp = DistributedDataParallel(discriminator) if distributed else discriminator
    if cfg.train.compile:
        tokenizer_ddp = torch.compile(tokenizer_ddp)
    return GanTraining(tokenizer, tokenizer_ddp, discriminator, discriminator_ddp, criterion, opt_g, opt_d,
                       precision.make_scaler(), precision.make_scaler(), precision, ema, cfg.train.grad_clip,
                       cfg.train.channels_last)
