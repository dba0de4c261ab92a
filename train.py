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

import json
import math
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
from torch.nn.parallel import DistributedDataParallel

from openmagvit2.config import ConfigError, validate_config
from openmagvit2.data import build_train_loader, build_val_loader
from openmagvit2.eval import evaluate, save_reconstruction_grid
from openmagvit2.losses import TokenizerLoss, build_discriminator
from openmagvit2.models import Tokenizer
from openmagvit2.train import checkpoint
from openmagvit2.train.distributed import (any_rank, barrier, gather_objects, init_distributed,
                                           mean_across_ranks, shutdown_distributed)
from openmagvit2.train.ema import ModelEMA
from openmagvit2.train.init_from import initialise_from_checkpoint
from openmagvit2.train.precision import Precision
from openmagvit2.train.schedule import lr_multiplier
from openmagvit2.train.signals import REQUEUE_EXIT_CODE, PreemptionFlag
from openmagvit2.train.tracking import Tracker, write_json
from openmagvit2.weights import MissingWeightsError, require

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
    seed_everything(cfg.seed)  # the same on every rank while the models are built
    precision = Precision(cfg.train.precision, ctx.device)
    resolved_config = OmegaConf.to_container(cfg, resolve=True)  # stored in checkpoints and sent to W&B

    # Losses first: the perceptual network's weights are checked before any data or model work.
    criterion = TokenizerLoss(cfg.loss).to(ctx.device)
    batches = build_train_loader(cfg.data, cfg.train.batch_size, ctx.rank, ctx.world_size, cfg.seed)

    tokenizer = Tokenizer.from_config(cfg.model, cfg.quantizer).to(ctx.device)
    discriminator = build_discriminator(cfg.loss).to(ctx.device)
    resume_from = resolve_resume(cfg.train.resume, run_dir)
    initialised_from = None
    if cfg.train.init_from and resume_from is None:  # fine-tuning; a resumed run already holds those weights
        initialised_from = initialise_from_checkpoint(cfg.train.init_from, tokenizer, discriminator,
                                                      use_ema=cfg.train.init_use_ema)
    if cfg.train.channels_last:
        tokenizer.to(memory_format=torch.channels_last)
        discriminator.to(memory_format=torch.channels_last)
    ema = ModelEMA(tokenizer, cfg.train.ema_decay) if cfg.train.ema_decay is not None else None
    seed_everything(cfg.seed + ctx.rank)  # models are built identically; from here on each rank draws its own numbers

    betas = tuple(cfg.optim.betas)
    opt_g = torch.optim.Adam(tokenizer.parameters(), lr=cfg.optim.lr, betas=betas, weight_decay=cfg.optim.weight_decay)
    opt_d = torch.optim.Adam(discriminator.parameters(), lr=cfg.optim.disc_lr, betas=betas,
                             weight_decay=cfg.optim.weight_decay)
    scaler_g, scaler_d = precision.make_scaler(), precision.make_scaler()
    lr_at = lr_multiplier(cfg.optim.schedule, cfg.train.max_steps, cfg.optim.warmup_steps, cfg.optim.min_lr_ratio,
                          cfg.optim.drop_steps, cfg.optim.drop_rate)

    def training_state(step: int) -> dict:
        return {
            "format": checkpoint.FORMAT, "version": checkpoint.VERSION, "step": step,
            "tokenizer_hparams": tokenizer.hparams, "generator": tokenizer.state_dict(),
            "generator_ema": ema.module.state_dict() if ema else None,
            "ema_num_updates": ema.num_updates if ema else 0,
            "discriminator": discriminator.state_dict(), "loss": criterion.state_dict(),
            "opt_g": opt_g.state_dict(), "opt_d": opt_d.state_dict(),
            "scaler_g": scaler_g.state_dict(), "scaler_d": scaler_d.state_dict(),
            "data": batches.state_dict(), "config": resolved_config,
        }

    def save_checkpoint(step: int) -> Path:
        rng_states = gather_objects(checkpoint.capture_rng_state(), ctx)  # collective: every rank calls it
        path = checkpoint.checkpoint_path(run_dir, step)
        if ctx.is_main:
            checkpoint.save_atomically({**training_state(step), "rng": rng_states}, path)
            checkpoint.prune(run_dir, cfg.train.keep_last)
        barrier(ctx)
        return path

    step = 0
    if resume_from is not None:
        state = checkpoint.load(resume_from)
        tokenizer.load_state_dict(state["generator"])
        discriminator.load_state_dict(state["discriminator"])
        criterion.load_state_dict(state["loss"])
        if ema and state["generator_ema"] is not None:
            ema.load_state_dict({"module": state["generator_ema"], "num_updates": state["ema_num_updates"]})
        opt_g.load_state_dict(state["opt_g"])
        opt_d.load_state_dict(state["opt_d"])
        scaler_g.load_state_dict(state["scaler_g"])
        scaler_d.load_state_dict(state["scaler_d"])
        batches.load_state_dict(state["data"])
        checkpoint.restore_rng_state(state["rng"][ctx.rank % len(state["rng"])])
        step = int(state["step"])
        del state

    generator = DistributedDataParallel(tokenizer) if ctx.is_distributed else tokenizer
    disc = DistributedDataParallel(discriminator) if ctx.is_distributed else discriminator
    if cfg.train.compile:
        generator = torch.compile(generator)

    tracker = Tracker(run_dir, enabled=ctx.is_main,
                      logger_cfg=OmegaConf.merge(cfg.logger, wandb_run_names or {}),
                      config=resolved_config, max_steps=cfg.train.max_steps,
                      start_step=step)
    if resume_from is not None:
        tracker.info(f"resumed from {resume_from} at step {step}")
    else:
        tracker.info(f"starting at step 0 in {run_dir} on {ctx.world_size} process(es), device {ctx.device}")
    if initialised_from:
        tracker.info(f"initialised {initialised_from}")
    tracker.info(f"generator {count_parameters(tokenizer) / 1e6:.2f}M parameters, discriminator "
                 f"{count_parameters(discriminator) / 1e6:.2f}M; global batch "
                 f"{cfg.train.batch_size * ctx.world_size}; precision {cfg.train.precision}")

    # The fixed val subset stays in memory as uint8 (4x smaller than float; images are 8-bit to begin with).
    val_batches = [to_uint8(batch) for batch in build_val_loader(cfg.data, cfg.train.batch_size, ctx.rank,
                                                                  ctx.world_size, max_images=cfg.train.eval_images)]
    eval_metrics = training_eval_metrics(tracker)

    def run_eval(step: int) -> dict[str, float]:
        model = ema.module if ema else tokenizer
        results = evaluate(model, (from_uint8(batch) for batch in val_batches), metrics=eval_metrics,
                           device=ctx.device)
        results = {f"val/{name}": value for name, value in results.items()}
        tracker.log_scalars(step, results, cfg.train.max_steps)
        if ctx.is_main:
            with open(run_dir / "eval_history.jsonl", "a") as history:
                history.write(json.dumps({"step": step, **results}) + "\n")
        return results

    if step == 0 and cfg.train.eval_every > 0:
        run_eval(0)  # the starting point, so that learning is visible

    last_layer = tokenizer.decoder.conv_out.weight
    codebook_size = 2 ** tokenizer.hparams["codebook_bits"]
    torch.autograd.set_detect_anomaly(cfg.train.detect_anomaly)
    window_start, window_images = time.perf_counter(), 0
    exit_code = 0
    data_iterator = iter(batches)

    while step < cfg.train.max_steps:
        images = next(data_iterator).to(ctx.device, non_blocking=True)
        if cfg.train.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        for optimizer, base_lr in ((opt_g, cfg.optim.lr), (opt_d, cfg.optim.disc_lr)):
            for group_ in optimizer.param_groups:
                group_["lr"] = base_lr * lr_at(step)

        # Generator step: reconstruction, perceptual, adversarial (D frozen), entropy and commitment terms.
        discriminator.requires_grad_(False)
        with precision.autocast():
            output = generator(images)
            g_loss, g_logs = criterion.generator_loss(images, output.reconstruction, output.quantizer,
                                                      discriminator, step, last_layer=last_layer)
        if any_rank(not bool(torch.isfinite(g_loss)), ctx):
            tracker.info(f"non-finite generator loss at step {step} ({format_logs(g_logs)}); stopping. The last "
                         f"good checkpoint is {checkpoint.latest_checkpoint(run_dir)}. Try train.precision=fp32 "
                         "or bf16, a lower optim.lr, or train.grad_clip=1.0.")
            exit_code = 1
            break
        opt_g.zero_grad(set_to_none=True)
        scaler_g.scale(g_loss).backward()
        g_grad_norm = clip_and_step(opt_g, scaler_g, tokenizer.parameters(), cfg.train.grad_clip)

        # Discriminator step on the detached reconstruction (no second generator forward).
        discriminator.requires_grad_(True)
        d_logs: dict[str, torch.Tensor] = {}
        d_grad_norm = torch.zeros((), device=ctx.device)
        if step >= cfg.loss.disc_start:
            with precision.autocast():
                d_loss, d_logs = criterion.discriminator_loss(images, output.reconstruction.detach(), disc, step)
            opt_d.zero_grad(set_to_none=True)
            scaler_d.scale(d_loss).backward()
            d_grad_norm = clip_and_step(opt_d, scaler_d, discriminator.parameters(), cfg.train.grad_clip)

        if ema:
            ema.update(tokenizer)
        step += 1
        window_images += images.shape[0] * ctx.world_size
        tracker.advance(step)

        if step % cfg.train.log_every == 0 or step == cfg.train.max_steps:
            elapsed = time.perf_counter() - window_start
            used = output.quantizer.indices.unique().numel()
            logs = mean_across_ranks({**g_logs, **d_logs, "grad_norm/generator": g_grad_norm,
                                      "grad_norm/discriminator": d_grad_norm,
                                      "codebook/batch_usage": torch.tensor(used / codebook_size, device=ctx.device)}, ctx)
            logs.update({"lr": opt_g.param_groups[0]["lr"], "img_per_s": window_images / elapsed,
                         "steps_per_s": window_images / elapsed / (cfg.train.batch_size * ctx.world_size),
                         **{f"data/{k}": float(v) for k, v in batches.stats().items()}})
            tracker.log_scalars(step, logs, cfg.train.max_steps)
            window_start, window_images = time.perf_counter(), 0

        if cfg.train.image_every and step % cfg.train.image_every == 0 and ctx.is_main:
            grid = run_dir / "images" / f"step_{step:08d}.png"
            save_reconstruction_grid(images[:8], output.reconstruction[:8].detach().clamp(-1, 1), grid, nrow=8)
            tracker.log_image(step, "reconstructions", grid)

        if cfg.train.eval_every and step % cfg.train.eval_every == 0 and step < cfg.train.max_steps:
            run_eval(step)

        if any_rank(preemption.requested, ctx):
            path = save_checkpoint(step)
            tracker.info(f"pre-emption signal ({preemption.name or 'on another rank'}) at step {step}: saved "
                         f"{path}; exiting with code {REQUEUE_EXIT_CODE} so that the launcher can requeue it")
            exit_code = REQUEUE_EXIT_CODE
            break

        if step % cfg.train.ckpt_every == 0 or step == cfg.train.max_steps:
            path = save_checkpoint(step)
            tracker.info(f"saved checkpoint {path}")

    if exit_code == 0:
        final = run_eval(step)
        if ctx.is_main:
            write_json(run_dir / "metrics.json", {"step": step, **final})
            (run_dir / COMPLETED_MARKER).write_text(f"{step}\n")
        tracker.summary(final)
        tracker.info(f"finished {step} steps; metrics in {run_dir / 'metrics.json'}")
    tracker.close()
    barrier(ctx)
    shutdown_distributed()
    return exit_code


