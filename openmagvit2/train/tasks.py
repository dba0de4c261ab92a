"""Training tasks: what the one loop in `train.py` drives: `task=tokenizer` and `task=video_tokenizer` (the GAN of
Stage I, for images or clips, built here) and `task=generator` (Stage II, `openmagvit2/generation/training.py`). Each task answers the same few questions, so the
loop, checkpoints, pre-emption, logging and launchers are shared.

A task holds its models, losses and optimisers and knows
- how to move a batch to the device and compute its losses (`compute_losses`, no update yet),
- how to apply the updates (`apply_updates`, returning gradient norms to log),
- what a checkpoint holds of it (`checkpointed`: `TrainState`'s shared entries; `extra_state`: plain values),
- its per-step extra scalars (`step_logs`), its evaluation (`evaluate`) and its picture (`save_images`).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol, Sequence

import torch

from openmagvit2.config import RunConfig
from openmagvit2.eval import save_reconstruction_grid
from openmagvit2.eval.video_media import save_clip_grid
from openmagvit2.losses import TokenizerLoss, build_discriminator
from openmagvit2.models import Tokenizer, VideoTokenizer
from openmagvit2.models.video_init import initialise_video_from_checkpoint
from openmagvit2.train.distributed import DistributedContext, cross_rank_reductions
from openmagvit2.train.evaluation import TrainingEvaluator, batch_usage, count_parameters
from openmagvit2.train.init_from import initialise_from_checkpoint
from openmagvit2.train.precision import Precision
from openmagvit2.train.step import GanTraining, StepLosses, apply_updates, build_gan_training, compute_losses


class Task(Protocol):
    optimizers: Sequence[torch.optim.Optimizer]
    base_lrs: Sequence[float]
    notes: list[str]  # start-up lines for the run log (what was built, what was initialised from where)
    loader_options: dict[str, Any]  # what the training data loader must give the task (e.g. labels)

    def throughput(self, samples_per_s: float) -> dict[str, float]: ...

    def to_device(self, batch: Any) -> Any: ...

    def compute_losses(self, batch: Any, step: int) -> Any: ...

    def apply_updates(self, losses: Any) -> dict[str, torch.Tensor]: ...

    def step_logs(self, losses: Any) -> dict[str, torch.Tensor]: ...

    def checkpointed(self) -> dict[str, Any]: ...

    def extra_state(self) -> dict[str, Any]: ...

    def evaluate(self) -> dict[str, float]: ...

    def save_images(self, batch: Any, losses: Any, path: Path) -> Path | None: ...


class TokenizerTask:
    """Stage I: a tokenizer against its discriminator (`openmagvit2.train.step`, one step for both kinds): the image
    tokenizer and the 2D PatchGAN (`task=tokenizer`), or the causal video tokenizer and the 3D PatchGAN on clips
    `b 3 t h w` (`task=video_tokenizer`, REFERENCE-VIDEO §5-6)."""

    def __init__(self, gan: GanTraining, evaluator: TrainingEvaluator, base_lrs: tuple[float, float],
                 notes: list[str]) -> None:
        self.gan, self.evaluator, self.base_lrs, self.notes = gan, evaluator, base_lrs, notes
        self.optimizers = gan.optimizers
        self.device = gan.tokenizer.last_layer.device
        self.video = isinstance(gan.tokenizer, VideoTokenizer)

    @classmethod
    def build(cls, cfg: RunConfig, ctx: DistributedContext, fine_tune: bool) -> "TokenizerTask":
        """Losses first (the perceptual network's weights are checked before any model or data work), then the
        models, the `train.init_from` weights when fine-tuning, the optimisers and wrappers, the val subset.

        Video runs initialise from a video checkpoint, or inflate an image one (`train.init_from`, §4)."""
        sum_over_ranks, mean_over_ranks = cross_rank_reductions(ctx)
        criterion = TokenizerLoss(cfg.loss, reduce_mean=mean_over_ranks).to(ctx.device)
        video = cfg.task.name == "video_tokenizer"
        tokenizer = (VideoTokenizer(**cfg.video_model.to_dict()) if video
                     else Tokenizer.from_config(cfg.model, cfg.quantizer)).to(ctx.device)
        tokenizer.quantizer.reduce_sum = sum_over_ranks
        discriminator = build_discriminator(cfg.loss, video=video).to(ctx.device)
        notes = []
        if fine_tune and cfg.train.init_from:
            initialise = initialise_video_from_checkpoint if video else initialise_from_checkpoint
            notes.append("initialised " + initialise(cfg.train.init_from, tokenizer, discriminator,
                                                     use_ema=cfg.train.init_use_ema))
        gan = build_gan_training(cfg, tokenizer, discriminator, criterion,
                                 Precision(cfg.train.precision, ctx.device), ctx.is_distributed)
        evaluator = TrainingEvaluator(cfg.data, cfg.train.batch_size, cfg.train.eval_images, ctx,
                                      gan.ema.module if gan.ema else tokenizer, criterion.perceptual_loss)
        samples = "clips" if video else "images"
        evaluation = (f"{', '.join(evaluator.metrics)} on {cfg.train.eval_images} {samples}" if evaluator.batches
                      is not None else "none (the data has no validation set)")
        notes.append(f"{'video ' if video else ''}generator {count_parameters(tokenizer) / 1e6:.2f}M parameters, "
                     f"{'3D ' if video else ''}discriminator {count_parameters(discriminator) / 1e6:.2f}M; "
                     f"in-training evaluation: {evaluation}")
        return cls(gan, evaluator, (cfg.optim.lr, cfg.optim.disc_lr), notes)

    loader_options: dict[str, Any] = {}  # image batches (or clips), no labels

    def throughput(self, samples_per_s: float) -> dict[str, float]:
        return {"clips_per_s": samples_per_s} if self.video else {"img_per_s": samples_per_s}

    def to_device(self, batch: torch.Tensor) -> torch.Tensor:
        return batch.to(self.device, non_blocking=True)

    def compute_losses(self, batch: torch.Tensor, step: int) -> StepLosses:
        return compute_losses(self.gan, batch, step)

    def apply_updates(self, losses: StepLosses) -> dict[str, torch.Tensor]:
        return apply_updates(self.gan, losses)

    def step_logs(self, losses: StepLosses) -> dict[str, torch.Tensor]:
        usage = batch_usage(losses.output.quantizer.indices, self.gan.tokenizer.quantizer.codebook_size)
        return {**losses.logs, "codebook/batch_usage": usage}

    def checkpointed(self) -> dict[str, Any]:
        return self.gan.checkpointed()

    def extra_state(self) -> dict[str, Any]:
        return {"tokenizer_hparams": self.gan.tokenizer.hparams,
                "tokenizer_kind": "video_tokenizer" if self.video else "tokenizer"}

    def evaluate(self) -> dict[str, float]:
        return self.evaluator()

    def save_images(self, batch: torch.Tensor, losses: StepLosses, path: Path) -> Path:
        """Originals above their reconstructions: the first 8 images of the batch, or every frame of its first two
        clips (a row of frames per clip, its reconstruction below)."""
        count = 2 if self.video else 8
        reconstruction = losses.output.reconstruction[:count].detach().clamp(-1, 1)
        if self.video:
            return save_clip_grid(batch[:count], reconstruction, path)
        return save_reconstruction_grid(batch[:count], reconstruction, path, nrow=count)


def build_task(cfg: RunConfig, ctx: DistributedContext, fine_tune: bool) -> Task:
    """The task `cfg` trains (`task.name`; `fine_tune`: a fresh run, so `train.init_from` weights are loaded)."""
    if cfg.task.name == "generator":
        from openmagvit2.generation.training import GeneratorTask  # Stage II code loads only when trained

        return GeneratorTask.build(cfg, ctx, fine_tune)
    return TokenizerTask.build(cfg, ctx, fine_tune)
