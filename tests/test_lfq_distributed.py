"""`entropy_across_ranks` with the trainer's differentiable all-reduce: 2 gloo processes with DDP must match one
process on the concatenated batch, values and gradients, including unequal per-rank batch sizes."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel

from openmagvit2 import LFQ
from openmagvit2.train.distributed import sum_across_ranks_with_grad

WORLD_SIZE = 2
BITS = 8
BATCH_PER_RANK = (2, 3)  # unequal on purpose: pbar must weight each rank by its token count


def make_inputs() -> tuple[torch.nn.Module, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    model = torch.nn.Conv2d(4, BITS, 1).double()
    with torch.no_grad():
        model.weight.copy_(torch.randn(model.weight.shape, generator=generator, dtype=torch.float64) * 0.01)
        model.bias.copy_(torch.randn(model.bias.shape, generator=generator, dtype=torch.float64) * 0.01)
    images = torch.randn(sum(BATCH_PER_RANK), 4, 3, 3, generator=generator, dtype=torch.float64)
    return model, images


def codebook_loss_and_grads(model: torch.nn.Module, images: torch.Tensor, across_ranks: bool
                            ) -> tuple[float, float, list[torch.Tensor]]:
    """Maximise the codebook entropy (the global term) once; return its value, the per-sample entropy, the grads."""
    lfq = LFQ(codebook_bits=BITS, entropy_across_ranks=across_ranks).train()
    if across_ranks and dist.is_initialized():
        lfq.reduce_sum = sum_across_ranks_with_grad  # what the trainer passes in
    out = lfq(model(images))
    (-out.codebook_entropy).backward()
    return out.codebook_entropy.item(), out.per_sample_entropy.item(), [p.grad.clone() for p in model.parameters()]


def worker(rank: int, init_file: str, results: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD_SIZE)
    try:
        model, images = make_inputs()
        start = sum(BATCH_PER_RANK[:rank])
        local = images[start:start + BATCH_PER_RANK[rank]]
        ddp = DistributedDataParallel(model)
        codebook, _, grads = codebook_loss_and_grads(ddp, local, across_ranks=True)
        model.zero_grad()
        local_codebook, _, _ = codebook_loss_and_grads(ddp, local, across_ranks=False)
        torch.save({"codebook": codebook, "local_codebook": local_codebook, "grads": grads},
                   os.path.join(results, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_codebook_entropy_across_ranks_matches_one_process(tmp_path: Path) -> None:
    mp.spawn(worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=WORLD_SIZE, join=True)
    model, images = make_inputs()
    full_codebook, _, full_grads = codebook_loss_and_grads(model, images, across_ranks=False)
    for rank in range(WORLD_SIZE):
        result = torch.load(tmp_path / f"rank{rank}.pt")
        assert result["codebook"] == pytest.approx(full_codebook, rel=1e-12)
        # without the all-reduce each rank sees only its own batch: a different value (so this test can fail)
        assert abs(result["local_codebook"] - full_codebook) > 1e-3
        for grad, expected in zip(result["grads"], full_grads, strict=True):
            torch.testing.assert_close(grad, expected, rtol=1e-10, atol=1e-14)


def test_across_ranks_without_process_group_is_the_local_value() -> None:
    model, images = make_inputs()
    assert not dist.is_initialized()
    with_flag = codebook_loss_and_grads(model, images, across_ranks=True)
    model.zero_grad()
    without = codebook_loss_and_grads(model, images, across_ranks=False)
    assert with_flag[0] == without[0]
    for a, b in zip(with_flag[2], without[2], strict=True):
        torch.testing.assert_close(a, b)
