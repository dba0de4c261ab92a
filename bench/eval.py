"""Evaluation throughput: what each metric costs next to the tokenizer forward it rides on, on this machine.

Prints one table of images/s per stage with its ratio to a baseline measured in the same run (the tiny tokenizer's
forward), and the usage histogram against the reference's per-token Python dict loop. Feature networks are
random-initialised copies of the real architectures (same cost, no download). Run: `python bench/eval.py [--quick]`.
"""
from __future__ import annotations

import argparse
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from openmagvit2.eval import evaluate  # noqa: E402
from openmagvit2.eval.batch import EvalBatch  # noqa: E402
from openmagvit2.eval.fid import FID, prepare_for_inception  # noqa: E402
from openmagvit2.eval.images import to_uint8  # noqa: E402
from openmagvit2.eval.pixel import psnr_per_image, ssim_per_image  # noqa: E402
from openmagvit2.eval.runner import build_metrics  # noqa: E402
from openmagvit2.eval.usage import CodebookUsage  # noqa: E402
from openmagvit2.config import model_preset  # noqa: E402
from openmagvit2.models import Tokenizer  # noqa: E402


def seconds_per_call(fn: Callable[[], object], repeats: int) -> float:
    """Best-of-`repeats` wall time of `fn` after one warm-up call (best-of filters out noisy neighbours)."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def reference_usage_loop(indices: torch.Tensor, counts: dict[int, int]) -> None:
    """The reference evaluation's code counter: one `.item()` and one dict update per token."""
    for token in indices.flatten():
        counts[token.item()] = counts.get(token.item(), 0) + 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats and smaller inputs (CI smoke run)")
    args = parser.parse_args()
    repeats = 2 if args.quick else 3
    batch, size = (8, 64) if args.quick else (16, 128)
    torch.manual_seed(0)
    torch.set_grad_enabled(False)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")

    tokenizer = Tokenizer(**model_preset("tiny")).to(device).eval()
    images = torch.rand(batch, 3, size, size, device=device) * 2 - 1
    output = tokenizer(images, compute_losses=False)
    recon = output.reconstruction.clamp(-1, 1)
    eval_batch = EvalBatch(images, recon, output.quantizer.indices)
    a, b = to_uint8(images), to_uint8(recon)

    import lpips
    import torchvision

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        lpips_nets = {name: lpips.LPIPS(net=net, pnet_rand=True, verbose=False).to(device).eval()
                      for name, net in (("lpips_alex", "alex"), ("lpips_vgg", "vgg"))}
    inception = torchvision.models.inception_v3(weights=None, aux_logits=False, init_weights=False).to(device).eval()
    inception.fc = torch.nn.Identity()  # 2048-d pool features, like the FID networks

    every_metric = build_metrics(["rfid", "psnr", "ssim", "lpips", "usage"], device, codebook_size=2**18,
                                 fid_extractor=inception, lpips_networks=lpips_nets)

    def all_metrics_step(batch_images: torch.Tensor) -> None:
        """The body of evaluate()'s loop: forward, then every accumulator's update."""
        out = tokenizer(batch_images, compute_losses=False)
        step_batch = EvalBatch(batch_images, out.reconstruction.clamp(-1, 1), out.quantizer.indices)
        for accumulator in every_metric:
            accumulator.update(step_batch)

    usage = CodebookUsage(2**18, device)  # allocated once, as in evaluate(); only the per-batch update is timed
    stages: list[tuple[str, Callable[[], object]]] = [
        ("tokenizer forward (baseline)", lambda: tokenizer(images, compute_losses=False)),
        ("evaluate(psnr, ssim, usage) incl. forward",
         lambda: evaluate(tokenizer, [images], ["psnr", "ssim", "usage"], device)),
        ("all metrics per batch (fid_mode=clean) incl. forward", lambda: all_metrics_step(images)),
        ("PSNR (8-bit, per image)", lambda: psnr_per_image(a, b)),
        ("SSIM (8-bit, per image)", lambda: ssim_per_image(a, b)),
        ("usage histogram (2^18 codes, scatter-add)", lambda: usage.update(eval_batch)),
        ("FID input: clean (PIL bicubic, CPU threads)", lambda: prepare_for_inception(images, "clean")),
        ("FID input: legacy_pytorch (bilinear)", lambda: prepare_for_inception(images, "legacy_pytorch")),
        ("Inception-v3 features (random init)", lambda: inception(prepare_for_inception(images, "legacy_pytorch"))),
        ("LPIPS AlexNet (random trunk)", lambda: lpips_nets["lpips_alex"](recon, images)),
        ("LPIPS VGG16 (random trunk)", lambda: lpips_nets["lpips_vgg"](recon, images)),
    ]
    timings = {name: seconds_per_call(fn, repeats) for name, fn in stages}
    baseline = timings[stages[0][0]]

    table = Table(title=f"evaluation stages, batch {batch} at {size}px on {device.type} "
                        f"({torch.get_num_threads()} threads), best of {repeats}")
    table.add_column("stage")
    table.add_column("images/s", justify="right")
    table.add_column("time vs tokenizer forward", justify="right")
    for name, seconds in timings.items():
        table.add_row(name, f"{batch / seconds:,.1f}", f"{seconds / baseline:.2f}x")
    console = Console()
    console.print(table)
    fid_metric = next(metric for metric in every_metric if isinstance(metric, FID))
    start = time.perf_counter()
    fid_metric.compute()
    console.print(f"once per evaluation: Frechet distance of 2048-d features (scipy sqrtm) "
                  f"{time.perf_counter() - start:.1f} s")

    # Usage histogram vs the reference's per-token loop, on one 256px batch of 16x16 tokens.
    tokens = torch.randint(0, 2**18, (batch, 16, 16), device=device)
    token_batch = EvalBatch(images, recon, tokens)
    ours = seconds_per_call(lambda: usage.update(token_batch), repeats)
    reference = seconds_per_call(lambda: reference_usage_loop(tokens, {}), max(1, repeats // 2))
    usage_table = Table(title=f"codebook usage, {tokens.numel():,} tokens ({batch} images of 16x16 tokens)")
    usage_table.add_column("implementation")
    usage_table.add_column("tokens/s", justify="right")
    usage_table.add_column("speed-up vs reference", justify="right")
    usage_table.add_row("reference: Python dict, .item() per token", f"{tokens.numel() / reference:,.0f}", "1.0x")
    usage_table.add_row("ours: scatter-add into a device histogram", f"{tokens.numel() / ours:,.0f}",
                        f"{reference / ours:,.1f}x")
    console.print(usage_table)


if __name__ == "__main__":
    main()
