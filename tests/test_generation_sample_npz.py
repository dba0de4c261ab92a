"""Sampling to .npz over ranks: every (class, index) once, results independent of world size and batch size."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from openmagvit2 import ARModel, Tokenizer
from openmagvit2.generation.sample_npz import combine_npz, rank_sample_ids, sample_to_npz
from openmagvit2.config import model_preset


@pytest.fixture(scope="module")
def models() -> tuple[ARModel, Tokenizer]:
    torch.manual_seed(0)
    model = ARModel(dim=32, num_heads=2, spatial_layers=1, factorized_layers=1, num_classes=3, grid_size=4,
                    ffn_multiple_of=16)
    with torch.no_grad():
        for head in model.head:
            head.weight.normal_()
    return model.eval(), Tokenizer(**model_preset("tiny")).eval()


def run(models, out_dir, world_size: int, batch_size: int) -> dict[str, np.ndarray]:
    model, tokenizer = models
    knobs = {"cfg_scale": (1.5, 2.0), "temperature": 1.0, "top_p": 0.95}
    for rank in range(world_size):
        sample_to_npz(model, tokenizer, out_dir, per_class=3, batch_size=batch_size, rank=rank,
                      world_size=world_size, seed=7, **knobs)
    return dict(np.load(combine_npz(out_dir, world_size)))


def test_two_ranks_equal_one_rank_and_every_sample_appears_once(models, tmp_path) -> None:
    one = run(models, tmp_path / "one", world_size=1, batch_size=4)
    two = run(models, tmp_path / "two", world_size=2, batch_size=2)
    assert one["arr_0"].shape == (9, 16, 16, 3) and one["arr_0"].dtype == np.uint8
    assert one["labels"].tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert one["sample_ids"].tolist() == list(range(9))
    for key in ("arr_0", "labels", "sample_ids"):
        np.testing.assert_array_equal(one[key], two[key])
    assert len({img.tobytes() for img in one["arr_0"]}) > 1  # per-sample seeds: not one image repeated


def test_rank_split_and_missing_ranks_are_refused(models, tmp_path) -> None:
    assert sorted(rank_sample_ids(10, 0, 3) + rank_sample_ids(10, 1, 3) + rank_sample_ids(10, 2, 3)) == list(range(10))
    model, tokenizer = models
    sample_to_npz(model, tokenizer, tmp_path, classes=[2], per_class=2, rank=0, world_size=2, top_k=1)
    with pytest.raises(FileNotFoundError):
        combine_npz(tmp_path, world_size=2)
    with pytest.raises(ValueError, match="rank=2"):
        rank_sample_ids(4, 2, 2)
