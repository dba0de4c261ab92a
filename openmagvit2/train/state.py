"""`TrainState`: the one list of what a run holds, used by both save and restore (torchtitan's checkpointer idea).

Every entry is an object with `state_dict()` / `load_state_dict()`. Shared entries (models, EMA, optimisers, scalers,
loss state) are identical on every rank and saved once, from rank 0. Per-rank entries (the data position with its
skip counters, the RNG states) differ between ranks: each rank's state is gathered and saved in rank order, and on
resume each rank takes its own. The file also holds the step, the resolved config and the W&B run id, and stays
readable by `Tokenizer.from_checkpoint` (keys `tokenizer_hparams`, `generator`, `generator_ema`). Stage II and the
video tokenizer register their own entries in the same class.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Protocol

from openmagvit2.train import checkpoint
from openmagvit2.train.distributed import DistributedContext, barrier, gather_objects

log = logging.getLogger(__name__)


class Stateful(Protocol):
    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> Any: ...


class RngState:
    """This process's Python, NumPy, torch and CUDA RNG states as a `Stateful` entry."""

    def state_dict(self) -> dict[str, Any]:
        return checkpoint.capture_rng_state()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        checkpoint.restore_rng_state(state)


class TrainState:
    """What a run holds: `shared` and `per_rank` entries, the step, the config and the W&B run id."""

    def __init__(self, run_dir: Path, ctx: DistributedContext, *, config: dict[str, Any],
                 shared: dict[str, Stateful | None], per_rank: dict[str, Stateful],
                 extra: dict[str, Any] | None = None) -> None:
        self.run_dir = run_dir
        self.ctx = ctx
        self.config = config
        self.shared = shared  # None entries (e.g. no EMA) are saved as None
        self.per_rank = {**per_rank, "rng": RngState()}
        self.extra = extra or {}  # plain values read by other tools (e.g. `tokenizer_hparams`)
        self.step = 0
        self.wandb_id: str | None = None

    def save(self, keep_last: int) -> Path:
        """Write `<run_dir>/checkpoints/step_<step>.pt` atomically and prune old ones (collective: every rank)."""
        per_rank = {name: gather_objects(entry.state_dict(), self.ctx) for name, entry in self.per_rank.items()}
        path = checkpoint.checkpoint_path(self.run_dir, self.step)
        if self.ctx.is_main:
            state = {"format": checkpoint.FORMAT, "version": checkpoint.VERSION, "step": self.step,
                     "config": self.config, "wandb_id": self.wandb_id, **self.extra,
                     **{name: entry.state_dict() if entry is not None else None
                        for name, entry in self.shared.items()},
                     **per_rank}
            checkpoint.save_atomically(state, path, keep_last=keep_last)  # prunes first when the disk is short
            checkpoint.prune(self.run_dir, keep_last)
        barrier(self.ctx)
        return path

    def restore(self, state: dict[str, Any]) -> None:
        """Load every entry from a checkpoint dict read with `checkpoint.load` (this rank's own per-rank states)."""
        if state.get("version") != checkpoint.VERSION:
            raise ValueError(f"the checkpoint has format version {state.get('version')}, this code writes "
                             f"{checkpoint.VERSION}: resume it with the openmagvit2 version that wrote it, or start "
                             f"a new run from its weights with train.init_from=<file>.")
        for name, entry in self.shared.items():
            if entry is not None and state.get(name) is not None:
                entry.load_state_dict(state[name])
            elif state.get(name) is not None:
                log.warning("the checkpoint holds %r but this run has none (e.g. train.ema_decay=null): it is not "
                            "carried into the next checkpoint; resume with the checkpoint's settings to keep it.",
                            name)
        for name, entry in self.per_rank.items():
            entry.load_state_dict(self._own(state[name], name))
        self.step = int(state["step"])
        self.wandb_id = state.get("wandb_id")

    def _own(self, states: list[Any], name: str) -> Any:
        """This rank's state; with another world size than the checkpoint's, rank r takes r mod (saved ranks)."""
        if len(states) != self.ctx.world_size:
            log.warning("the checkpoint was written by %d process(es), this run has %d: %s states are reused "
                        "round-robin, so the run continues but does not repeat an uninterrupted one exactly.",
                        len(states), self.ctx.world_size, name)
        return states[self.ctx.rank % len(states)]
