"""Class-conditional sampling to ADM-style `.npz` files, split over ranks, independent of the world size.

Every (class, index) pair with index < per_class is the sample id j = position of the class * per_class + index,
generated exactly once: rank r takes ids r, r + world_size, ... in batches. Sample j draws from its own
torch.Generator seeded with `seed * 2^32 + j`, so its tokens depend on (seed, j, model, knobs) only, not on the world
size, the rank or the batch it lands in. Each rank writes `samples_{rank}.npz` with `arr_0` (uint8 `n H W 3`, what
ADM's evaluator reads), `labels` and `sample_ids`; `combine_npz` merges the ranks' files in sample-id order, or in a
fixed shuffled order (`shuffle_seed`, as the reference's combine_npz.py shuffles: ADM's Inception Score averages over
splits of 5,000 consecutive samples, which in class order would each hold only 100 classes).
Knows nothing of process groups: the caller passes its rank and world size.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from einops import rearrange

from openmagvit2.eval.images import to_uint8
from openmagvit2.generation.sampling import Knob

if TYPE_CHECKING:
    from openmagvit2.generation.model import ARModel
    from openmagvit2.models import Tokenizer

SEED_STRIDE = 2 ** 32  # sample j of run seed s uses generator seed s * 2^32 + j


def rank_sample_ids(total: int, rank: int, world_size: int) -> list[int]:
    """The sample ids of `rank` among `total`: rank, rank + world_size, ... (every id on exactly one rank)."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank={rank} must be in [0, world_size={world_size}).")
    return list(range(rank, total, world_size))


@torch.no_grad()
def sample_to_npz(model: ARModel, tokenizer: Tokenizer, out_dir: str | Path, *, classes: Sequence[int] | None = None,
                  per_class: int = 50, batch_size: int = 32, rank: int = 0, world_size: int = 1, seed: int = 42,
                  cfg_scale: Knob = 1.0, temperature: Knob = 1.0, top_k: Knob = 0, top_p: Knob = 1.0,
                  on_batch: Callable[[int, int], None] | None = None) -> Path:
    """Generate this rank's share of `per_class` images for each class, decode them, write `samples_{rank}.npz`.

    `classes` defaults to every class of the model (ImageNet: 50 per class is the published 50k). The tokenizer
    decodes `b grid grid` ids (the one embedded in a released AR file: `Tokenizer.from_checkpoint(path)`), both
    models on the same device. `on_batch(done, total)` is called after each batch with this rank's counts (progress
    and throughput logging). Returns the file's path.
    """
    classes = list(range(model.config.num_classes)) if classes is None else [int(c) for c in classes]
    if per_class < 1 or batch_size < 1:
        raise ValueError(f"per_class={per_class} and batch_size={batch_size} must be >= 1.")
    device = model.pre_emb.weight.device
    grid = model.config.grid_size
    ids = rank_sample_ids(len(classes) * per_class, rank, world_size)
    images, labels = [], []
    for start in range(0, len(ids), batch_size):
        batch_ids = ids[start:start + batch_size]
        batch_labels = torch.tensor([classes[j // per_class] for j in batch_ids], device=device)
        generators = [torch.Generator(device=device).manual_seed(seed * SEED_STRIDE + j) for j in batch_ids]
        tokens = model.generate(batch_labels, cfg_scale=cfg_scale, temperature=temperature, top_k=top_k,
                                top_p=top_p, generator=generators)
        decoded = tokenizer.decode_indices(rearrange(tokens, "b (h w) -> b h w", h=grid))
        images.append(rearrange(to_uint8(decoded), "b c h w -> b h w c").cpu().numpy())
        labels.append(batch_labels.cpu().numpy())
        if on_batch is not None:
            on_batch(start + len(batch_ids), len(ids))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"samples_{rank}.npz"
    empty = np.zeros((0, grid * tokenizer.downsample_factor, grid * tokenizer.downsample_factor, 3), np.uint8)
    np.savez(path, arr_0=np.concatenate(images) if images else empty,
             labels=np.concatenate(labels) if labels else np.zeros(0, np.int64), sample_ids=np.asarray(ids, np.int64))
    return path


def combine_npz(out_dir: str | Path, world_size: int, name: str = "samples.npz", shuffle_seed: int | None = None
                ) -> Path:
    """Merge `samples_{0..world_size-1}.npz` into `name` (refusing gaps or duplicates).

    Rows are in sample-id order, or, with `shuffle_seed`, in the permutation `numpy.random.default_rng(seed)` draws
    (the same for every world size); `labels` and `sample_ids` follow the images.
    """
    out_dir = Path(out_dir)
    parts = [np.load(out_dir / f"samples_{rank}.npz") for rank in range(world_size)]
    ids = np.concatenate([part["sample_ids"] for part in parts])
    order = np.argsort(ids, kind="stable")
    if not np.array_equal(ids[order], np.arange(len(ids))):
        raise ValueError(f"the {world_size} rank files in {out_dir} do not hold sample ids 0..{len(ids) - 1} exactly "
                         f"once: rerun the missing ranks with the same world size.")
    if shuffle_seed is not None:
        order = order[np.random.default_rng(shuffle_seed).permutation(len(order))]
    destination = np.empty_like(order)
    destination[order] = np.arange(len(order))  # output row of each concatenated row
    # Fill one preallocated array a rank file at a time: 50k images at 256 px are 9.8 GB, held once.
    images, labels, offset = None, np.empty(len(ids), np.int64), 0
    for part in parts:
        part_images = part["arr_0"]
        if images is None:
            images = np.empty((len(ids), *part_images.shape[1:]), np.uint8)
        rows = destination[offset:offset + len(part_images)]
        images[rows], labels[rows] = part_images, part["labels"]
        offset += len(part_images)
        del part_images
    path = out_dir / name
    np.savez(path, arr_0=images, labels=labels, sample_ids=ids[order])
    return path


def class_grid_rows(out_dir: str | Path, world_size: int, per_class: int, num_rows: int, per_row: int
                    ) -> np.ndarray:
    """Images `num_rows per_row H W 3` uint8 from the rank files: row c holds the first `per_row` samples of the c-th
    class (sample ids c * per_class + 0..per_row-1), read one rank file at a time."""
    per_row = min(per_row, per_class)
    wanted = {row * per_class + index: (row, index) for row in range(num_rows) for index in range(per_row)}
    grid = None
    for rank in range(world_size):
        part = np.load(Path(out_dir) / f"samples_{rank}.npz")
        images = part["arr_0"]
        if grid is None:
            grid = np.zeros((num_rows, per_row, *images.shape[1:]), np.uint8)
        for position, sample_id in enumerate(part["sample_ids"].tolist()):
            if sample_id in wanted:
                grid[wanted[sample_id]] = images[position]
    return grid
