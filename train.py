"""Train a MAGVIT-2 tokenizer against a PatchGAN discriminator (task=tokenizer), or the Stage II AR generator on its
tokens (task=generator), in one loop.

    python train.py experiment=demo                                  # CPU, a few minutes
    python -m openmagvit2.launch.torchrun --standalone --nproc-per-node=8 train.py experiment=in256_large \
        hydra.run.dir=runs/in256_large/one_node                     # one node; the same command resumes
    python -m openmagvit2.launch submit cluster=slurm_32gpu experiment=in256_large   # 32 GPUs under SLURM
    python train.py experiment=ar_b data.root=<token dir> ...        # Stage II (tokens: python -m openmagvit2.tokenize)
    python train.py -m loss.perceptual_weight=0.1,1.0                # a Hydra multirun sweep

The story, top to bottom: validate the config, set up processes, read a checkpoint to resume and compare its config,
build the task (models, losses, optimisers) and the data, then for each batch the task's losses, one collective stop
decision, the task's updates, and logging, images, evaluation and checkpoints on a fixed cadence. Pre-emption
(SIGUSR1/SIGUSR2/SIGTERM, a first Ctrl-C) checkpoints at the step boundary and exits with code 75 so that the launcher
requeues the job; the requeued job resumes here.
"""
from __future__ import annotations

import sys

if __name__ == "__main__" and {"--help", "-h"} & set(sys.argv[1:]):  # answered before the slow imports below
    from openmagvit2.cli import print_help

    sys.exit(print_help("train"))

import json
import random
import time
from pathlib import Path
from typing import Any, Callable

import hydra
import numpy as np
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from openmagvit2.cli import check_additions, swept_keys, sweep_run_name
from openmagvit2.config import ConfigError, validate_config
from openmagvit2.data import DataError, build_train_loader
from openmagvit2.io.safe_load import CheckpointError
from openmagvit2.train import checkpoint
from openmagvit2.train.checkpoint import DiskFullError
from openmagvit2.train.distributed import (agree_on_run_dir, barrier, flags_across_ranks, init_distributed,
                                           mean_across_ranks, shutdown_distributed)
from openmagvit2.train.resume import check_resume
from openmagvit2.train.schedule import lr_multiplier
from openmagvit2.train.signals import REQUEUE_EXIT_CODE, PreemptionFlag, stop_when_parent_dies
from openmagvit2.train.state import TrainState
from openmagvit2.train.step import format_logs, set_learning_rates
from openmagvit2.train.tasks import build_task
from openmagvit2.train.tracking import Tracker, write_json
from openmagvit2.weights import MissingWeightsError

COMPLETED_MARKER = "COMPLETED"
EVAL_HISTORY = "eval_history.jsonl"


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> None:
    try:
        check_additions(HydraConfig.get().overrides.task, "train", cfg.data.get("name"))  # `+train.max_step=5`
        # Handlers go in first: a pre-emption warning during start-up is honoured at the first step boundary.
        with PreemptionFlag() as preemption:
            exit_code = train(cfg, Path(HydraConfig.get().runtime.output_dir), wandb_names(cfg), preemption)
    except (ConfigError, MissingWeightsError, CheckpointError, DiskFullError, DataError) as error:
        print(f"error: {error}", file=sys.stderr)
        exit_code = 2
    except KeyboardInterrupt:  # a second Ctrl-C: the first one asks for a checkpoint at the next step boundary
        print("interrupted: stopped without saving (one Ctrl-C saves a checkpoint first)", file=sys.stderr)
        exit_code = 130
    if exit_code:
        sys.exit(exit_code)


