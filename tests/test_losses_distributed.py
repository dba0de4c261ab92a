"""Across 2 gloo processes, the LeCam EMA and the adaptive weight equal a single process on the global batch."""
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from openmagvit2.losses import TokenizerLoss, build_discriminator
from openmagvit2.train.distributed import mean_across_ranks_no_grad

CONFIG = {"perceptual_weight": 0.0, "gen_loss_weight": None, "disc_norm": "none", "disc_channels": 4,
          "disc_layers": 2, "lecam_decay": 0.9}
BATCH_PER_RANK = 2


class QuantizerOut:
    entropy_loss = torch.tensor(0.5)
    per_sample_entropy = torch.tensor(1.0)
    codebook_entropy = torch.tensor(0.5)
    commitment = torch.tensor(0.2)


def global_batch():
    """Deterministic inputs for the global batch: images, decoder latents, and the shared modules."""
    torch.manual_seed(0)
    images = torch.rand(2 * BATCH_PER_RANK, 3, 16, 16) * 2 - 1
    latent = torch.randn(2 * BATCH_PER_RANK, 4, 16, 16)
    conv_out = nn.Conv2d(4, 3, 3, padding=1)
    discriminator = build_discriminator(CONFIG)
    return images, latent, conv_out, discriminator


def losses_on(images, latent, conv_out, discriminator, reduce_mean=None):
    """Two steps of D then G losses; returns the LeCam EMAs and the adaptive G weight of the last step."""
    loss = TokenizerLoss(CONFIG, reduce_mean=reduce_mean)
    for step in range(2):
        reconstruction = conv_out(latent)
        loss.discriminator_loss(images, reconstruction, discriminator, step)
        _, logs = loss.generator_loss(images, reconstruction, QuantizerOut(), discriminator, step,
                                      last_layer=conv_out.weight)
    return torch.stack([loss.lecam.ema_real, loss.lecam.ema_fake, logs["gen_weight"]])


def worker(rank: int, world_size: int, store_path: str, results: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{store_path}", rank=rank, world_size=world_size)
    try:
        images, latent, conv_out, discriminator = global_batch()
        part = slice(rank * BATCH_PER_RANK, (rank + 1) * BATCH_PER_RANK)
        torch.save(losses_on(images[part], latent[part], conv_out, discriminator, mean_across_ranks_no_grad),
                   f"{results}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_ranks_match_one_process_on_the_global_batch(tmp_path):
    mp.spawn(worker, args=(2, str(tmp_path / "store"), str(tmp_path)), nprocs=2, join=True)
    per_rank = [torch.load(tmp_path / f"rank{rank}.pt") for rank in range(2)]
    single = losses_on(*global_batch())
    torch.testing.assert_close(per_rank[0], per_rank[1], rtol=0, atol=0)  # identical on every rank
    torch.testing.assert_close(per_rank[0], single, rtol=1e-5, atol=1e-7)
    # and the halves alone (the reference's per-rank behaviour) would differ
    images, latent, conv_out, discriminator = global_batch()
    half = losses_on(images[:BATCH_PER_RANK], latent[:BATCH_PER_RANK], conv_out, discriminator)
    assert not torch.allclose(half, single, rtol=1e-3)
