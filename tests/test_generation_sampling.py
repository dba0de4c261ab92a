"""Sampling utilities: guidance, top-k / top-p filtering, greedy cases, generators, knob validation."""
from __future__ import annotations

import pytest
import torch

from openmagvit2.generation.sampling import (draw, filter_logits, guide, sample_subtoken, sampling_knobs)


def test_guide_is_u_plus_s_times_c_minus_u_and_identity_at_one() -> None:
    c, u = torch.randn(3, 10), torch.randn(3, 10)
    both = torch.cat([c, u])
    torch.testing.assert_close(guide(both, 2.5, 3), u + 2.5 * (c - u))
    assert torch.equal(guide(both, 1.0, 3), c)
    assert torch.equal(guide(c, 4.0, 3), c)  # no unconditional rows were run
    torch.testing.assert_close(guide(both, 0.0, 3), u)


def test_top_k_and_top_p_keep_the_expected_tokens() -> None:
    logits = torch.log(torch.tensor([[0.5, 0.05, 0.3, 0.15]]))
    kept = lambda filtered: torch.isfinite(filtered[0]).nonzero().flatten().tolist()  # noqa: E731
    assert kept(filter_logits(logits, 2, 1.0)) == [0, 2]
    assert kept(filter_logits(logits, 0, 0.4)) == [0]
    assert kept(filter_logits(logits, 0, 0.6)) == [0, 2]  # the token that crosses top_p is kept
    assert kept(filter_logits(logits, 0, 0.9)) == [0, 2, 3]
    assert kept(filter_logits(logits, 3, 0.7)) == [0, 2]
    assert kept(filter_logits(logits, 0, 1.0)) == [0, 1, 2, 3]


def test_greedy_cases_and_multinomial_frequencies() -> None:
    logits = torch.tensor([[0.0, 2.0, 1.0]]).repeat(2, 1)
    assert sample_subtoken(logits, 0.0, 0, 1.0, None).tolist() == [1, 1]
    assert sample_subtoken(logits, 5.0, 1, 1.0, None).tolist() == [1, 1]
    probs = torch.tensor([[0.2, 0.5, 0.3]]).repeat(20000, 1)
    for generator in (torch.Generator().manual_seed(0), [torch.Generator().manual_seed(i) for i in range(20000)]):
        counts = torch.bincount(draw(probs, generator), minlength=3) / 20000
        torch.testing.assert_close(counts, probs[0], atol=0.02, rtol=0)
    sparse = torch.tensor([[0.0, 0.5, 0.0, 0.5, 0.0]]).repeat(5000, 1)  # zero-probability entries are never drawn
    assert set(draw(sparse, torch.Generator().manual_seed(1)).tolist()) == {1, 3}
    with pytest.raises(ValueError, match="one per row"):
        draw(probs[:2], [torch.Generator()])


def test_knobs_broadcast_and_validate() -> None:
    knobs = sampling_knobs(2, cfg_scale=(1.9, 2.0), temperature=1.0, top_k=0, top_p=1.0)
    assert knobs.cfg_scale == (1.9, 2.0) and knobs.temperature == (1.0, 1.0) and knobs.guided
    assert not sampling_knobs(2, 1.0, 1.0, 0, 1.0).guided
    with pytest.raises(ValueError, match="temperature"):
        sampling_knobs(2, 1.0, -1.0, 0, 1.0)
    with pytest.raises(ValueError, match="top_p"):
        sampling_knobs(2, 1.0, 1.0, 0, 0.0)
    with pytest.raises(ValueError, match="top_k"):
        sampling_knobs(2, 1.0, 1.0, -1, 1.0)
