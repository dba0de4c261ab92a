"""Train a MAGVIT-2 tokenizer (encoder -> lookup-free quantizer -> decoder) against a PatchGAN discriminator.

    python train.py experiment=demo                                  # CPU, a few minutes
    torchrun --nproc_per_node=8 train.py experiment=in256_large      # one node
    python -m openmagvit2.launch submit cluster=slurm_32gpu experiment=in256_large   # 32 GPUs under SLURM
    python train.py -m loss.perceptual_weight=0.1,1.0                # a Hydra multirun sweep

The story, top to bottom: validate the config, set up processes, build data, models, losses and optimisers, resume
if the run directory has a checkpoint, then for each batch one generator step and one discriminator step, with
logging, images, evaluation and checkpoints on a fixed cadence. Pre-emption (SIGUSR1/SIGTERM) checkpoints and exits
with code 75 so that the launcher requeues the job; the requeued job resumes here.
"""
from __future__ import annotations

import random
import sys
import time
from pathlib import Path

import hydra
import numpy as np
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from openmagvit2.config import ConfigError, validate_config
from openmagvit2.data import build_train_loader
from openmagvit2.eval import save_reconstruction_grid
from openmagvit2.losses import TokenizerLoss, build_discriminator
from openmagvit2.models import Tokenizer
from openmagvit2.train import checkpoint
from openmagvit2.train.distributed import (agree_on_run_dir, barrier, cross_rank_reductions, flags_across_ranks,
                                           init_distributed, mean_across_ranks, shutdown_distributed)
from openmagvit2.train.evaluation import TrainingEvaluator, batch_usage, count_parameters
from openmagvit2.train.init_from import initialise_from_checkpoint
from openmagvit2.train.precision import Precision
from openmagvit2.train.resume import check_resume
from openmagvit2.train.schedule import lr_multiplier
from openmagvit2.train.signals import REQUEUE_EXIT_CODE, PreemptionFlag, stop_when_parent_dies
from openmagvit2.train.state import TrainState
from openmagvit2.train.step import apply_updates, build_gan_training, compute_losses, format_logs, set_learning_rates
from openmagvit2.train.tracking import Tracker, write_json
from openmagvit2.weights import MissingWeightsError

COMPLETED_MARKER = "COMPLETED"


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> None:
    try:
        validate_config(cfg)
        # Handlers go in first: a pre-emption warning during start-up is honoured at the first step boundary.
        with PreemptionFlag() as preemption:
            exit_code = train(cfg, Path(HydraConfig.get().runtime.output_dir), wandb_names(cfg), preemption)
    except (ConfigError, MissingWeightsError) as error:
        print(f"error: {error}", file=sys.stderr)
        exit_code = 2
    except KeyboardInterrupt:  # a second Ctrl-C: the first one asks for a checkpoint at the next step boundary
        print("interrupted: stopped without saving (one Ctrl-C saves a checkpoint first)", file=sys.stderr)
        exit_code = 130
    if exit_code:
        sys.exit(exit_code)


