"""Exact resume under DDP with WebDataset shards whose corrupt samples fall on both ranks: N + N == 2N, bitwise.

Each rank skips a different number of corrupt samples, so its reader offsets differ from the other rank's: only a
checkpoint that saves and restores every rank's own data state (and skip counters) can continue both streams.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import FAST, run_entry_point
from openmagvit2.data.make_shards import convert
from synthetic_images import broken_images
from openmagvit2.train.checkpoint import checkpoint_path, latest_checkpoint, load

pytestmark = pytest.mark.slow


def make_image_folder(root: Path) -> None:
    """40 small random PNGs in 2 classes plus 5 corrupt files per class (so every rank meets some early)."""
    rng = np.random.default_rng(0)
    for index in range(40):
        folder = root / f"class_{index % 2}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(folder / f"{index:03d}.png")
    for label in (0, 1):
        for name, data in broken_images(seed=label).items():
            (root / f"class_{label}" / f"broken_{name}").write_bytes(data)


def torchrun(run_dir: Path, shards: str, max_steps: int, port: int) -> None:
    result = run_entry_point(
        ["-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={port}", "train.py", *FAST,
         "data=imagenet_wds", f"data.shards='{shards}'", f"data.val_shards='{shards}'", "data.num_workers=0",
         "data.image_size=32", "data.shuffle_buffer=5", "train.batch_size=2", "loss.disc_start=0",
         "train.ema_decay=0.9", f"train.max_steps={max_steps}", "train.ckpt_every=3", "train.eval_images=4",
         f"hydra.run.dir={run_dir}"], timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


def test_two_rank_shard_resume_with_corrupt_samples_is_exact(tmp_path: Path) -> None:
    make_image_folder(tmp_path / "train")
    convert(str(tmp_path / "train"), str(tmp_path / "shards"), shard_size=10, workers=1, check=False)  # keep them
    shards = str(tmp_path / "shards" / "train-{000000..000004}.tar")
    assert len(list((tmp_path / "shards").glob("train-*.tar"))) == 5

    torchrun(tmp_path / "straight", shards, max_steps=6, port=29531)
    torchrun(tmp_path / "split", shards, max_steps=3, port=29532)
    torchrun(tmp_path / "split", shards, max_steps=6, port=29533)
    a, b = load(latest_checkpoint(tmp_path / "straight")), load(latest_checkpoint(tmp_path / "split"))
    assert a["step"] == b["step"] == 6

    # The premise: both ranks skipped corrupt samples by the end, and at the resume point (step 3) the two ranks'
    # readers stood at different offsets, so resuming rank 1 from rank 0's state would replay the wrong samples.
    skipped = [rank_state["skipped_corrupt"] for rank_state in a["data"]]
    assert len(skipped) == 2 and all(count >= 1 for count in skipped), a["data"]
    at_resume = load(checkpoint_path(tmp_path / "straight", 3))["data"]
    assert at_resume[0]["reader_offsets"] != at_resume[1]["reader_offsets"], at_resume

    assert a["data"] == b["data"]
    for part in ("generator", "generator_ema", "discriminator", "loss"):
        assert a[part].keys() == b[part].keys()
        for key, value in a[part].items():
            assert torch.equal(value, b[part][key]), f"{part}.{key} differs after resume"
