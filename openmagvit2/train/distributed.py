"""Process-group set-up from torchrun or SLURM environment variables, and the few collectives the loop needs.

NCCL on GPUs, gloo on CPU, so that every distributed code path runs and is tested on a laptop with 2 processes.
"""
from __future__ import annotations

import datetime
import io
import os
import subprocess
from dataclasses import dataclass

import torch
import torch.distributed as dist


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
    # A port derived from the job id, so that two jobs sharing a node do not collide.
    os.environ.setdefault("MASTER_PORT", str(15000 + int(os.environ.get("SLURM_JOB_ID", "0")) % 20000))


def resolve_device(preference: str, local_rank: int) -> torch.device:
    """`auto` picks the local GPU when there is one; `cuda` without a GPU is refused with a clear message."""
    if preference == "cpu":
        return torch.device("cpu")
    if preference == "cuda" or (preference == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise RuntimeError("device=cuda was asked for but no CUDA GPU is visible; use device=cpu or device=auto.")
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


def shutdown_distributed() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def any_rank(flag: bool, ctx: DistributedContext) -> bool:
    """True on every rank when `flag` is true on at least one (used for stop and NaN decisions)."""
    if not ctx.is_distributed:
        return flag
    value = torch.tensor([1.0 if flag else 0.0], device=ctx.device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item() > 0)


def mean_across_ranks(values: dict[str, torch.Tensor], ctx: DistributedContext) -> dict[str, float]:
    """Average a dict of scalar tensors over ranks with one all-reduce; returns Python floats for logging.

    Each value is moved to `ctx.device` before the stack: `torch.stack` refuses a CPU tensor next to CUDA ones,
    even a 0-dim one (only elementwise ops accept those), and callers may log host-side numbers.
    """
    if not values:
        return {}
    names = sorted(values)
    stacked = torch.stack([values[name].detach().to(ctx.device, torch.float32).reshape(()) for name in names])
    if ctx.is_distributed:
        dist.all_reduce(stacked, op=dist.ReduceOp.SUM)
        stacked /= ctx.world_size
    return dict(zip(names, stacked.tolist()))


def gather_objects(obj: object, ctx: DistributedContext) -> list[object]:
    """Every rank's `obj`, in rank order (RNG states for the checkpoint)."""
    if not ctx.is_distributed:
        return [obj]
    # Serialise with torch.save ourselves: all_gather_object's pickling of tensors fails to unpickle on some
    # torch versions (UntypedStorage has no dtype), and bytes always travel safely.
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    gathered: list[bytes] = [b""] * ctx.world_size
    dist.all_gather_object(gathered, buffer.getvalue())
    return [torch.load(io.BytesIO(blob), weights_only=True) for blob in gathered]


def barrier(ctx: DistributedContext) -> None:
    if ctx.is_distributed:
        dist.barrier()
