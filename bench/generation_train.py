"""Benchmark: one Stage II training step (`task=generator`, train.py's own `GeneratorTask`) on pre-extracted tokens
vs on images tokenized in the loop by the frozen tokenizer (the reference's way), as ratios in one run.

    python bench/generation_train.py                          # CPU: ar_tiny on the tiny tokenizer's 16x16 tokens
    python bench/generation_train.py --device cuda --ar-model ar_b --tokenizer-model openmagvit2_v3_256_large \
        --image-size 256 --batch-size 24 --precision bf16

Both rows run the same AR model, optimiser and step (`compute_losses` + `apply_updates`); the on-the-fly row also
runs the tokenizer's encoder on each batch, which is what pre-extracting the tokens saves. Random weights (the
costs, not the values, are measured); the batches are fixed and already on the device (data loading is not timed).
Rows take turns for `--repeats` rounds after a warm-up step each; each reports its fastest step.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from hydra import compose, initialize_config_dir  # noqa: E402

from openmagvit2.config import model_preset, validate_config  # noqa: E402
from openmagvit2.generation.training import GeneratorTask  # noqa: E402
from openmagvit2.models import Tokenizer  # noqa: E402
from openmagvit2.paths import conf_dir  # noqa: E402
from openmagvit2.train.distributed import DistributedContext  # noqa: E402


def build_task(args: argparse.Namespace, device: torch.device, tokenizer_dir: Path, on_tokens: bool
               ) -> GeneratorTask:
    """train.py's GeneratorTask (experiment sizes from the flags, data=sample, the tokenizer from `tokenizer_dir`);
    `on_tokens`: its batches are token ids (as with data=tokens) instead of images."""
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        cfg = compose("config", overrides=[
            "task=generator", f"ar_model={args.ar_model}", "optim=ar_adamw", "data=sample",
            f"data.image_size={args.image_size}", "data.num_workers=0", f"task.tokenizer={tokenizer_dir}",
            f"train.precision={args.precision}", "train.grad_clip=1.0", "train.ema_decay=null", "train.eval_images=8",
            f"device={args.device}", "logger.mode=disabled"])
    torch.manual_seed(0)  # both rows start from the same AR weights
    task = GeneratorTask.build(validate_config(cfg), DistributedContext(0, 1, 0, device), fine_tune=False)
    task.encode_images = not on_tokens
    return task


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--ar-model", default="ar_tiny")
    parser.add_argument("--tokenizer-model", default="tiny")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    torch.manual_seed(0)
    tokenizer_dir = Path(tempfile.mkdtemp()) / "tokenizer"
    Tokenizer(**model_preset(args.tokenizer_model)).save_pretrained(tokenizer_dir)  # random weights: costs only
    on_tokens = build_task(args, device, tokenizer_dir, on_tokens=True)
    images = torch.rand(args.batch_size, 3, args.image_size, args.image_size, device=device) * 2 - 1
    with torch.no_grad():
        tokens = on_tokens.tokenizer.encode(images).indices.flatten(1)
    labels = torch.arange(args.batch_size, device=device) % 7
    rows = {"pre-extracted tokens": (on_tokens, (tokens, labels)),
            "images, tokenized in the loop": (build_task(args, device, tokenizer_dir, on_tokens=False),
                                              (images, labels))}
    if tokens.shape[1] != rows["pre-extracted tokens"][0].model.config.grid_size ** 2:
        sys.exit(f"the tokenizer gives {tokens.shape[1]} tokens per image; choose --image-size to match the AR grid")
    best = {name: float("inf") for name in rows}
    for round_index in range(args.repeats + 1):
        for name, (task, batch) in rows.items():
            sync()
            start = time.perf_counter()
            task.apply_updates(task.compute_losses(batch, 0))
            sync()
            if round_index:  # round 0 warms up
                best[name] = min(best[name], time.perf_counter() - start)
    base = best["pre-extracted tokens"]
    name = torch.cuda.get_device_name() if device.type == "cuda" else f"CPU, {torch.get_num_threads()} thread(s)"
    print(f"\nStage II training step, ar_model={args.ar_model}, tokenizer={args.tokenizer_model} at "
          f"{args.image_size} px, batch {args.batch_size}, {args.precision}, {device.type} ({name}), "
          f"torch {torch.__version__}")
    print("| data | best ms | tokens/s | time vs pre-extracted |\n|---|---|---|---|")
    for row, seconds in best.items():
        print(f"| {row} | {seconds * 1e3:.1f} | {args.batch_size * tokens.shape[1] / seconds:,.0f} | "
              f"{seconds / base:.2f}x |")


if __name__ == "__main__":
    main()
