"""Benchmark: our exact factorised LFQ vs the dense MAGVIT-2 entropy (the Open-MAGVIT2 formula), forward + backward.

    python bench/lfq.py                      # K in {10, 14, 16, 18} x N in {256, 1024, 4096} tokens, CPU
    python bench/lfq.py --bits 18 --tokens 1024 --threads 1
    python bench/lfq.py --device cuda --bits 18 --tokens 2048 --max-dense-gib 40 --json runs/gpu-check/lfq.json

Both sides do the same job on `b K h w` latents (b = N / 256, 16x16 tokens per image): quantize, indices,
per-sample entropy, codebook entropy, commitment, then backward of entropy + commitment, in fp32.
Time: the fastest of `--repeats` (dense: `--dense-repeats`) runs after one warm-up; on a shared machine the minimum
is the least noisy estimate. Peak memory: the largest sum of live bytes the torch
allocator handed out during one forward+backward, measured from the profiler's allocation events (CPU) or
`torch.cuda.max_memory_allocated` (CUDA); it counts tensors only (no allocator caching, no library scratch space).
Dense cases whose estimated need (6 copies of N x 2^K fp32) exceeds `--max-dense-gib` are skipped and reported.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from einops import rearrange

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from openmagvit2 import LFQ

TEMPERATURE, EPS = 0.01, 1e-5
TOKENS_PER_IMAGE = 256
DENSE_COPIES = 6  # logits, scaled logits, probs, log-probs and their gradients are alive at the peak


def dense_lfq_step(z: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """The reference LFQ training step (Open-MAGVIT2 `LFQ.forward` + `entropy_loss`): dense `n 2^K` logits.

    z: `b k h w` (requires grad); codebook: `2^K K` +-1 codes. Runs backward and returns the loss.
    """
    codes = torch.where(z > 0, 1.0, -1.0)
    quantized = z + (codes - z).detach()
    bit_values = 2 ** torch.arange(z.shape[1], device=z.device)
    indices = ((z > 0).long() * rearrange(bit_values, "k -> k 1 1")).sum(dim=1)
    tokens = rearrange(z, "b k h w -> (b h w) k")
    logits = 2 * torch.einsum("nk,ck->nc", tokens, codebook)
    probs = torch.softmax(logits / TEMPERATURE, dim=-1)
    log_probs = torch.log_softmax(logits / TEMPERATURE + 1e-5, dim=-1)
    per_sample = (-(probs * log_probs).sum(dim=-1)).mean()
    mean_probs = probs.mean(dim=0)
    codebook_entropy = -(mean_probs * torch.log(mean_probs + EPS)).sum()
    commitment = ((z - codes.detach()) ** 2).mean()
    loss = per_sample - codebook_entropy + commitment
    loss.backward()
    del quantized, indices
    return loss.detach()


def factorised_lfq_step(z: torch.Tensor, quantizer: LFQ) -> torch.Tensor:
    """Our LFQ training step: the same outputs and loss, exact factorised entropy. Runs backward, returns the loss."""
    out = quantizer(z)
    loss = out.entropy_loss + out.commitment
    loss.backward()
    return loss.detach()


def make_latents(bits: int, tokens: int, device: str) -> torch.Tensor:
    images = max(tokens // TOKENS_PER_IMAGE, 1)
    side = int((tokens // images) ** 0.5)
    generator = torch.Generator(device="cpu").manual_seed(0)
    z = torch.randn(images, bits, side, side, generator=generator) * 0.05
    return z.to(device).requires_grad_()


def best_time_s(step: Callable[[], torch.Tensor], reset: Callable[[], None], repeats: int, device: str,
                warm_up: bool = True) -> float:
    """Fastest of `repeats` runs: on a shared machine the minimum is the least noisy estimate of the cost."""
    if warm_up:
        reset()
        step()
    times = []
    for _ in range(repeats):
        reset()
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        step()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return min(times)


def peak_bytes(step: Callable[[], torch.Tensor], reset: Callable[[], None], device: str) -> int:
    """Largest live tensor bytes during one step (allocator events on CPU, max_memory_allocated on CUDA)."""
    reset()
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        baseline = torch.cuda.memory_allocated()
        step()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - baseline
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    events = sorted((event.start_ns(), event.nbytes()) for event in prof.profiler.kineto_results.events()
                    if event.name() == "[memory]")
    live = peak = 0
    for _, nbytes in events:
        live += nbytes
        peak = max(peak, live)
    return peak


def run_case(bits: int, tokens: int, repeats: int, dense_repeats: int, device: str, max_dense_gib: float) -> dict:
    z = make_latents(bits, tokens, device)
    quantizer = LFQ(codebook_bits=bits, entropy_temperature=TEMPERATURE, entropy_eps=EPS).train().to(device)

    def reset() -> None:
        z.grad = None

    def ours() -> torch.Tensor:
        return factorised_lfq_step(z, quantizer)

    row = {"bits": bits, "tokens": tokens, "ours_s": best_time_s(ours, reset, repeats, device),
           "ours_bytes": peak_bytes(ours, reset, device)}
    dense_need_gib = DENSE_COPIES * tokens * 2 ** bits * 4 / 2 ** 30
    if dense_need_gib > max_dense_gib:
        row["skipped"] = f"dense needs ~{dense_need_gib:.0f} GiB > --max-dense-gib {max_dense_gib:g}"
        return row
    codebook = (((torch.arange(2 ** bits)[:, None] >> torch.arange(bits)) & 1) * 2 - 1).float().to(device)

    def dense() -> torch.Tensor:
        return dense_lfq_step(z, codebook)

    reset()
    dense_loss, dense_grad = dense(), z.grad.clone()  # also the dense warm-up
    reset()
    ours_loss, ours_grad = ours(), z.grad.clone()
    row["max_abs_diff"] = max((dense_loss - ours_loss).abs().item(), (dense_grad - ours_grad).abs().max().item())
    row["dense_s"] = best_time_s(dense, reset, dense_repeats, device, warm_up=False)
    row["dense_bytes"] = peak_bytes(dense, reset, device)
    return row


def print_table(rows: list[dict], device: str) -> None:
    print(f"\nLFQ forward+backward, fp32, {device} ({torch.get_num_threads()} threads), torch {torch.__version__}")
    print("| K | N tokens | dense ms | ours ms | speed-up | dense peak MiB | ours peak MiB | memory ratio | max abs diff |")
    print("|---|---|---|---|---|---|---|---|---|")
    mib = 2 ** 20
    for row in rows:
        ours = f"{row['ours_s'] * 1e3:.1f} | "
        if "skipped" in row:
            print(f"| {row['bits']} | {row['tokens']} | skipped | {ours}- | skipped | {row['ours_bytes'] / mib:.2f} | "
                  f"- | {row['skipped']} |")
            continue
        print(f"| {row['bits']} | {row['tokens']} | {row['dense_s'] * 1e3:.1f} | {ours}"
              f"{row['dense_s'] / row['ours_s']:.1f}x | {row['dense_bytes'] / mib:.1f} | {row['ours_bytes'] / mib:.2f} | "
              f"{row['dense_bytes'] / row['ours_bytes']:.0f}x | {row['max_abs_diff']:.1e} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bits", type=int, nargs="+", default=[10, 14, 16, 18])
    parser.add_argument("--tokens", type=int, nargs="+", default=[256, 1024, 4096])
    parser.add_argument("--repeats", type=int, default=10, help="timed runs of ours per case (the fastest counts)")
    parser.add_argument("--dense-repeats", type=int, default=2, help="timed runs of the dense baseline per case")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--max-dense-gib", type=float, default=8.0, help="skip dense cases estimated above this")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows here")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = []
    for bits in args.bits:
        for tokens in args.tokens:
            rows.append(run_case(bits, tokens, args.repeats, args.dense_repeats, args.device, args.max_dense_gib))
            print(f"done K={bits} N={tokens}", file=sys.stderr, flush=True)
    print_table(rows, args.device)
    if args.json:
        device_name = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"device": device_name, "torch": torch.__version__, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
