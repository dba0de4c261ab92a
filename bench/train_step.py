"""Benchmark: one full training step of the recipe, as train.py performs it, as ratios against eager fp32.

    python bench/train_step.py                          # CPU, tiny model, 64x64, batch 8, K = 18 (~2-3 min on 2 cores)
    python bench/train_step.py --compile                # + torch.compile of the generator (~1.5 min more to compile)
    python bench/train_step.py --device cuda --threads 8

One step = train.py's own step (`openmagvit2.train.step.training_step`): generator forward and
`TokenizerLoss.generator_loss` with the discriminator frozen, `discriminator_loss` on the detached reconstruction,
the finite check, then both backward passes and Adam steps, then the EMA update. The models, losses, precision
policy, EMA and optimisers are the real ones, built from the Hydra configs in conf/ (`experiment=demo`, `loss.perceptual_weight=0`, so no pretrained weights are needed), and each variant is a
config override of that recipe (`train.channels_last`, `train.precision`, `train.compile`). The step index is
`loss.disc_start`, i.e. the adversarial phase (both GAN terms on). The data is one fixed batch from the config's
train loader (data loading is not timed).

Rows: the eager fp32 step (baseline); channels_last; bf16 autocast; fp16 autocast + GradScaler (CUDA only); the
baseline step with the LFQ entropy computed by the dense Open-MAGVIT2 formula (N x 2^K logits, softmax, pbar = mean p)
instead of our factorised one, patched into the quantizer for that row only; optionally torch.compile.

Time: every variant first runs `--warmup` untimed steps (Adam state, oneDNN primitive caches, compilation); then the
variants take turns, one step each per round, for `--repeats` rounds, so that a change in the machine's load hits all
rows alike. Slow rows (the dense entropy, ~40 s a step on one CPU thread; any variant whose warm-up step took more than
`--slow-step-s`, e.g. bf16 on a CPU without native bf16) get one warm-up step and `--slow-repeats` timed steps. Each row
reports the fastest of its timed steps (on a shared machine the minimum is the least noisy estimate) and the
median. "entropy ms" is the wall time spent in the quantizer's entropy terms inside that fastest step: the forward
timed around the call, the backward between two identity autograd markers placed at the entropy's outputs and input.
On CUDA the peak memory of a step is torch.cuda.max_memory_allocated (not measured on CPU).
"""
from __future__ import annotations

import argparse
import contextlib
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from hydra import compose, initialize_config_dir  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

import openmagvit2.models.quantizer as quantizer_module  # noqa: E402
from openmagvit2.config import validate_config  # noqa: E402
from openmagvit2.data import build_train_loader  # noqa: E402
from openmagvit2.losses import TokenizerLoss, build_discriminator  # noqa: E402
from openmagvit2.models import Tokenizer  # noqa: E402
from openmagvit2.models.entropy import codebook_signs, entropy_terms  # noqa: E402
from openmagvit2.train.precision import Precision  # noqa: E402
from openmagvit2.train.step import build_gan_training, training_step  # noqa: E402
from train import seed_everything  # noqa: E402

BASE_OVERRIDES = ["experiment=demo", "model=tiny", "loss.perceptual_weight=0"]
DENSE_COPIES = 6  # live N x 2^K fp32 tensors at the dense formula's peak (measured in bench/lfq.py)


# --- the dense reference entropy, as a drop-in for openmagvit2.models.entropy.entropy_terms -------------------------

_CODEBOOKS: dict[tuple, torch.Tensor] = {}


