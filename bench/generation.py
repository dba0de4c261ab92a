"""Benchmark: Stage II sampling, tokens/s of `ARModel.generate` with the static KV cache vs a full recompute and vs
the reference's sampling procedure (Open-MAGVIT2 `sample_Open_MAGVIT2`), written out below on the same weights.

    python bench/generation.py                               # CPU, a small random model, 16x16 tokens
    python bench/generation.py --dim 1024 --heads 16 --spatial-layers 24 --factorized-layers 2 --device cuda

The reference procedure, as upstream runs it: spatial KV caches padded to find_multiple(1 + n, 8) positions and
attended in full under a boolean mask; the intra caches re-allocated (zeros, same padded length) at every step and
also attended in full under the mask; guidance as a doubled batch whenever cfg_scale[0] > 1 (cfg 1.0 crashes
upstream, so its unguided rows use cfg 0, which skips guidance there). Ours: caches allocated once per call, each
step attends only to the filled prefix, a 2-position intra cache overwritten in place, and cfg 1.0 runs no
unconditional rows. A greedy run checks that the reference procedure produces our tokens before timing (the full
recompute equals the KV cache in tests/test_generation_model.py). Time: on CPU the process's CPU time (1 thread:
other jobs on a shared machine barely move it), on CUDA synced wall time; the fast rows take turns over `--repeats`
rounds after one warm-up each and report their best; the slow full recompute (guided case) runs once.
"""
from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from openmagvit2 import ARModel  # noqa: E402
from openmagvit2.generation.layers import Block  # noqa: E402
from openmagvit2.generation.tokens import combine_subtokens  # noqa: E402


# --- the reference sampling procedure (G:sample_Open_MAGVIT2 and the GPT methods it calls), on our modules ---------

def find_multiple(n: int, k: int) -> int:
    return n if n % k == 0 else n + k - n % k


def reference_rope(model: ARModel) -> torch.Tensor:
    """freqs_cis `(1 + n) e/2 2` (cos, sin) as upstream stores it."""
    return torch.view_as_real(model.rope)


def reference_apply_rope(x: torch.Tensor, freqs_cis: torch.Tensor) -> torch.Tensor:
    xs = x.float().reshape(*x.shape[:-1], -1, 2)
    f = freqs_cis.view(1, xs.size(1), 1, xs.size(3), 2).to(xs.dtype)
    out = torch.stack([xs[..., 0] * f[..., 0] - xs[..., 1] * f[..., 1],
                       xs[..., 1] * f[..., 0] + xs[..., 0] * f[..., 1]], dim=-1)
    return out.flatten(3)