def wandb_names(cfg: DictConfig) -> dict[str, str | None]:
    """Jobs of one multirun sweep share a W&B group named after the sweep directory, and each run is named by
    its swept keys only (e.g. `loss.perceptual_weight=0.1`), so the dashboard reads like the sweep."""
    hydra_cfg = HydraConfig.get()
    if hydra_cfg.mode != RunMode.MULTIRUN:
        return {"group": cfg.logger.group, "name": cfg.logger.name}
    sweep_group = str(Path(hydra_cfg.sweep.dir)).strip("/").replace("/", "-")
    swept = swept_keys(sys.argv[1:], hydra_cfg.sweeper.get("params"))
    return {"group": cfg.logger.group or sweep_group,
            "name": cfg.logger.name or sweep_run_name(hydra_cfg.overrides.task, swept) or f"job{hydra_cfg.job.num}"}


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def train(cfg: DictConfig, run_dir: Path, wandb_run_names: dict | None = None,
          preemption: PreemptionFlag | None = None) -> int:
    """Run (or resume) training in `run_dir`; returns the process exit code (75: pre-empted, checkpoint saved)."""
    config = validate_config(cfg)  # typed, checked groups (raises ConfigError before any work)
    preemption = preemption or PreemptionFlag(signals=())
    ctx = init_distributed(cfg.device)
    stop_when_parent_dies()  # under torchrun: a dead agent's workers checkpoint and exit instead of running on
    run_dir = agree_on_run_dir(run_dir, ctx)  # rank 0's: ranks may resolve `${now:...}` to different seconds
    tracker: Tracker | None = None
    try:  # whatever happens, W&B is finished and the process group destroyed (the `finally` below)
        notes: list[str] = []  # start-up messages, logged once the tracker exists
        if ctx.is_main and (stale_bytes := checkpoint.remove_stale_temp_files(run_dir)):
            notes.append(f"removed {stale_bytes / 2**20:.1f} MB of temporary files left by interrupted checkpoint "
                         "saves")
        # A checkpoint to resume is read first: its config is compared with this one before anything is built.
        resume_from, saved = resolve_resume(cfg.train.resume, run_dir, ctx.is_main, notes.append) or (None, None)
        resume_warnings = []
        if saved is not None:
            resume_warnings = check_resume(cfg, saved["config"], saved["step"], resume_from)
            config = validate_config(cfg)  # check_resume keeps the checkpoint's EMA when this run turned it off
        resolved_config = OmegaConf.to_container(cfg, resolve=True)  # stored in checkpoints and sent to W&B

        seed_everything(cfg.seed)  # the same on every rank while the models are built
        task = build_task(config, ctx, fine_tune=saved is None)
        batches = build_train_loader(config.data, cfg.train.batch_size, ctx.rank, ctx.world_size, cfg.seed,
                                     pin_memory=ctx.device.type == "cuda", **task.loader_options)
        seed_everything(cfg.seed + ctx.rank)  # models are built identically; from here on each rank draws its own
        state = TrainState(run_dir, ctx, config=resolved_config, extra=task.extra_state(),
                           shared=task.checkpointed(), per_rank={"data": batches})
        if saved is not None:
            state.restore(saved)
            del saved
        tracker = Tracker(run_dir, enabled=ctx.is_main, config=resolved_config, max_steps=cfg.train.max_steps,
                          logger_cfg=OmegaConf.merge(cfg.logger, wandb_run_names or {}), start_step=state.step,
                          run_id=state.wandb_id)
        state.wandb_id = tracker.run_id
        tracker.info(f"resumed from {resume_from} at step {state.step}" if resume_from is not None else
                     f"starting at step 0 in {run_dir} on {ctx.world_size} process(es), device {ctx.device}")
        for line in [*notes, *(f"warning: {message}" for message in resume_warnings), *task.notes,
                     f"global batch {cfg.train.batch_size * ctx.world_size}; precision {cfg.train.precision}"]:
            tracker.info(line)

        def evaluate(step: int) -> dict[str, float]:
            results = task.evaluate()  # collective: every rank evaluates its share
            tracker.log_scalars(step, results)
            if ctx.is_main:
                with open(run_dir / EVAL_HISTORY, "a") as history:
                    history.write(json.dumps({"step": step, **results}) + "\n")
            return results

        step, exit_code = state.step, 0
        if step == 0 and cfg.train.eval_every > 0:
            evaluate(0)  # the starting point, so that learning is visible
        lr_at = lr_multiplier(cfg.optim.schedule, cfg.train.max_steps, cfg.optim.warmup_steps,
                              cfg.optim.min_lr_ratio, cfg.optim.drop_steps, cfg.optim.drop_rate,
                              cfg.optim.warmup_start_ratio)
        torch.autograd.set_detect_anomaly(cfg.train.detect_anomaly)
        window_start, window_samples = time.perf_counter(), 0
        data_iterator = iter(batches)

        while step < cfg.train.max_steps:
            batch = task.to_device(next(data_iterator))
            set_learning_rates(task.optimizers, task.base_lrs, lr_at(step))

            # The losses, then ONE all-reduce for both stop reasons: the step's only host sync.
            losses = task.compute_losses(batch, step)
            non_finite, preempted = flags_across_ranks([losses.non_finite(), preemption.requested], ctx)
            if non_finite:
                tracker.info(f"non-finite loss at step {step} ({format_logs(losses.logs)}); stopping before any "
                             f"update. The last good (checksum-verified) checkpoint is "
                             f"{checkpoint.latest_verified(run_dir)}. Try "
                             "train.precision=fp32 or bf16, a lower optim.lr, or train.grad_clip=1.0.")
                exit_code = 1
                break
            grad_norms = task.apply_updates(losses)
            step = state.step = step + 1
            window_samples += cfg.train.batch_size * ctx.world_size
            tracker.advance(step)

            if step % cfg.train.log_every == 0 or step == cfg.train.max_steps:
                elapsed = time.perf_counter() - window_start
                logs = mean_across_ranks({**task.step_logs(losses), **grad_norms}, ctx)
                samples_per_s = window_samples / elapsed
                logs.update({"lr": task.optimizers[0].param_groups[0]["lr"], **task.throughput(samples_per_s),
                             "steps_per_s": samples_per_s / (cfg.train.batch_size * ctx.world_size),
                             **{f"data/{k}": float(v) for k, v in batches.stats().items()}})
                tracker.log_scalars(step, logs)
                window_start, window_samples = time.perf_counter(), 0

            if cfg.train.image_every and step % cfg.train.image_every == 0 and ctx.is_main:
                grid = task.save_images(batch, losses, run_dir / "images" / f"step_{step:08d}.png")
                if grid is not None:
                    tracker.log_image(step, "images", grid)

            if cfg.train.eval_every and step % cfg.train.eval_every == 0 and step < cfg.train.max_steps:
                evaluate(step)

            if preempted:
                path = state.save(cfg.train.keep_last)
                tracker.info(f"pre-emption signal ({preemption.name or 'on another rank'}) at step {step}: saved "
                             f"{path}; exiting with code {REQUEUE_EXIT_CODE} so that the launcher can requeue it")
                exit_code = REQUEUE_EXIT_CODE
                break

            if step % cfg.train.ckpt_every == 0 or step == cfg.train.max_steps:
                tracker.info(f"saved checkpoint {state.save(cfg.train.keep_last)}")

        if exit_code == 0:
            final = evaluate(step)
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


def resolve_resume(resume: str, run_dir: Path, is_main: bool,
                   log: Callable[[str], None]) -> tuple[Path, dict[str, Any]] | None:
    """(path, state) to resume from. `auto`: the run dir's newest checkpoint that verifies (rank 0 moves damaged
    ones aside, logging each); `never`: start fresh; otherwise an explicit file."""
    if resume == "never":
        return None
    if resume == "auto":
        return checkpoint.load_latest_good(run_dir, log if is_main else None, move_aside=is_main)
    return Path(resume), checkpoint.load(resume)


if __name__ == "__main__":
    main()
