"""Stage II training pieces: the reference's lr schedule, AdamW groups, experiment recipes (the loop: test_train_ar)."""
from __future__ import annotations

import pytest
import torch

from openmagvit2.generation.model import ARModel
from openmagvit2.generation.training import parameter_groups
from openmagvit2.train.schedule import lr_multiplier


def reference_lr(it: int, peak: float, wp_it: int, max_it: int, wp0: float = 0.005, wpe: float = 0.1) -> float:
    """REFERENCE-STAGE2 §7, written out: warm-up, 5% plateau, linear decay to wpe x peak."""
    if it < wp_it:
        return peak * (wp0 + (1 - wp0) * it / wp_it)
    pasd = (it - wp_it) / (max_it - 1 - wp_it)
    if pasd < 0.05:
        return peak
    return peak * (wpe + (1 - wpe) * (1 - pasd) / 0.95)


def test_linear_schedule_is_the_reference_formula() -> None:
    schedule = lr_multiplier("linear", max_steps=1000, warmup_steps=60, min_lr_ratio=0.1, warmup_start_ratio=0.005)
    for step in (0, 1, 30, 59, 60, 61, 106, 107, 500, 998, 999):
        assert schedule(step) * 3e-4 == pytest.approx(reference_lr(step, 3e-4, 60, 1000), rel=1e-12), step
    assert schedule(0) == pytest.approx(0.005) and schedule(999) == pytest.approx(0.1)


@pytest.mark.parametrize("scope, decayed_vectors", [("matrices", False), ("all", True)])
def test_weight_decay_covers_matrices_or_everything(scope: str, decayed_vectors: bool) -> None:
    model = ARModel(dim=32, num_heads=2, spatial_layers=1, factorized_layers=1, num_classes=3, grid_size=2,
                    ffn_multiple_of=16)
    decayed, kept = parameter_groups(model, 0.05, scope)
    assert decayed["weight_decay"] == 0.05 and kept["weight_decay"] == 0.0
    assert len(decayed["params"]) + len(kept["params"]) == len(list(model.parameters()))
    assert all(p.dim() >= 2 for p in decayed["params"]) != decayed_vectors
    assert any(p.dim() == 1 for p in decayed["params"]) == decayed_vectors  # RMSNorm weights
    torch.optim.AdamW([decayed, kept], lr=1e-3)  # the groups are what AdamW takes
