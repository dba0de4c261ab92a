"""Benchmark: one full training step of the recipe, as train.py performs it, as ratios against eager fp32.

    python bench/train_step.py                          # CPU, tiny model, 64x64, batch 8, K = 18 (~2-3 min on 2 cores)
    python bench/train_step.py --compile                # + torch.compile of the generator (~1.5 min more to compile)
    python bench/train_step.py --device cuda --experiment in256_large --perceptual random --max-batch --compile \
        --json runs/gpu-check/train_step_large.json       # the GPU figures of docs/benchmarks.md (make gpu-check)

One step = train.py's own step (`openmagvit2.train.step.training_step`): generator forward and
`TokenizerLoss.generator_loss` with the discriminator frozen, `discriminator_loss` on the detached reconstruction,
the finite check, then both backward passes and Adam steps, then the EMA update. The models, losses, precision
policy, EMA and optimisers are the real ones, built from the Hydra configs in conf/ (`--experiment`, default `demo`
with `model=tiny`; a recipe such as `in256_large` with `data=sample`, so the photos bundled with scikit-image stand in
for ImageNet), and each variant is a config override of that recipe
(`train.channels_last`, `train.precision`, `train.compile`). The perceptual term is off (`--perceptual off`, the
default) or LPIPS's calibrated heads on a randomly initialised VGG16 (`--perceptual random`: the recipe's cost
without its pretrained weights). The step index is `loss.disc_start`, i.e. the adversarial phase (both GAN terms
on). The data is one fixed batch from the config's train loader (data loading is not timed).

Rows: the eager fp32 step (baseline); channels_last; bf16 autocast; on CUDA also fp16 autocast + GradScaler, bf16 +
channels_last, and the reference-equivalent step (the LFQ entropy by the dense Open-MAGVIT2 formula, N x 2^K logits,
softmax, pbar = mean p, with fp16 autocast + GradScaler and no channels_last, as the reference trains); the
baseline step with the dense entropy (fp32); optionally torch.compile rows (timed after the eager table, so that a
slow compilation cannot lose it). The dense entropy is patched into the quantizer for its rows only.

Time: every variant first runs `--warmup` untimed steps (Adam state, oneDNN primitive caches, compilation); then the
variants take turns, one step each per round, for `--repeats` rounds, so that a change in the machine's load hits all
rows alike. Slow rows (the dense entropy, ~40 s a step on one CPU thread; any variant whose warm-up step took more than
`--slow-step-s`, e.g. bf16 on a CPU without native bf16) get one warm-up step and `--slow-repeats` timed steps. Each row
reports the fastest of its timed steps (on a shared machine the minimum is the least noisy estimate) and the
median. "entropy ms" is the wall time spent in the quantizer's entropy terms inside that fastest step: the forward
timed around the call, the backward between two identity autograd markers placed at the entropy's outputs and input.
On CUDA the peak memory of a step is torch.cuda.max_memory_allocated (not measured on CPU).

`--max-batch`: the largest per-process batch whose step fits in the GPU's memory, for our step (the recipe's own
precision) and for the reference-equivalent step: doubling from `--batch-size` until a step runs out of memory, then
bisection, up to `--max-batch-cap`. On CPU (no out-of-memory signal) it only doubles up to the cap, to rehearse the
code path. `--json PATH` writes every figure, rewritten after each phase so that a run stopped early keeps the rest.
"""
from __future__ import annotations

import argparse
import contextlib
import json
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
from omegaconf import DictConfig, OmegaConf  # noqa: E402

import openmagvit2.models.quantizer as quantizer_module  # noqa: E402
from openmagvit2.config import validate_config  # noqa: E402
from openmagvit2.data import build_train_loader  # noqa: E402
from openmagvit2.losses import TokenizerLoss, build_discriminator  # noqa: E402
from openmagvit2.models import Tokenizer  # noqa: E402
from openmagvit2.models.entropy import codebook_signs, entropy_terms  # noqa: E402
from openmagvit2.models.loading import describe_architecture, matching_architectures  # noqa: E402
from openmagvit2.train.precision import Precision  # noqa: E402
from openmagvit2.train.step import build_gan_training, training_step  # noqa: E402
from train import seed_everything  # noqa: E402

# A recipe's data and cluster are swapped for the bundled photos and this machine; its global batch is unpinned.
RECIPE_OVERRIDES = ["data=sample", "cluster=local", "train.global_batch_size=null", "data.num_workers=0"]
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


