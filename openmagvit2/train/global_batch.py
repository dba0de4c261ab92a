"""The global-batch rule, in one place: images per step = processes x `train.batch_size` = `train.global_batch_size`.

Checked twice, from two sides: by the launcher before a job is queued (from the cluster config's nodes x processes)
and by the trainer at start-up (from the world size it was given). Both call :func:`global_batch_mismatch`, so they
agree on the rule and say the same sentence. No imports: `openmagvit2.config` and `openmagvit2.launch` both use it.
"""
from __future__ import annotations


def global_batch_mismatch(global_batch_size: int | None, batch_size: int, world_size: int,
                          processes_per_node: int | None = None) -> str | None:
    """Why `world_size x batch_size` is not `global_batch_size` (one sentence with the fix), or None when it is.

    `global_batch_size=None` means "not pinned": any batch is fine. With `processes_per_node` the sentence counts
    nodes x processes (the launcher's view); without it, processes (the trainer's view).
    """
    if global_batch_size is None:
        return None
    images = world_size * batch_size
    if images == global_batch_size:
        return None
    per_process = global_batch_size / world_size
    if processes_per_node:
        layout = f"{world_size // processes_per_node} node(s) x {processes_per_node} process(es)"
        hint = (f"train.batch_size={int(per_process)}" if per_process.is_integer()
                else f"cluster.nodes={max(1, global_batch_size // (processes_per_node * batch_size))}")
    else:
        layout = f"{world_size} process(es)"
        hint = f"train.batch_size={int(per_process)}" if per_process.is_integer() else "another number of processes"
    return (f"{layout} x train.batch_size={batch_size} = {images} images per step, but "
            f"train.global_batch_size={global_batch_size}; set {hint} or change train.global_batch_size "
            "(null: train with whatever batch the processes give).")
