"""The video tokenizer's GAN step (`train/step.py`, shared with images): under 2-rank gloo DDP it equals one process
on the global batch, and channels_last_3d changes nothing but the memory layout."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from omegaconf import OmegaConf

from openmagvit2 import VideoTokenizer
from openmagvit2.losses import TokenizerLoss, build_discriminator
from openmagvit2.models.video_config import video_model_preset
from openmagvit2.train.distributed import DistributedContext, cross_rank_reductions
from openmagvit2.train.precision import Precision
from openmagvit2.train.step import apply_updates, build_gan_training, compute_losses

LOSS = {"perceptual_weight": 0.0, "gen_loss_weight": 0.3, "lecam_weight": 0.05, "disc_norm": "none",
        "disc_channels": 8, "disc_layers": 2}
PER_RANK = 1


def run_config(channels_last: bool = False):
    return OmegaConf.create({"train": {"channels_last": channels_last, "ema_decay": None, "compile": False,
                                       "grad_clip": None},
                             "optim": {"lr": 1e-4, "disc_lr": 1e-4, "betas": [0.5, 0.9], "weight_decay": 0.0}})


def one_step(rank: int, world_size: int, channels_last: bool = False) -> dict[str, torch.Tensor]:
    """One generator + discriminator update on this rank's part of a fixed global batch of 2 clips of 5 frames.

    In float64: the entropy terms' softmax at temperature 0.01 amplifies float32 summation-order noise to ~1e-3 of
    the encoder's gradients (one process against two), which would hide a real difference; float64 does not."""
    torch.set_default_dtype(torch.float64)
    torch.manual_seed(0)
    clips = torch.rand(2 * PER_RANK, 3, 5, 16, 16) * 2 - 1
    hparams = {**video_model_preset("video_tiny"), "entropy_across_ranks": world_size > 1}
    tokenizer, discriminator = VideoTokenizer(**hparams), build_discriminator(LOSS, video=True)
    ctx = DistributedContext(rank, world_size, rank, torch.device("cpu"))
    sum_over_ranks, mean_over_ranks = cross_rank_reductions(ctx)
    tokenizer.quantizer.reduce_sum = sum_over_ranks
    gan = build_gan_training(run_config(channels_last), tokenizer, discriminator,
                             TokenizerLoss(LOSS, reduce_mean=mean_over_ranks), Precision("fp32", ctx.device),
                             distributed=world_size > 1)
    part = clips if world_size == 1 else clips[rank * PER_RANK:(rank + 1) * PER_RANK]
    losses = compute_losses(gan, part, step=0)
    apply_updates(gan, losses)
    moments = {f"g{i}": s["exp_avg"] for i, s in enumerate(gan.opt_g.state_dict()["state"].values())}
    moments.update({f"d{i}": s["exp_avg"] for i, s in enumerate(gan.opt_d.state_dict()["state"].values())})
    torch.set_default_dtype(torch.float32)
    return {**moments, "lecam": torch.stack([gan.criterion.lecam.ema_real, gan.criterion.lecam.ema_fake])}


def worker(rank: int, world_size: int, store: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world_size)
    try:
        torch.save(one_step(rank, world_size), f"{out}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_gloo_ranks_equal_one_process_on_the_global_batch(tmp_path: Path) -> None:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    mp.spawn(worker, args=(2, str(tmp_path / "store"), str(tmp_path)), nprocs=2, join=True)
    single = one_step(0, 1)
    ranks = [torch.load(tmp_path / f"rank{rank}.pt") for rank in range(2)]
    assert sum(float(v.abs().sum()) for k, v in single.items() if k.startswith("g")) > 0, "no gradient reached G"
    for key, expected in single.items():
        for rank, result in enumerate(ranks):
            # Adam's first moment after one step is (1 - beta1) x the (rank-averaged) gradient.
            torch.testing.assert_close(result[key], expected, rtol=1e-5, atol=1e-12, msg=f"rank {rank}: {key}")


def test_channels_last_3d_changes_only_the_layout() -> None:
    eager, channels_last = one_step(0, 1), one_step(0, 1, channels_last=True)
    for key, expected in eager.items():
        torch.testing.assert_close(channels_last[key], expected, rtol=1e-4, atol=1e-7, msg=key)