def resolve_resume(resume: str, run_dir: Path) -> Path | None:
    """`auto`: the run dir's newest checkpoint if any; `never`: start fresh; otherwise an explicit file."""
    if resume == "never":
        return None
    if resume == "auto":
        return checkpoint.latest_checkpoint(run_dir)
    return Path(resume)


def clip_and_step(optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler, parameters,
                  max_norm: float | None) -> torch.Tensor:
    """Unscale, measure (and optionally clip) the gradient norm, then step; returns the pre-clip norm."""
    scaler.unscale_(optimizer)
    parameters = [p for p in parameters if p.grad is not None]
    norm = torch.nn.utils.clip_grad_norm_(parameters, max_norm if max_norm is not None else math.inf)
    scaler.step(optimizer)
    scaler.update()
    return norm.detach()


def training_eval_metrics(tracker: Tracker) -> list[str]:
    """PSNR and codebook usage always; LPIPS when its weights are present (rFID needs a full val set: eval.py)."""
    metrics = ["psnr", "usage"]
    try:
        require(["lpips_vgg"])
        metrics.append("lpips_vgg")
    except MissingWeightsError:
        tracker.info("LPIPS weights not found: in-training evaluation reports PSNR and codebook usage only "
                     "(make weights fetches them)")
    return metrics


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """[-1, 1] float images -> uint8 (exact for images that came from 8-bit pixels as x / 127.5 - 1)."""
    return ((images + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)


def from_uint8(images: torch.Tensor) -> torch.Tensor:
    return images.float() / 127.5 - 1


def count_parameters(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def format_logs(logs: dict[str, torch.Tensor]) -> str:
    return " ".join(f"{k}={float(v):.4g}" for k, v in sorted(logs.items()))


if __name__ == "__main__":
    main()