def dense_entropy_terms(z: torch.Tensor, temperature: float, eps: float, signs_a: torch.Tensor,
                        signs_b: torch.Tensor, reduce_sum: Callable | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(per-sample entropy, codebook entropy) of tokens `n k` by the Open-MAGVIT2 formula (`LFQ.entropy_loss`).

    Dense `n 2^K` logits 2 <z, c> over the whole codebook, p = softmax(logits / T), per-sample entropy
    -sum p log_softmax(logits / T + eps) averaged over tokens, pbar = mean_n p, codebook entropy
    -sum pbar log(pbar + eps). Same signature and numbers (to rounding) as `entropy_terms`; local batch only.
    """
    if reduce_sum is not None:
        raise NotImplementedError("the dense reference benchmark computes the entropy over the local batch only")
    bits = signs_a.shape[1] + signs_b.shape[1]
    key = (bits, z.dtype, z.device)
    if key not in _CODEBOOKS:
        _CODEBOOKS[key] = codebook_signs(bits, dtype=z.dtype, device=z.device)  # `2^K K`, every code once
    logits = 2 * z @ _CODEBOOKS[key].T
    probs = torch.softmax(logits / temperature, dim=-1)
    log_probs = torch.log_softmax(logits / temperature + eps, dim=-1)
    per_sample = (-(probs * log_probs).sum(dim=-1)).mean()
    mean_probs = probs.mean(dim=0)
    codebook = -(mean_probs * torch.log(mean_probs + eps)).sum()
    return per_sample, codebook


def check_dense_matches(bits: int, tokens: int = 256) -> float:
    """Largest difference between the dense and our entropy terms and their gradients, on `tokens` random tokens."""
    generator = torch.Generator().manual_seed(0)
    z = (torch.randn(tokens, bits, generator=generator) * 0.05).requires_grad_()
    signs_a, signs_b = codebook_signs(bits // 2), codebook_signs(bits - bits // 2)
    results = []
    for fn in (entropy_terms, dense_entropy_terms):
        per_sample, codebook = fn(z, 0.01, 1e-5, signs_a, signs_b)
        (grad,) = torch.autograd.grad(per_sample - codebook, z)
        results.append((per_sample.detach(), codebook.detach(), grad))
    return max(float((a - b).abs().max()) for a, b in zip(*results))


# --- timing the entropy inside a step --------------------------------------------------------------------------------

class EntropyTimer:
    """Wraps an entropy function: forward timed around the call, backward between two identity autograd markers."""

    def __init__(self, fn: Callable, sync: Callable[[], None]) -> None:
        self.fn, self.sync = fn, sync
        self.seconds = 0.0
        self._backward_start = 0.0

    def reset(self) -> None:
        self.seconds = 0.0

    def __call__(self, z, temperature, eps, signs_a, signs_b, reduce_sum=None):
        self.sync()
        start = time.perf_counter()
        z = _BackwardEnd.apply(z, self)
        per_sample, codebook = self.fn(z, temperature, eps, signs_a, signs_b, reduce_sum=reduce_sum)
        per_sample, codebook = _BackwardStart.apply(per_sample, codebook, self)
        self.sync()
        self.seconds += time.perf_counter() - start
        return per_sample, codebook

    def backward_started(self) -> None:
        self.sync()
        self._backward_start = time.perf_counter()

    def backward_ended(self) -> None:
        self.sync()
        self.seconds += time.perf_counter() - self._backward_start


class _BackwardStart(torch.autograd.Function):
    @staticmethod
    def forward(ctx, per_sample, codebook, timer):
        ctx.timer = timer
        return per_sample.clone(), codebook.clone()

    @staticmethod
    def backward(ctx, grad_per_sample, grad_codebook):
        ctx.timer.backward_started()
        return grad_per_sample, grad_codebook, None


class _BackwardEnd(torch.autograd.Function):
    @staticmethod
    def forward(ctx, z, timer):
        ctx.timer = timer
        return z.clone()

    @staticmethod
    def backward(ctx, grad):
        ctx.timer.backward_ended()
        return grad, None


@contextlib.contextmanager
def quantizer_entropy(fn: Callable) -> Iterator[None]:
    """Use `fn` as the quantizer's entropy function (quantizer.py calls `entropy_terms` from its module namespace)."""
    original = quantizer_module.entropy_terms
    quantizer_module.entropy_terms = fn
    try:
        yield
    finally:
        quantizer_module.entropy_terms = original


# --- one training step: train.py's own (openmagvit2/train/step.py), not a copy -------------------------------------

class TrainingStep:
    """The models, losses, optimisers and EMA that train.py builds for one config, and the shared step."""

    def __init__(self, cfg: DictConfig, device: torch.device) -> None:
        self.cfg = cfg
        seed_everything(cfg.seed)  # every variant starts from the same weights
        criterion = TokenizerLoss(cfg.loss).to(device)
        self.tokenizer = Tokenizer.from_config(cfg.model, cfg.quantizer).to(device)
        discriminator = build_discriminator(cfg.loss).to(device)
        self.gan = build_gan_training(cfg, self.tokenizer, discriminator, criterion,
                                      Precision(cfg.train.precision, device), distributed=False)
        self.step_index = int(cfg.loss.disc_start)  # the adversarial phase: both GAN terms are on

    def __call__(self, images: torch.Tensor) -> None:
        training_step(self.gan, images, self.step_index)


class Row:
    """One table row: a training step plus the entropy implementation it runs with."""

    def __init__(self, name: str, step: TrainingStep, entropy_fn: Callable | None, sync: Callable[[], None],
                 repeats: int) -> None:
        self.name, self.step, self.repeats = name, step, repeats
        # Compiled generators trace the entropy; the timing markers would only add graph breaks there.
        self.timer = EntropyTimer(entropy_fn, sync) if entropy_fn is not None else None
        self.entropy_fn = self.timer or entropy_terms
        self.times: list[float] = []
        self.entropy_s: list[float] = []
        self.peaks: list[int] = []

    def run(self, images: torch.Tensor, sync: Callable[[], None], device: torch.device, timed: bool) -> None:
        if self.timer:
            self.timer.reset()
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
            before = torch.cuda.memory_allocated()
        sync()
        start = time.perf_counter()
        with quantizer_entropy(self.entropy_fn):
            self.step(images)
        sync()
        elapsed = time.perf_counter() - start
        if timed:
            self.times.append(elapsed)
            self.entropy_s.append(self.timer.seconds if self.timer else float("nan"))
            if device.type == "cuda":
                self.peaks.append(torch.cuda.max_memory_allocated() - before)


# --- driver ----------------------------------------------------------------------------------------------------------

def compose_config(args: argparse.Namespace, overrides: list[str]) -> DictConfig:
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[
            *BASE_OVERRIDES, f"data.image_size={args.image_size}", f"train.batch_size={args.batch_size}",
            f"quantizer.codebook_bits={args.bits}", f"device={args.device}", *args.override, *overrides])
    validate_config(cfg)
    return cfg


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 is stabler on a loaded machine)")
    parser.add_argument("--repeats", type=int, default=5, help="timed steps per row (rounds of the round robin)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per variant before timing")
    parser.add_argument("--slow-repeats", type=int, default=2,
                        help="timed steps of slow rows (the dense entropy; warm-up step over --slow-step-s)")
    parser.add_argument("--slow-step-s", type=float, default=5.0, help="a step slower than this makes a row slow")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--bits", type=int, default=18, help="K: quantizer.codebook_bits")
    parser.add_argument("--compile", action="store_true", help="add a torch.compile(generator) row (slow to compile)")
    parser.add_argument("--no-dense", action="store_true", help="skip the dense-entropy row")
    parser.add_argument("--max-dense-gib", type=float, default=16.0,
                        help="skip the dense row when its estimated N x 2^K tensors exceed this")
    parser.add_argument("--override", action="append", default=[], help="extra Hydra override (repeatable)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: no CUDA device is available")
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    base_cfg = compose_config(args, [])
    loader = build_train_loader(base_cfg.data, base_cfg.train.batch_size, 0, 1, base_cfg.seed)
    images = next(iter(loader)).to(device)
    baseline = TrainingStep(base_cfg, device)
    tokens = images.shape[0] * (images.shape[-1] // baseline.tokenizer.downsample_factor) ** 2

    rows = [Row("eager fp32 (baseline)", baseline, entropy_terms, sync, args.repeats),
            Row("channels_last", TrainingStep(compose_config(args, ["train.channels_last=true"]), device),
                entropy_terms, sync, args.repeats),
            Row("bf16 autocast", TrainingStep(compose_config(args, ["train.precision=bf16"]), device),
                entropy_terms, sync, args.repeats)]
    if device.type == "cuda":
        rows.append(Row("fp16 autocast + GradScaler",
                        TrainingStep(compose_config(args, ["train.precision=fp16"]), device),
                        entropy_terms, sync, args.repeats))
    dense_note = ""
    dense_gib = DENSE_COPIES * tokens * 2 ** args.bits * 4 / 2 ** 30
    if args.no_dense:
        dense_note = "dense row skipped (--no-dense)"
    elif dense_gib > args.max_dense_gib:
        dense_note = f"dense row skipped: needs ~{dense_gib:.0f} GiB > --max-dense-gib {args.max_dense_gib:g}"
    else:
        diff = check_dense_matches(args.bits)
        dense_note = (f"dense formula vs ours on 256 random tokens: max abs diff of the two entropies and their "
                      f"gradients {diff:.1e}; dense needs ~{dense_gib:.0f} GiB of N x 2^K tensors")
        # The same models and optimisers as the baseline, with the entropy function swapped for this row only.
        rows.append(Row("fp32, dense entropy (reference formula)", baseline, dense_entropy_terms, sync,
                        min(args.slow_repeats, args.repeats)))
    if args.compile:
        rows.append(Row("torch.compile(generator), fp32",
                        TrainingStep(compose_config(args, ["train.compile=true"]), device), None, sync,
                        args.repeats))

    load_before = os.getloadavg()
    started = time.perf_counter()
    warmed: set[int] = set()
    for row in rows:  # the dense row shares the baseline's models: its warm-up is the baseline's (our entropy)
        if id(row.step) in warmed:
            continue
        warm_start, warm_steps = time.perf_counter(), 0
        for _ in range(args.warmup):
            step_start = time.perf_counter()
            with quantizer_entropy(entropy_terms):
                row.step(images)
            sync()
            warm_steps += 1
            compiling = row.step.cfg.train.compile and warm_steps == 1  # the first compiled step compiles
            if time.perf_counter() - step_start > args.slow_step_s and not compiling:  # slow: fewer timed steps
                row.repeats = min(row.repeats, args.slow_repeats)
                break
        warmed.add(id(row.step))
        print(f"warm-up {row.name}: {warm_steps} step(s) in {time.perf_counter() - warm_start:.1f} s", flush=True)
    for round_index in range(max(row.repeats for row in rows)):
        for row in rows:
            if round_index < row.repeats:
                row.run(images, sync, device, timed=True)
        print(f"round {round_index + 1}: " + ", ".join(f"{row.name.split(' (')[0]} {row.times[-1] * 1e3:.0f} ms"
                                                        for row in rows if round_index < row.repeats), flush=True)
    load_after = os.getloadavg()

    print_table(rows, args, device, tokens, dense_note, str(base_cfg.model.name))
    print(f"load average (1 min) {load_before[0]:.2f} before, {load_after[0]:.2f} after; timed part "
          f"{time.perf_counter() - started:.0f} s")


def print_table(rows: list[Row], args: argparse.Namespace, device: torch.device, tokens: int, note: str,
                model: str) -> None:
    cpu = platform.processor() or platform.machine()
    name = torch.cuda.get_device_name() if device.type == "cuda" else f"{cpu}, {torch.get_num_threads()} thread(s)"
    print(f"\nTraining step (G fwd+bwd+Adam, D fwd+bwd+Adam, EMA), model {model}, {args.image_size}x{args.image_size}, "
          f"batch {args.batch_size}, K = {args.bits} (N = {tokens} tokens), {device.type} ({name}), "
          f"torch {torch.__version__}")
    print(f"fastest of the timed steps after up to {args.warmup} warm-up steps per variant (1 for slow ones), "
          "variants interleaved")
    cuda = device.type == "cuda"
    header = "| variant | timed steps | best ms | median ms | time vs baseline | entropy ms | entropy share of step |"
    print(header + (" peak MiB |" if cuda else ""))
    print("|---" * (8 if cuda else 7) + "|")
    base = min(rows[0].times)
    for row in rows:
        best_index = min(range(len(row.times)), key=row.times.__getitem__)
        best, entropy = row.times[best_index], row.entropy_s[best_index]
        entropy_cells = ("-", "-") if math.isnan(entropy) else (f"{entropy * 1e3:.1f}", f"{entropy / best:.1%}")
        line = (f"| {row.name} | {len(row.times)} | {best * 1e3:.0f} | {statistics.median(row.times) * 1e3:.0f} | "
                f"{best / base:.2f}x | {entropy_cells[0]} | {entropy_cells[1]} |")
        if cuda:
            line += f" {max(row.peaks) / 2 ** 20:.0f} |"
        print(line)
    print("time vs baseline = best step time / best baseline step time (< 1 is faster)")
    if note:
        print(note)


if __name__ == "__main__":
    main()
