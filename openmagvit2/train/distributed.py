"""Process-group set-up from torchrun or SLURM environment variables, and the few collectives the loop needs.

NCCL on GPUs, gloo on CPU, so that every distributed code path runs and is tested on a laptop with 2 processes.
"""
from __future__ import annotations

import datetime
import io
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.distributed as dist

from openmagvit2.errors import ConfigError
from openmagvit2.io.safe_load import read_checkpoint_bytes


@dataclass(frozen=True)
class DistributedContext:
    """Where this process sits in the job."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1


def _first_slurm_host(nodelist: str) -> str:
    """First host name of a SLURM node list such as `gpu[001-004]`, via `scontrol show hostnames`."""
    try:
        hosts = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True,
                               check=True, timeout=30).stdout.split()
        if hosts:
            return hosts[0]
    except (OSError, subprocess.SubprocessError):
        pass
    return nodelist.split(",")[0].split("[")[0]


def _export_slurm_rendezvous() -> None:
    """Map `srun` (one task per process) variables onto the torchrun ones that `init_process_group` reads."""
    os.environ.setdefault("RANK", os.environ["SLURM_PROCID"])
    os.environ.setdefault("WORLD_SIZE", os.environ.get("SLURM_NTASKS", "1"))
    os.environ.setdefault("LOCAL_RANK", os.environ.get("SLURM_LOCALID", "0"))
    os.environ.setdefault("MASTER_ADDR", _first_slurm_host(os.environ.get("SLURM_JOB_NODELIST", "127.0.0.1")))
    os.environ.setdefault("MASTER_PORT", str(slurm_master_port(int(os.environ.get("SLURM_JOB_ID", "0")))))


def slurm_master_port(job_id: int) -> int:
    """The rendezvous port of a SLURM job: derived from the job id, so that two jobs sharing a node do not collide.

    The one place this formula lives: the job scripts (launch/*.sbatch) do not compute it; every srun-launched rank
    does, here (`_export_slurm_rendezvous`).
    """
    return 15000 + job_id % 20000


def resolve_device(preference: str, local_rank: int) -> torch.device:
    """`auto` picks the local GPU when there is one; `cuda` without a GPU is refused with a clear message."""
    if preference == "cpu":
        return torch.device("cpu")
    if preference == "cuda" or (preference == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise ConfigError("device=cuda was asked for but no CUDA GPU is visible; use device=cpu or device=auto.")
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def init_distributed(device_preference: str = "auto") -> DistributedContext:
    """Initialise the default process group when launched by torchrun/srun with more than one process."""
    if "RANK" not in os.environ and "SLURM_PROCID" in os.environ and int(os.environ.get("SLURM_NTASKS", "1")) > 1:
        _export_slurm_rendezvous()
    rank = int(os.environ.get("RANK", 0))
    world_size = int(os.environ.get("WORLD_SIZE", 1))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    device = resolve_device(device_preference, local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if world_size > 1 and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, rank=rank, world_size=world_size,
                                timeout=datetime.timedelta(minutes=30))
    return DistributedContext(rank=rank, world_size=world_size, local_rank=local_rank, device=device)


def agree_on_run_dir(run_dir: Path, ctx: DistributedContext) -> Path:
    """Rank 0's run dir, on every rank (one broadcast): the ranks of one job must write into one directory.

    Under plain torchrun each rank composes the Hydra config itself, so `${now:...}` in `hydra.run.dir` can resolve
    to a different second on different ranks (or an override like `rank${oc.env:RANK}` to a different dir); rank 0
    decides. A no-op in one process.
    """
    if not ctx.is_distributed:
        return Path(run_dir)
    chosen = [str(run_dir) if ctx.is_main else None]
    dist.broadcast_object_list(chosen, src=0)
    return Path(chosen[0])


def shutdown_distributed() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def any_rank(flag: bool, ctx: DistributedContext) -> bool:
    """True on every rank when `flag` is true on at least one (one all-reduce and one host sync)."""
    return flags_across_ranks([flag], ctx)[0]


def flags_across_ranks(flags: list[bool | torch.Tensor], ctx: DistributedContext) -> list[bool]:
    """Each flag OR-ed over ranks, in one all-reduce and one host sync (the loop's stop decisions share it).

    A flag may be a 0-dim bool tensor on the device (e.g. "the loss is not finite"): it is then read without a
    separate sync of its own.
    """
    values = torch.stack([torch.as_tensor(flag, device=ctx.device).reshape(()).float() for flag in flags])
    if ctx.is_distributed:
        dist.all_reduce(values, op=dist.ReduceOp.MAX)
    return [value > 0 for value in values.tolist()]


def mean_across_ranks(values: dict[str, torch.Tensor | float], ctx: DistributedContext) -> dict[str, float]:
    """Average a dict of scalars over ranks with one all-reduce; returns Python floats for logging.

    Each value is moved to the context's device first: `torch.stack` (unlike element-wise ops) refuses a CPU
    scalar beside CUDA tensors.
    """
    if not values:
        return {}
    names = sorted(values)
    stacked = torch.stack([torch.as_tensor(values[name]).detach().to(ctx.device, torch.float32).reshape(())
                           for name in names])
    if ctx.is_distributed:
        dist.all_reduce(stacked, op=dist.ReduceOp.SUM)
        stacked /= ctx.world_size
    return dict(zip(names, stacked.tolist()))


class _AllReduceSumWithGrad(torch.autograd.Function):
    """Sum over ranks whose backward also sums over ranks.

    Every rank computes the same loss from the global sum, so each holds the same upstream gradient; summing it gives
    world_size x the local gradient, which DDP's averaging turns back into the gradient of the global loss. The result
    equals training on the concatenated batch in one process.
    """

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        total = tensor.clone()
        dist.all_reduce(total, op=dist.ReduceOp.SUM)
        return total

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        total = grad.clone()
        dist.all_reduce(total, op=dist.ReduceOp.SUM)
        return total


def sum_across_ranks_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    """Differentiable all-reduce sum (for LFQ's codebook entropy over the global batch)."""
    return _AllReduceSumWithGrad.apply(tensor)


def mean_across_ranks_no_grad(tensor: torch.Tensor) -> torch.Tensor:
    """All-reduce mean of a detached tensor (LeCam EMA, the adaptive weight's gradients)."""
    total = tensor.detach().clone()
    dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return total / dist.get_world_size()


Reduction = Callable[[torch.Tensor], torch.Tensor]


def cross_rank_reductions(ctx: DistributedContext) -> tuple[Reduction | None, Reduction | None]:
    """(differentiable sum, detached mean) over ranks for the models and losses, or (None, None) in one process.

    Models and losses never import torch.distributed: the trainer passes these in (`LFQ.reduce_sum`,
    `TokenizerLoss(reduce_mean=...)`), so they stay plain modules that a single process or a test can run.
    """
    if not ctx.is_distributed:
        return None, None
    return sum_across_ranks_with_grad, mean_across_ranks_no_grad


def gather_objects(obj: object, ctx: DistributedContext) -> list[object]:
    """Every rank's `obj` (tensors and plain containers, e.g. RNG states for the checkpoint), in rank order.

    The bytes travel as uint8 tensors and are read back with the safe reader, so nothing is unpickled with plain
    `pickle` (`all_gather_object` would, on whatever another process sent).
    """
    if not ctx.is_distributed:
        return [obj]
    buffer = io.BytesIO()
    torch.save(obj, buffer)  # torch.save, not pickle: pickled tensors fail to load on some torch versions
    payload = torch.frombuffer(bytearray(buffer.getvalue()), dtype=torch.uint8).to(ctx.device)
    size = torch.tensor([payload.numel()], dtype=torch.int64, device=ctx.device)
    sizes = [torch.zeros_like(size) for _ in range(ctx.world_size)]
    dist.all_gather(sizes, size)
    longest = max(int(rank_size.item()) for rank_size in sizes)
    padded = torch.zeros(longest, dtype=torch.uint8, device=ctx.device)
    padded[: payload.numel()] = payload
    gathered = [torch.empty_like(padded) for _ in range(ctx.world_size)]
    dist.all_gather(gathered, padded)
    return [read_checkpoint_bytes(chunk[: int(rank_size.item())].cpu().numpy().tobytes(),
                                  f"the object gathered from rank {rank}")
            for rank, (chunk, rank_size) in enumerate(zip(gathered, sizes))]


def barrier(ctx: DistributedContext) -> None:
    if ctx.is_distributed:
        dist.barrier()
