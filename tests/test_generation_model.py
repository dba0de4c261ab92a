"""ARModel: teacher-forced logits and loss against a direct computation on released keys, sizes, index split, the
KV-cache sampler against full recompute, classifier-free guidance, and a tiny overfit."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from openmagvit2 import ARModel
from openmagvit2.generation import ar_model_config, combine_subtokens, split_indices
from openmagvit2.generation.model import count_parameters

TINY = {"dim": 32, "num_heads": 4, "spatial_layers": 2, "factorized_layers": 2, "num_classes": 5, "grid_size": 4,
        "ffn_multiple_of": 16}
NO_DROPOUT = {"token_dropout": 0.0, "class_dropout": 0.0, "resid_dropout": 0.0, "ffn_dropout": 0.0}


def random_model(seed: int = 0, **overrides) -> ARModel:
    """A tiny model with every weight random (heads and norms included, so logits are informative), eval mode."""
    torch.manual_seed(seed)
    model = ARModel(**{**TINY, **overrides})
    with torch.no_grad():
        for name, param in model.named_parameters():
            param.copy_(1 + 0.1 * torch.randn_like(param) if name.endswith("norm.weight") else
                        0.3 * torch.randn_like(param))
    return model.eval()


def random_batch(model: ARModel, batch: int = 3, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    bits = model.config.token_bits
    indices = torch.randint(0, 2 ** bits, (batch, model.config.num_tokens), generator=g)
    labels = torch.randint(0, model.config.num_classes + 1, (batch,), generator=g)
    return indices, labels


# -- a direct computation from the released key names (the reference's formulas, written out) --------------------

def reference_rope(grid: int, head_dim: int, base: float = 10000.0) -> torch.Tensor:
    """precompute_freqs_cis_2d with one class token: `(1 + grid^2) head_dim/2 2` (cos, sin)."""
    half = head_dim // 2
    freqs = 1.0 / (base ** (torch.arange(0, half, 2)[: half // 2].float() / half))
    t = torch.arange(grid)
    freqs = torch.outer(t, freqs)
    grid_freqs = torch.cat([freqs[:, None, :].expand(-1, grid, -1), freqs[None, :, :].expand(grid, -1, -1)], dim=-1)
    cache = torch.stack([grid_freqs.cos(), grid_freqs.sin()], dim=-1).flatten(0, 1)
    return torch.cat([torch.zeros(1, half, 2), cache])


def reference_apply_rope(x: torch.Tensor, freqs: torch.Tensor) -> torch.Tensor:
    xs = x.float().reshape(*x.shape[:-1], -1, 2)
    f = freqs.view(1, xs.shape[1], 1, xs.shape[3], 2)
    out = torch.stack([xs[..., 0] * f[..., 0] - xs[..., 1] * f[..., 1],
                       xs[..., 1] * f[..., 0] + xs[..., 0] * f[..., 1]], dim=-1)
    return out.flatten(3)


def reference_rmsnorm(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    return x * torch.rsqrt((x * x).mean(-1, keepdim=True) + 1e-5) * weight


def reference_block(sd: dict, prefix: str, x: torch.Tensor, freqs: torch.Tensor, heads: int) -> torch.Tensor:
    b, s, d = x.shape
    hd = d // heads
    y = reference_rmsnorm(x, sd[prefix + "attention_norm.weight"])
    q, k, v = (y @ sd[prefix + "attention.wqkv.weight"].T).split([d, d, d], dim=-1)
    q, k, v = (t.view(b, s, heads, hd) for t in (q, k, v))
    q, k = reference_apply_rope(q, freqs), reference_apply_rope(k, freqs)
    q, k, v = (t.transpose(1, 2) for t in (q, k, v))
    scores = q @ k.transpose(-1, -2) / math.sqrt(hd)
    scores = scores.masked_fill(~torch.ones(s, s, dtype=torch.bool).tril(), float("-inf"))
    attn = (scores.softmax(-1) @ v).transpose(1, 2).reshape(b, s, d)
    h = x + attn @ sd[prefix + "attention.wo.weight"].T
    y = reference_rmsnorm(h, sd[prefix + "ffn_norm.weight"])
    ffn = (F.silu(y @ sd[prefix + "feed_forward.w1.weight"].T) * (y @ sd[prefix + "feed_forward.w3.weight"].T))
    return h + ffn @ sd[prefix + "feed_forward.w2.weight"].T


def reference_forward(sd: dict, indices: torch.Tensor, labels: torch.Tensor, heads: int, grid: int
                      ) -> tuple[list[torch.Tensor], torch.Tensor]:
    """GPT.forward + Net2NetTransformer's loss on a `transformer.*` state dict, eval mode, [6, 12] bits."""
    sd = {k[len("transformer."):]: v for k, v in sd.items() if k.startswith("transformer.")}
    pre, post = indices & 63, indices >> 6
    b, n = indices.shape
    d = sd["pre_emb.weight"].shape[1]
    tokens = sd["pre_emb.weight"][pre] + sd["post_emb.weight"][post]
    h = torch.cat([sd["class_emb.embedding_table.weight"][labels][:, None], tokens[:, :-1]], dim=1)
    freqs = reference_rope(grid, d // heads)[:n]
    layers = sorted({int(k.split(".")[1]) for k in sd if k.startswith("spatial_blocks.")})
    for i in layers:
        h = reference_block(sd, f"spatial_blocks.{i}.", h, freqs, heads)
    ctx = torch.stack([h, sd["pre_emb.weight"][pre]], dim=-2).reshape(b * n, 2, d)
    for i in sorted({int(k.split(".")[1]) for k in sd if k.startswith("factorized_blocks.")}):
        ctx = reference_block(sd, f"factorized_blocks.{i}.", ctx, freqs[:2], heads)
    out = reference_rmsnorm(ctx.view(b, n, 2, d), sd["norm.weight"])
    logits = [out[:, :, 0] @ sd["head.0.weight"].T, out[:, :, 1] @ sd["head.1.weight"].T]
    loss = F.cross_entropy(logits[0].reshape(-1, 64), pre.reshape(-1)) + \
        F.cross_entropy(logits[1].reshape(-1, 4096), post.reshape(-1))
    return logits, loss


def released_layout(model: ARModel) -> dict:
    """{"state_dict": {"transformer.<key>": ...}} as in AR_256_*.ckpt (the tokenizer part is tested elsewhere)."""
    return {"state_dict": {"transformer." + k: v.clone() for k, v in model.state_dict().items()}}


def test_teacher_forced_logits_and_loss_equal_the_direct_computation_on_released_keys(tmp_path) -> None:
    model = random_model()
    path = tmp_path / "AR_tiny.ckpt"
    torch.save(released_layout(model), path)
    loaded = ARModel.from_checkpoint(path, model=TINY)  # strict on the released key names
    indices, labels = random_batch(model)
    state = torch.load(path, weights_only=True)["state_dict"]
    expected_logits, expected_loss = reference_forward(state, indices, labels, TINY["num_heads"], TINY["grid_size"])
    out = loaded(indices, labels)
    assert [tuple(lg.shape) for lg in out.logits] == [(3, 16, 64), (3, 16, 4096)]
    for ours, expected in zip(out.logits, expected_logits):
        torch.testing.assert_close(ours, expected, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(out.loss, expected_loss, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(out.loss, sum(out.subtoken_losses))


def test_released_parameter_counts_and_key_layout_on_meta() -> None:
    expected = {"ar_b": (343_570_432, 188), "ar_l": (804_362_240, 279), "ar_xl": (1_486_679_040, 370)}
    for name, (parameters, keys) in expected.items():
        with torch.device("meta"):
            model = ARModel.from_config(name)
        state = model.state_dict()
        assert (count_parameters(model), len(state)) == (parameters, keys), name
    with torch.device("meta"):
        state = ARModel.from_config("ar_b").state_dict()
    shapes = [(k, tuple(v.shape)) for k, v in state.items()]
    assert shapes[:3] == [("pre_emb.weight", (64, 1024)), ("post_emb.weight", (4096, 1024)),
                          ("class_emb.embedding_table.weight", (1001, 1024))]
    assert shapes[3:10] == [("spatial_blocks.0.attention.wqkv.weight", (3072, 1024)),
                            ("spatial_blocks.0.attention.wo.weight", (1024, 1024)),
                            ("spatial_blocks.0.feed_forward.w1.weight", (2816, 1024)),
                            ("spatial_blocks.0.feed_forward.w3.weight", (2816, 1024)),
                            ("spatial_blocks.0.feed_forward.w2.weight", (1024, 2816)),
                            ("spatial_blocks.0.attention_norm.weight", (1024,)),
                            ("spatial_blocks.0.ffn_norm.weight", (1024,))]
    assert shapes[-3:] == [("norm.weight", (1024,)), ("head.0.weight", (64, 1024)), ("head.1.weight", (4096, 1024))]
    assert ar_model_config("ar_xl").ffn_hidden_dim == 4096 and ar_model_config("ar_l").ffn_hidden_dim == 3584


def test_index_split_round_trips_lsb_first() -> None:
    indices = torch.randint(0, 2 ** 18, (4, 256))
    pre, post = split_indices(indices, [6, 12])
    assert torch.equal(pre, indices & 63) and torch.equal(post, indices >> 6)
    assert torch.equal(combine_subtokens((pre, post), [6, 12]), indices)
    assert torch.equal(combine_subtokens(split_indices(indices, [18]), [18]), indices)
    # Bit c of the id is LFQ channel c (lsb_first): pre holds channels 0..5.
    from openmagvit2 import LFQ
    codes = LFQ(codebook_bits=18, bit_order="lsb_first", sample_minimization_weight=0, batch_maximization_weight=0).indices_to_codes(
        indices[:, :, None])  # `b K n 1`
    assert torch.equal((codes[:, :6, :, 0] > 0).long(), torch.stack([(pre >> c) & 1 for c in range(6)], dim=1))


@pytest.mark.parametrize("bits", [[6, 12], [18]])
def test_kv_cache_equals_full_recompute(bits) -> None:
    model = random_model(factorized_bits=bits)
    labels = torch.tensor([0, 3, 4])
    for cfg_scale in (1.0, 3.0, (2.0, 1.0), (0.0, 1.5)):
        if len(bits) == 1 and not isinstance(cfg_scale, float):
            continue
        cached = model.generate(labels, cfg_scale=cfg_scale, top_k=1)
        recomputed = model.generate(labels, cfg_scale=cfg_scale, top_k=1, kv_cache=False)
        assert torch.equal(cached, recomputed), cfg_scale
        assert cached.shape == (3, 16) and 0 <= cached.min() and cached.max() < 2 ** 18
    sampled = [model.generate(labels, cfg_scale=2.0, temperature=1.5, kv_cache=cache,
                              generator=torch.Generator().manual_seed(7)) for cache in (True, False)]
    assert torch.equal(sampled[0], sampled[1])


def test_greedy_generation_picks_the_argmax_of_teacher_forced_logits() -> None:
    model = random_model()
    labels = torch.tensor([1, 2])
    tokens = model.generate(labels, top_k=1)
    logits = model(tokens, labels).logits
    pre, post = split_indices(tokens, [6, 12])
    assert torch.equal(logits[0].argmax(-1), pre) and torch.equal(logits[1].argmax(-1), post)


def test_cfg_combines_conditional_and_unconditional_logits_per_subtoken() -> None:
    model = random_model()
    labels = torch.tensor([0, 4, 2])
    scales = (1.7, 3.0)
    tokens = model.generate(labels, cfg_scale=scales, top_k=1)
    conditional = model(tokens, labels).logits
    unconditional = model(tokens, torch.full_like(labels, model.config.num_classes)).logits
    for i, part in enumerate(split_indices(tokens, [6, 12])):
        guided = unconditional[i] + scales[i] * (conditional[i] - unconditional[i])
        assert torch.equal(guided.argmax(-1), part), f"sub-token {i}"
        assert not torch.equal(conditional[i].argmax(-1), part)  # guidance changed the choice somewhere


def test_sampling_is_reproducible_with_a_generator_and_per_row_generators_are_batch_independent() -> None:
    model = random_model()
    labels = torch.tensor([0, 1, 2, 3])
    knobs = {"cfg_scale": (1.5, 2.0), "temperature": (1.0, 1.1), "top_p": 0.9, "top_k": (0, 100)}
    first = model.generate(labels, generator=torch.Generator().manual_seed(3), **knobs)
    again = model.generate(labels, generator=torch.Generator().manual_seed(3), **knobs)
    assert torch.equal(first, again)
    assert not torch.equal(first, model.generate(labels, generator=torch.Generator().manual_seed(4), **knobs))
    per_row = model.generate(labels, generator=[torch.Generator().manual_seed(10 + i) for i in range(4)], **knobs)
    alone = model.generate(labels[2:3], generator=[torch.Generator().manual_seed(12)], **knobs)
    assert torch.equal(per_row[2:3], alone)


def test_generate_restores_training_mode_and_leaves_no_state() -> None:
    model = random_model().train()
    keys = list(model.state_dict())
    model.generate(torch.tensor([1]), cfg_scale=2.0, top_k=1)
    assert model.training and list(model.state_dict()) == keys


def test_tiny_model_overfits_a_handful_of_token_grids() -> None:
    torch.manual_seed(0)
    model = ARModel(**{**TINY, **NO_DROPOUT, "factorized_layers": 1})
    indices = torch.randint(0, 2 ** 18, (4, 16))
    labels = torch.tensor([0, 1, 2, 3])
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    start = model(indices, labels).loss.item()
    assert start == pytest.approx(math.log(64) + math.log(4096), rel=1e-4)  # zero heads: uniform predictions
    for _ in range(60):
        loss = model(indices, labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.05 * start
    assert torch.equal(model.eval().generate(labels, top_k=1), indices)  # greedy decoding replays the grids


def test_forward_refuses_bad_inputs() -> None:
    model = random_model()
    with pytest.raises(ValueError, match="do not fit grid_size"):
        model(torch.zeros(1, 17, dtype=torch.long), torch.zeros(1, dtype=torch.long))
    with pytest.raises(TypeError, match="int64"):
        model(torch.zeros(1, 16, dtype=torch.int32), torch.zeros(1, dtype=torch.long))
    with pytest.raises(ValueError, match="one value per sub-token"):
        model.generate(torch.tensor([0]), cfg_scale=(1.0, 2.0, 3.0))


def test_generate_under_bf16_autocast_uses_a_matching_cache() -> None:
    model = random_model()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        tokens = model.generate(torch.tensor([0, 1]), cfg_scale=2.0, top_k=1)
    assert tokens.shape == (2, 16) and tokens.dtype == torch.long


def test_greedy_tokens_equal_the_reference_sampling_procedure_of_the_benchmark() -> None:
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("bench_generation",
                                                  Path(__file__).resolve().parents[1] / "bench" / "generation.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    model = random_model()
    labels = torch.tensor([0, 2, 4])
    greedy = {"top_k": (1, 1), "temperature": (1.0, 1.0), "top_p": (1.0, 1.0)}
    for ours_cfg, reference_cfg in (((1.9, 2.0), (1.9, 2.0)), ((1.0, 1.0), (0.0, 0.0))):
        assert torch.equal(model.generate(labels, cfg_scale=ours_cfg, **greedy),
                           bench.reference_generate(model, labels, reference_cfg, **greedy))