def check_dense_matches(bits: int, tokens: int = 256, device: torch.device | str = "cpu") -> float:
    """Largest difference between the dense and our entropy terms and their gradients, on `tokens` random tokens."""
    generator = torch.Generator().manual_seed(0)
    z = (torch.randn(tokens, bits, generator=generator) * 0.05).to(device).requires_grad_()
    signs_a = codebook_signs(bits // 2, device=device)
    signs_b = codebook_signs(bits - bits // 2, device=device)
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


# --- one training step, as train.py does it (the only copy of the step here: replace it by the shared step) ---------

class TrainingStep:
    """The models, losses, optimisers and EMA that train.py builds for one config, and train.py's own step
    (`openmagvit2.train.step.training_step`, not a copy).

    `perceptual`: an injected LPIPS network (e.g. random-initialised) when `loss.perceptual_weight` > 0.
    Calling it runs one step and returns the generator loss (detached).
    """

    def __init__(self, cfg: DictConfig, device: torch.device, perceptual: torch.nn.Module | None = None) -> None:
        self.cfg = cfg
        seed_everything(cfg.seed)  # every variant starts from the same weights
        criterion = TokenizerLoss(cfg.loss, perceptual=perceptual).to(device)
        self.tokenizer = Tokenizer.from_config(cfg.model, cfg.quantizer).to(device)
        discriminator = build_discriminator(cfg.loss).to(device)
        self.gan = build_gan_training(cfg, self.tokenizer, discriminator, criterion,
                                      Precision(cfg.train.precision, device), distributed=False)
        self.step_index = int(cfg.loss.disc_start)  # the adversarial phase: both GAN terms are on

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return training_step(self.gan, images, self.step_index).g_loss.detach()


# --- end of the step -------------------------------------------------------------------------------------------------

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
    base = [f"experiment={args.experiment}"] + (RECIPE_OVERRIDES if args.experiment != "demo" else [])
    if args.model:
        base.append(f"model={args.model}")
    perceptual = [] if args.perceptual == "random" else ["loss.perceptual_weight=0"]
    cfg = compose_run_config([
        *base, *perceptual, f"data.image_size={args.image_size}", f"train.batch_size={args.batch_size}",
        f"quantizer.codebook_bits={args.bits}", f"device={args.device}", *args.override, *overrides])
    validate_config(cfg)
    return cfg


def bench_device(name: str, threads: int) -> torch.device:
    """The `--device` to measure on, with `--threads` torch threads; exits with a message when CUDA is absent."""
    torch.set_num_threads(threads)
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: no CUDA device is available")
    return device


def compose_run_config(overrides: list[str]) -> DictConfig:
    """The training config train.py composes from conf/ for these command-line overrides (not yet validated).

    Shared with bench/video.py."""
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose(config_name="config", overrides=overrides)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 is stabler on a loaded machine)")
    parser.add_argument("--experiment", default="demo", help="conf/experiment recipe, e.g. in256_large")
    parser.add_argument("--model", default=None, help="conf/model override (default: tiny for demo, else the recipe's)")
    parser.add_argument("--perceptual", choices=["off", "random"], default="off",
                        help="LPIPS term off, or on with a random-initialised VGG16 (the recipe's cost, no weights)")
    parser.add_argument("--repeats", type=int, default=5, help="timed steps per row (rounds of the round robin)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per variant before timing")
    parser.add_argument("--slow-repeats", type=int, default=2,
                        help="timed steps of slow rows (the dense entropy; warm-up step over --slow-step-s)")
    parser.add_argument("--slow-step-s", type=float, default=5.0, help="a step slower than this makes a row slow")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--bits", type=int, default=18, help="K: quantizer.codebook_bits")
    parser.add_argument("--compile", action="store_true", help="add torch.compile(generator) rows (slow to compile)")
    parser.add_argument("--no-dense", action="store_true", help="skip the dense-entropy rows")
    parser.add_argument("--max-dense-gib", type=float, default=16.0,
                        help="skip the dense rows when their estimated N x 2^K tensors exceed this")
    parser.add_argument("--max-batch", action="store_true",
                        help="search the largest batch that fits in memory, ours vs the reference-equivalent step")
    parser.add_argument("--max-batch-cap", type=int, default=1024, help="stop the batch search here")
    parser.add_argument("--json", type=Path, default=None, help="write the figures here (after every phase)")
    parser.add_argument("--override", action="append", default=[], help="extra Hydra override (repeatable)")
    args = parser.parse_args(argv)
    if args.model is None and args.experiment == "demo":
        args.model = "tiny"
    return args


REFERENCE_ROW = "reference-equivalent: dense entropy, fp16 + GradScaler"


def build_rows(args: argparse.Namespace, device: torch.device, images: torch.Tensor, sync: Callable[[], None],
               perceptual: torch.nn.Module | None) -> tuple[list[Row], list[str], TrainingStep]:
    """The eager rows of the table (the compile rows are built later), and notes about skipped rows."""
    def step(*overrides: str) -> TrainingStep:
        return TrainingStep(compose_config(args, list(overrides)), device, perceptual)

    cuda = device.type == "cuda"
    baseline = step("train.precision=fp32", "train.channels_last=false")
    rows = [Row("eager fp32 (baseline)", baseline, entropy_terms, sync, args.repeats),
            Row("channels_last", step("train.precision=fp32", "train.channels_last=true"), entropy_terms, sync,
                args.repeats),
            Row("bf16 autocast", step("train.precision=bf16", "train.channels_last=false"), entropy_terms, sync,
                args.repeats)]
    fp16 = None
    if cuda:
        fp16 = step("train.precision=fp16", "train.channels_last=false")
        rows += [Row("fp16 autocast + GradScaler", fp16, entropy_terms, sync, args.repeats),
                 Row("bf16 + channels_last", step("train.precision=bf16", "train.channels_last=true"), entropy_terms,
                     sync, args.repeats)]
    notes = []
    tokens = images.shape[0] * (images.shape[-1] // baseline.tokenizer.downsample_factor) ** 2
    dense_gib = DENSE_COPIES * tokens * 2 ** args.bits * 4 / 2 ** 30
    if args.no_dense:
        notes.append("dense rows skipped (--no-dense)")
    elif dense_gib > args.max_dense_gib:
        notes.append(f"dense rows skipped: need ~{dense_gib:.0f} GiB > --max-dense-gib {args.max_dense_gib:g}")
    else:
        diff = check_dense_matches(args.bits, device=device)
        notes.append(f"dense formula vs ours on 256 random tokens: max abs diff of the two entropies and their "
                     f"gradients {diff:.1e}; dense needs ~{dense_gib:.0f} GiB of N x 2^K tensors")
        # The same models and optimisers as the baseline (and the fp16) row, the entropy swapped for the row only.
        rows.append(Row("fp32, dense entropy (reference formula)", baseline, dense_entropy_terms, sync,
                        min(args.slow_repeats, args.repeats)))
        if fp16 is not None:
            rows.append(Row(REFERENCE_ROW, fp16, dense_entropy_terms, sync, args.repeats))
    return rows, notes, baseline


def warm_up(rows: list[Row], images: torch.Tensor, sync: Callable[[], None], args: argparse.Namespace) -> None:
    warmed: set[int] = set()
    for row in rows:  # a dense row shares another row's models: that row's warm-up (our entropy) is its warm-up
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


def time_rows(rows: list[Row], images: torch.Tensor, sync: Callable[[], None], device: torch.device) -> None:
    for round_index in range(max(row.repeats for row in rows)):
        for row in rows:
            if round_index < row.repeats:
                row.run(images, sync, device, timed=True)
        print(f"round {round_index + 1}: " + ", ".join(f"{row.name.split(' (')[0]} {row.times[-1] * 1e3:.0f} ms"
                                                        for row in rows if round_index < row.repeats), flush=True)


def fits(step: TrainingStep, entropy_fn: Callable, images: torch.Tensor, batch: int, device: torch.device) -> bool:
    """Does one step at `batch` images (the fixed batch repeated) run without running out of GPU memory?"""
    big = images.repeat(math.ceil(batch / images.shape[0]), 1, 1, 1)[:batch]
    ok = True
    try:
        with quantizer_entropy(entropy_fn):
            step(big)
        if device.type == "cuda":
            torch.cuda.synchronize()
    except torch.cuda.OutOfMemoryError:  # (torch.OutOfMemoryError is the same class on recent torch)
        ok = False
    # Out of the except clause, the traceback (and the failed step's tensors it holds) is gone: free the memory.
    del big
    for optimizer in step.gan.optimizers:
        optimizer.zero_grad(set_to_none=True)
    for scaler in (step.gan.scaler_g, step.gan.scaler_d):
        if not ok and scaler.is_enabled():  # a step stopped between unscale_ and update must not block the next
            scaler._per_optimizer_states.clear()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return ok


def largest_batch(step: TrainingStep, entropy_fn: Callable, images: torch.Tensor, start: int, cap: int,
                  device: torch.device) -> dict:
    """Double from `start` until a step does not fit (or `cap`), then bisect: the largest batch that fits."""
    probes: list[tuple[int, bool]] = []

    def probe(batch: int) -> bool:
        ok = fits(step, entropy_fn, images, batch, device)
        probes.append((batch, ok))
        print(f"  batch {batch}: {'fits' if ok else 'out of memory'}", flush=True)
        return ok

    if not probe(start):
        return {"batch": 0, "capped": False, "probes": probes}
    good, bad = start, None
    while bad is None and good < cap:
        candidate = min(good * 2, cap)
        if probe(candidate):
            good = candidate
        else:
            bad = candidate
    if device.type == "cuda":
        while bad is not None and bad - good > max(1, good // 8):  # to within ~12% of the answer
            middle = (good + bad) // 2
            good, bad = (middle, bad) if probe(middle) else (good, middle)
    return {"batch": good, "capped": bad is None, "probes": probes}


def row_figures(row: Row, base_s: float, reference_s: float | None, batch: int) -> dict:
    best_index = min(range(len(row.times)), key=row.times.__getitem__)
    best, entropy = row.times[best_index], row.entropy_s[best_index]
    return {"name": row.name, "config": {"precision": str(row.step.cfg.train.precision),
                                         "channels_last": bool(row.step.cfg.train.channels_last),
                                         "compile": bool(row.step.cfg.train.compile),
                                         "entropy": "dense" if row.timer and row.timer.fn is dense_entropy_terms
                                         else "ours"},
            "timed_steps": len(row.times), "best_ms": best * 1e3, "median_ms": statistics.median(row.times) * 1e3,
            "img_per_s": batch / best, "vs_baseline": best / base_s,
            "speedup_vs_reference": (reference_s / best) if reference_s else None,
            "entropy_ms": None if math.isnan(entropy) else entropy * 1e3,
            "peak_mib": max(row.peaks) / 2 ** 20 if row.peaks else None}


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    device = bench_device(args.device, args.threads)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    report: dict = {"device": device_name(device), "torch": torch.__version__, "experiment": args.experiment,
                    "image_size": args.image_size, "batch_size": args.batch_size, "bits": args.bits,
                    "perceptual": args.perceptual, "phases_done": []}

    def save() -> None:
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(report, indent=1) + "\n")

    base_cfg = compose_config(args, [])
    # The shipped model config with this architecture (the schema has no `name` key; the file name is the name).
    architecture = OmegaConf.to_container(base_cfg.model, resolve=True)
    report["model"] = (matching_architectures(architecture) or [describe_architecture(architecture)])[0]
    report["recipe_precision"] = str(base_cfg.train.precision)
    loader = build_train_loader(base_cfg.data, base_cfg.train.batch_size, 0, 1, base_cfg.seed)
    images = next(iter(loader)).to(device)
    perceptual = None
    if args.perceptual == "random":
        from openmagvit2.losses import build_perceptual_loss

        perceptual = build_perceptual_loss(pretrained_backbone=False)
    rows, notes, baseline = build_rows(args, device, images, sync, perceptual)
    tokens = images.shape[0] * (images.shape[-1] // baseline.tokenizer.downsample_factor) ** 2
    report.update(tokens=tokens, notes=notes)

    load_before = os.getloadavg()
    started = time.perf_counter()
    warm_up(rows, images, sync, args)
    time_rows(rows, images, sync, device)
    load_after = os.getloadavg()
    reference = next((row for row in rows if row.name == REFERENCE_ROW), None)
    reference_s = min(reference.times) if reference else None
    base_s = min(rows[0].times)
    report["rows"] = [row_figures(row, base_s, reference_s, args.batch_size) for row in rows]
    report["phases_done"].append("eager")
    save()
    print_table(report, rows, args, device, tokens, notes)
    print(f"load average (1 min) {load_before[0]:.2f} before, {load_after[0]:.2f} after; timed part "
          f"{time.perf_counter() - started:.0f} s", flush=True)

    if args.max_batch:
        recipe_precision = str(base_cfg.train.precision)
        ours = next(row.step for row in rows if row.step.cfg.train.precision == recipe_precision
                    and not row.step.cfg.train.channels_last)
        searches = {"ours": (f"ours, {recipe_precision} (the recipe's precision)", ours, entropy_terms)}
        if reference is not None:
            searches["reference"] = (REFERENCE_ROW, reference.step, dense_entropy_terms)
        elif not args.no_dense:  # CPU: no fp16, the dense fp32 row stands in for the reference
            searches["reference"] = ("dense entropy, fp32", baseline, dense_entropy_terms)
        report["max_batch"] = {}
        for key, (label, step, entropy_fn) in searches.items():
            print(f"largest batch, {label}:", flush=True)
            found = largest_batch(step, entropy_fn, images, args.batch_size, args.max_batch_cap, device)
            report["max_batch"][key] = {"label": label, **found}
            save()
        if "reference" in report["max_batch"] and report["max_batch"]["reference"]["batch"]:
            batches = report["max_batch"]
            batches["ratio"] = batches["ours"]["batch"] / batches["reference"]["batch"]
        report["phases_done"].append("max_batch")
        save()
        print_max_batch(report["max_batch"], device)

    if args.compile:
        compile_rows = [Row(f"torch.compile(generator), {precision}" + (" + channels_last" if channels_last else ""),
                            TrainingStep(compose_config(args, [f"train.precision={precision}",
                                                               f"train.channels_last={str(channels_last).lower()}",
                                                               "train.compile=true"]), device, perceptual),
                            None, sync, args.repeats)
                        for precision, channels_last in compile_variants(args, device, str(base_cfg.train.precision))]
        for row in compile_rows:
            warm_up([row], images, sync, args)
            time_rows([row], images, sync, device)
            report["rows"].append(row_figures(row, base_s, reference_s, args.batch_size))
            save()
        report["phases_done"].append("compile")
        print_table(report, rows + compile_rows, args, device, tokens, notes)
    report["complete"] = True
    save()


def compile_variants(args: argparse.Namespace, device: torch.device, recipe_precision: str) -> list[tuple[str, bool]]:
    """fp32 on CPU; on CUDA the recipe's precision, then with channels_last (compiling a Large model takes about a
    minute, so `make gpu-check`'s time budget may stop the second)."""
    if device.type != "cuda":
        return [("fp32", False)]
    return [(recipe_precision, False), (recipe_precision, True)]


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name()
    return f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} thread(s)"


def print_table(report: dict, rows: list[Row], args: argparse.Namespace, device: torch.device, tokens: int,
                notes: list[str]) -> None:
    print(f"\nTraining step (G fwd+bwd+Adam, D fwd+bwd+Adam, EMA), model {report['model']} ({args.experiment}), "
          f"{args.image_size}x{args.image_size}, batch {args.batch_size}, K = {args.bits} (N = {tokens} tokens), "
          f"perceptual {args.perceptual}, {device.type} ({report['device']}), torch {torch.__version__}")
    print(f"fastest of the timed steps after up to {args.warmup} warm-up steps per variant (1 for slow ones), "
          "variants interleaved")
    cuda = device.type == "cuda"
    header = ("| variant | timed steps | best ms | median ms | images/s | time vs baseline | entropy ms | "
              "entropy share of step |")
    print(header + (" peak MiB | speed-up vs reference |" if cuda else ""))
    print("|---" * (10 if cuda else 8) + "|")
    for figures in report["rows"]:
        entropy = figures["entropy_ms"]
        entropy_cells = ("-", "-") if entropy is None else (f"{entropy:.1f}", f"{entropy / figures['best_ms']:.1%}")
        line = (f"| {figures['name']} | {figures['timed_steps']} | {figures['best_ms']:.0f} | "
                f"{figures['median_ms']:.0f} | {figures['img_per_s']:.1f} | {figures['vs_baseline']:.2f}x | "
                f"{entropy_cells[0]} | {entropy_cells[1]} |")
        if cuda:
            speedup = figures["speedup_vs_reference"]
            line += f" {figures['peak_mib']:.0f} | {'-' if speedup is None else f'{speedup:.2f}x'} |"
        print(line)
    print("time vs baseline = best step time / best baseline step time (< 1 is faster)")
    for note in notes:
        print(note)


def print_max_batch(found: dict, device: torch.device) -> None:
    print("\n| step | largest batch that fits | probes |\n|---|---|---|")
    for key in ("ours", "reference"):
        if key in found:
            entry = found[key]
            capped = " (the cap; more may fit)" if entry["capped"] else ""
            print(f"| {entry['label']} | {entry['batch']}{capped} | "
                  + ", ".join(f"{b}{'' if ok else ' OOM'}" for b, ok in entry["probes"]) + " |")
    if "ratio" in found:
        print(f"ours / reference: {found['ratio']:.1f}x" + ("" if device.type == "cuda" else
                                                            " (CPU: capped doubling only, a rehearsal)"))


if __name__ == "__main__":
    main()