def wandb_names(cfg: DictConfig) -> dict[str, str | None]:
    """Jobs of one multirun sweep share a W&B group named after the sweep directory, and each run is named by
    its overrides (e.g. `loss.perceptual_weight=0.1`), so the dashboard reads like the sweep."""
    hydra_cfg = HydraConfig.get()
    if hydra_cfg.mode != RunMode.MULTIRUN:
        return {"group": cfg.logger.group, "name": cfg.logger.name}
    sweep_group = str(Path(hydra_cfg.sweep.dir)).strip("/").replace("/", "-")
    return {"group": cfg.logger.group or sweep_group,
            "name": cfg.logger.name or hydra_cfg.job.override_dirname or str(hydra_cfg.job.num)}


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def train(cfg: DictConfig, run_dir: Path, wandb_run_names: dict | None = None,
          preemption: PreemptionFlag | None = None) -> int:
    """Run (or resume) training in `run_dir`; returns the process exit code (75: pre-empted, checkpoint saved)."""
    preemption = preemption or PreemptionFlag(signals=())
    ctx = init_distributed(cfg.device)
    stop_when_parent_dies()  # under torchrun: a dead agent's workers checkpoint and exit instead of running on
    run_dir = agree_on_run_dir(run_dir, ctx)  # rank 0's: ranks may resolve `${now:...}` to different seconds
    tracker: Tracker | None = None
    try:  # whatever happens, W&B is finished and the process group destroyed (the `finally` below)
        # A checkpoint to resume is read first: its config is compared with this one before anything is built.
        resume_from = resolve_resume(cfg.train.resume, run_dir)
        saved = checkpoint.load(resume_from) if resume_from is not None else None
        resume_warnings = check_resume(cfg, saved["config"], saved["step"], resume_from) if saved else []
        seed_everything(cfg.seed)  # the same on every rank while the models are built
        precision = Precision(cfg.train.precision, ctx.device)
        resolved_config = OmegaConf.to_container(cfg, resolve=True)  # stored in checkpoints and sent to W&B
        sum_over_ranks, mean_over_ranks = cross_rank_reductions(ctx)

        # Losses first: the perceptual network's weights are checked before any data or model work.
        criterion = TokenizerLoss(cfg.loss, reduce_mean=mean_over_ranks).to(ctx.device)
        batches = build_train_loader(cfg.data, cfg.train.batch_size, ctx.rank, ctx.world_size, cfg.seed)
        tokenizer = Tokenizer.from_config(cfg.model, cfg.quantizer).to(ctx.device)
        tokenizer.quantizer.reduce_sum = sum_over_ranks
        discriminator = build_discriminator(cfg.loss).to(ctx.device)
        initialised_from = None
        if cfg.train.init_from and resume_from is None:  # fine-tuning; a resumed run already holds those weights
            initialised_from = initialise_from_checkpoint(cfg.train.init_from, tokenizer, discriminator,
                                                          use_ema=cfg.train.init_use_ema)
        gan = build_gan_training(cfg, tokenizer, discriminator, criterion, precision, ctx.is_distributed)
        seed_everything(cfg.seed + ctx.rank)  # models are built identically; from here on each rank draws its own

        state = TrainState(run_dir, ctx, config=resolved_config, extra={"tokenizer_hparams": tokenizer.hparams},
                           shared=gan.checkpointed(), per_rank={"data": batches})
        if saved is not None:
            state.restore(saved)
            del saved
        tracker = Tracker(run_dir, enabled=ctx.is_main,
                          logger_cfg=OmegaConf.merge(cfg.logger, wandb_run_names or {}), config=resolved_config,
                          max_steps=cfg.train.max_steps, start_step=state.step, run_id=state.wandb_id)
        state.wandb_id = tracker.run_id
        tracker.info(f"resumed from {resume_from} at step {state.step}" if resume_from is not None else
                     f"starting at step 0 in {run_dir} on {ctx.world_size} process(es), device {ctx.device}")
        for message in resume_warnings:
            tracker.info(f"warning: {message}")
        if initialised_from:
            tracker.info(f"initialised {initialised_from}")
        tracker.info(f"generator {count_parameters(tokenizer) / 1e6:.2f}M parameters, discriminator "
                     f"{count_parameters(discriminator) / 1e6:.2f}M; global batch "
                     f"{cfg.train.batch_size * ctx.world_size}; precision {cfg.train.precision}")
        evaluate = TrainingEvaluator(cfg.data, cfg.train.batch_size, cfg.train.eval_images, ctx, tracker, run_dir,
                                     criterion.perceptual_loss)
        eval_model = gan.ema.module if gan.ema else tokenizer
        step, exit_code = state.step, 0
        if step == 0 and cfg.train.eval_every > 0:
            evaluate(eval_model, 0)  # the starting point, so that learning is visible
        lr_at = lr_multiplier(cfg.optim.schedule, cfg.train.max_steps, cfg.optim.warmup_steps,
                              cfg.optim.min_lr_ratio, cfg.optim.drop_steps, cfg.optim.drop_rate)
        codebook_size = tokenizer.quantizer.codebook_size
        torch.autograd.set_detect_anomaly(cfg.train.detect_anomaly)
        window_start, window_images = time.perf_counter(), 0
        data_iterator = iter(batches)

        while step < cfg.train.max_steps:
            images = next(data_iterator).to(ctx.device, non_blocking=True)
            set_learning_rates(gan.optimizers, (cfg.optim.lr, cfg.optim.disc_lr), lr_at(step))

            # Both losses, then ONE all-reduce for both stop reasons: the step's only host sync.
            losses = compute_losses(gan, images, step)
            non_finite, preempted = flags_across_ranks([losses.non_finite(), preemption.requested], ctx)
            if non_finite:
                tracker.info(f"non-finite loss at step {step} ({format_logs(losses.logs)}); stopping before any "
                             f"update. The last good checkpoint is {checkpoint.latest_checkpoint(run_dir)}. Try "
                             "train.precision=fp32 or bf16, a lower optim.lr, or train.grad_clip=1.0.")
                exit_code = 1
                break
            grad_norms = apply_updates(gan, losses)
            step += 1
            state.step = step
            window_images += images.shape[0] * ctx.world_size
            tracker.advance(step)

            if step % cfg.train.log_every == 0 or step == cfg.train.max_steps:
                elapsed = time.perf_counter() - window_start
                logs = mean_across_ranks({**losses.logs, **grad_norms, "codebook/batch_usage": batch_usage(
                    losses.output.quantizer.indices, codebook_size)}, ctx)
                logs.update({"lr": gan.opt_g.param_groups[0]["lr"], "img_per_s": window_images / elapsed,
                             "steps_per_s": window_images / elapsed / (cfg.train.batch_size * ctx.world_size),
                             **{f"data/{k}": float(v) for k, v in batches.stats().items()}})
                tracker.log_scalars(step, logs)
                window_start, window_images = time.perf_counter(), 0

            if cfg.train.image_every and step % cfg.train.image_every == 0 and ctx.is_main:
                grid = run_dir / "images" / f"step_{step:08d}.png"
                recon = losses.output.reconstruction[:8].detach().clamp(-1, 1)
                save_reconstruction_grid(images[:8], recon, grid, nrow=8)
                tracker.log_image(step, "reconstructions", grid)

            if cfg.train.eval_every and step % cfg.train.eval_every == 0 and step < cfg.train.max_steps:
                evaluate(eval_model, step)

            if preempted:
                path = state.save(cfg.train.keep_last)
                tracker.info(f"pre-emption signal ({preemption.name or 'on another rank'}) at step {step}: saved "
                             f"{path}; exiting with code {REQUEUE_EXIT_CODE} so that the launcher can requeue it")
                exit_code = REQUEUE_EXIT_CODE
                break

            if step % cfg.train.ckpt_every == 0 or step == cfg.train.max_steps:
                tracker.info(f"saved checkpoint {state.save(cfg.train.keep_last)}")

        if exit_code == 0:
            final = evaluate(eval_model, step)
            if ctx.is_main:
                write_json(run_dir / "metrics.json", {"step": step, **final})
                (run_dir / COMPLETED_MARKER).write_text(f"{step}\n")
            tracker.summary(final)
            tracker.info(f"finished {step} steps; metrics in {run_dir / 'metrics.json'}")
        barrier(ctx)
        return exit_code
    finally:
        if tracker is not None:
            tracker.close()
        shutdown_distributed()


def resolve_resume(resume: str, run_dir: Path) -> Path | None:
    """`auto`: the run dir's newest checkpoint if any; `never`: start fresh; otherwise an explicit file."""
    if resume == "never":
        return None
    if resume == "auto":
        return checkpoint.latest_checkpoint(run_dir)
    return Path(resume)


if __name__ == "__main__":
    main()