def reference_block(block: Block, x: torch.Tensor, freqs_cis: torch.Tensor, input_pos: torch.Tensor,
                    mask: torch.Tensor, cache: tuple[torch.Tensor, torch.Tensor], heads: int) -> torch.Tensor:
    """Block.forward + Attention.forward with a KVCache and a mask (upstream's decode path)."""
    attention = block.attention
    y = block.attention_norm(x)
    b, s, d = y.shape
    q, k, v = attention.wqkv(y).split([d, d, d], dim=-1)
    q, k, v = (t.view(b, s, heads, d // heads) for t in (q, k, v))
    q, k = reference_apply_rope(q, freqs_cis), reference_apply_rope(k, freqs_cis)
    q, k, v = (t.transpose(1, 2) for t in (q, k, v))
    k_cache, v_cache = cache
    k_cache[:, :, input_pos] = k
    v_cache[:, :, input_pos] = v
    out = F.scaled_dot_product_attention(q, k_cache, v_cache, attn_mask=mask, is_causal=False)
    h = x + attention.wo(out.transpose(1, 2).contiguous().view(b, s, d))
    return h + block.feed_forward(block.ffn_norm(h))


def reference_filter(logits: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """top_k_top_p_filtering (HF), in place as upstream."""
    if top_k > 0:
        top_k = min(top_k, logits.size(-1))
        logits[logits < torch.topk(logits, top_k)[0][..., -1, None]] = float("-inf")
    if top_p < 1.0:
        sorted_logits, sorted_indices = torch.sort(logits, descending=True)
        remove = torch.cumsum(F.softmax(sorted_logits, dim=-1), dim=-1) > top_p
        remove[..., 1:] = remove[..., :-1].clone()
        remove[..., 0] = 0
        logits[remove.scatter(1, sorted_indices, remove)] = float("-inf")
    return logits


def reference_sample_from_logits(logits: torch.Tensor, temperature: float, top_k: int, top_p: float) -> torch.Tensor:
    logits = logits[:, -1, :] / temperature
    if top_k > 0 or top_p < 1.0:
        logits = reference_filter(logits, top_k, top_p)
    return torch.multinomial(F.softmax(logits, dim=-1), num_samples=1)


@torch.no_grad()
def reference_generate(model: ARModel, labels: torch.Tensor, cfg_scale: tuple[float, float],
                       temperature: tuple[float, float], top_k: tuple[int, int], top_p: tuple[float, float]
                       ) -> torch.Tensor:
    """sample.py's batch construction + sample_Open_MAGVIT2 (setup_caches, generate_context, decode_subtoken)."""
    config, device = model.config, labels.device
    heads, head_dim, steps = config.num_heads, config.head_dim, config.num_tokens
    guided = cfg_scale[0] > 1.0
    x = torch.cat([labels, torch.full_like(labels, config.num_classes)]) if guided else labels
    rows, batch = x.shape[0], labels.shape[0]
    max_seq = find_multiple(1 + steps, 8)
    dtype = model.pre_emb.weight.dtype
    spatial_caches = [(torch.zeros(rows, heads, max_seq, head_dim, dtype=dtype, device=device),
                       torch.zeros(rows, heads, max_seq, head_dim, dtype=dtype, device=device))
                      for _ in model.spatial_blocks]
    causal_mask = torch.tril(torch.ones(max_seq, max_seq, dtype=torch.bool, device=device))[None].repeat(rows, 1, 1)
    freqs_cis = reference_rope(model)
    pre_samples, post_samples = [], []
    tokens = model.class_emb.embedding_table(x)[:, None]
    for n in range(steps):
        input_pos = torch.tensor([n], device=device)
        h = model.token_drop(tokens)
        mask = causal_mask[:rows, None, input_pos]
        for block, cache in zip(model.spatial_blocks, spatial_caches):
            h = reference_block(block, h, freqs_cis[input_pos], input_pos, mask, cache, heads)
        intra_caches = [(torch.zeros(rows, heads, max_seq, head_dim, dtype=dtype, device=device),
                         torch.zeros(rows, heads, max_seq, head_dim, dtype=dtype, device=device))
                        for _ in model.factorized_blocks]  # setup_factorized_caches, every step
        sub_inputs = []
        for i in range(2):
            context = h if i == 0 else model.pre_emb(sub_inputs[0])
            factor_pos = torch.tensor([i], device=device)
            factor_mask = causal_mask[:rows, None, factor_pos]
            for block, cache in zip(model.factorized_blocks, intra_caches):
                context = reference_block(block, context, freqs_cis[factor_pos], factor_pos, factor_mask, cache,
                                          heads)
            logits = model.head[i](model.norm(context))
            if cfg_scale[i] > 1.0:
                cond, uncond = torch.split(logits, batch, dim=0)
                logits = uncond + (cond - uncond) * cfg_scale[i]
            sample = reference_sample_from_logits(logits, temperature[i], top_k[i], top_p[i])
            (pre_samples if i == 0 else post_samples).append(sample)
            sub_inputs.append(torch.cat([sample, sample]) if cfg_scale[i] > 1.0 else sample)
        tokens = model.pre_emb(sub_inputs[0]) + model.post_emb(sub_inputs[1])
    return combine_subtokens((torch.cat(pre_samples, dim=1), torch.cat(post_samples, dim=1)), [6, 12])


# --- timing --------------------------------------------------------------------------------------------------------

def clock(device: torch.device) -> Callable[[], float]:
    """Seconds: this process's CPU time on CPU (robust to other jobs on a shared machine), synced wall time on CUDA."""
    if device.type == "cuda":
        def wall() -> float:
            torch.cuda.synchronize()
            return time.perf_counter()
        return wall
    return time.process_time


def round_robin(fns: dict[str, Callable[[], torch.Tensor]], repeats: int, now: Callable[[], float]
                ) -> dict[str, float]:
    """Best time of each function: one warm-up each, then `repeats` rounds taking turns (load hits all alike)."""
    for fn in fns.values():
        fn()
    best = {name: float("inf") for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = now()
            fn()
            best[name] = min(best[name], now() - start)
    return best


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 is stabler on a loaded machine)")
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--heads", type=int, default=2)
    parser.add_argument("--spatial-layers", type=int, default=4)
    parser.add_argument("--factorized-layers", type=int, default=1)
    parser.add_argument("--grid", type=int, default=16, help="tokens per side (16: 256 tokens, as at 256 px)")
    parser.add_argument("--batch-size", type=int, default=16, help="images per call (guidance doubles the rows)")
    parser.add_argument("--cfg", type=float, nargs=2, default=(1.9, 2.0), help="guided rows' cfg (pre, post)")
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds of the fast rows")
    parser.add_argument("--no-recompute", action="store_true", help="skip the (slow, one run) full-recompute row")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    now = clock(device)
    torch.manual_seed(0)
    model = ARModel(dim=args.dim, num_heads=args.heads, spatial_layers=args.spatial_layers,
                    factorized_layers=args.factorized_layers, grid_size=args.grid, num_classes=1000).to(device)
    with torch.no_grad():
        for head in model.head:  # released init zeroes the heads: give the sampler real distributions
            head.weight.normal_(std=0.02)
    model.eval()
    labels = torch.arange(args.batch_size, device=device)
    cfg = tuple(args.cfg)

    greedy = {"top_k": (1, 1), "temperature": (1.0, 1.0), "top_p": (1.0, 1.0)}
    ours = model.generate(labels, cfg_scale=cfg, **greedy)
    assert torch.equal(ours, reference_generate(model, labels, cfg, **greedy)), "reference procedure differs"

    sampling = {"top_k": (0, 0), "temperature": (1.0, 1.0), "top_p": (1.0, 1.0)}
    fast = {("guided", "ours, KV cache"): lambda: model.generate(labels, cfg_scale=cfg, **sampling),
            ("guided", "reference procedure"): lambda: reference_generate(model, labels, cfg, **sampling),
            ("unguided", "ours, KV cache"): lambda: model.generate(labels, cfg_scale=1.0, **sampling),
            ("unguided", "reference procedure"): lambda: reference_generate(model, labels, (0.0, 0.0), **sampling)}
    seconds = round_robin(fast, args.repeats, now)
    if not args.no_recompute:
        start = now()
        model.generate(labels, cfg_scale=cfg, kv_cache=False, **sampling)
        seconds[("guided", "ours, full recompute")] = now() - start
    cfg_of = {"guided": f"{cfg[0]:g}, {cfg[1]:g}", "unguided": "1, 1 (reference: 0, 0)"}

    tokens = args.batch_size * args.grid ** 2
    unit = "CPU time of this process" if device.type == "cpu" else "wall time"
    print(f"Stage II sampling, {args.device}, {torch.get_num_threads()} thread(s), torch {torch.__version__}: "
          f"dim {args.dim}, {args.heads} heads, {args.spatial_layers}+{args.factorized_layers} layers, "
          f"{args.grid}x{args.grid} tokens, batch {args.batch_size}, fp32, top_k 0, top_p 1, temperature 1; "
          f"{unit}, best of {args.repeats} (recompute: 1 run); greedy tokens equal the reference procedure's")
    print("| case | cfg (pre, post) | method | tokens/s | time vs ours (KV cache) |")
    print("|---|---|---|---:|---:|")
    for (case, name), s in seconds.items():
        ratio = s / seconds[(case, "ours, KV cache")]
        print(f"| {case} | {cfg_of[case]} | {name} | {tokens / s:,.1f} | {ratio:.2f}x |")


if __name__ == "__main__":
    main()
