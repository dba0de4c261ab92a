"""GPU checks (`pytest -m gpu`, run by `make gpu-check`): training steps in every precision, the LFQ and the metrics
on CUDA against the CPU, train.py under torchrun with resume and eval.py after it, and the CPU device guard
(tests/device_guard.py) against CUDA's own rules.

Without a CUDA GPU these tests skip, unless OPENMAGVIT2_REQUIRE_GPU=1 (set by `make gpu-check`): then they fail.
OPENMAGVIT2_GPU_DEVICE=cpu (`make gpu-check DEVICE=cpu`) runs the same tests on the CPU with tiny sizes, a
rehearsal of the GPU run that CI can afford: fp16 (CUDA only) and the guard comparisons are skipped there, the
channels_last and compiled variants run in fp32, and `torch.compile` uses the `eager` backend (dynamo tracing, no
code generation).
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import sys
from pathlib import Path

import pytest
import torch

from conftest import FAST, ROOT, run_entry_point

sys.path.insert(0, str(ROOT / "bench"))
import train_step as bench_step  # noqa: E402  (bench/train_step.py: the step as train.py performs it)

pytestmark = pytest.mark.gpu

DEVICE = os.environ.get("OPENMAGVIT2_GPU_DEVICE", "cuda")
ON_GPU = DEVICE == "cuda"
# (image px, batch, steps, K) for each model: the recipe's batch 8 on the GPU, tiny sizes for the CPU rehearsal.
SIZES = {"tiny": (64, 8, 20, 18) if ON_GPU else (32, 2, 20, 10),
         "openmagvit2_v3_256_large": (256, 8, 20, 18) if ON_GPU else (32, 1, 6, 10)}
EXPERIMENTS = {"tiny": "demo", "openmagvit2_v3_256_large": "in256_large"}


@pytest.fixture(scope="module")
def device() -> torch.device:
    if DEVICE not in ("cuda", "cpu"):
        pytest.fail(f"OPENMAGVIT2_GPU_DEVICE={DEVICE!r}: use cuda or cpu")
    if ON_GPU and not torch.cuda.is_available():
        if os.environ.get("OPENMAGVIT2_REQUIRE_GPU") == "1":
            pytest.fail("OPENMAGVIT2_REQUIRE_GPU=1 (set by make gpu-check) but torch sees no CUDA GPU "
                        f"(torch {torch.__version__}, CUDA build {torch.version.cuda})")
        pytest.skip("no CUDA GPU (make gpu-check DEVICE=cpu rehearses these tests on the CPU)")
    return torch.device(DEVICE)


def bench_args(model: str) -> argparse.Namespace:
    size, batch, _, bits = SIZES[model]
    return bench_step.parse_args(["--device", DEVICE, "--experiment", EXPERIMENTS[model], "--model", model,
                                  "--image-size", str(size), "--batch-size", str(batch), "--bits", str(bits)])


def train_losses(model: str, device: torch.device, *overrides: str) -> list[float]:
    """Generator losses of `steps` training steps on one repeated batch (bench/train_step.py's step)."""
    args = bench_args(model)
    cfg = bench_step.compose_config(args, list(overrides))
    images = next(iter(bench_step.build_train_loader(cfg.data, cfg.train.batch_size, 0, 1, cfg.seed))).to(device)
    step = bench_step.TrainingStep(cfg, device)
    losses = [float(step(images)) for _ in range(SIZES[model][2])]
    if device.type == "cuda":
        torch.cuda.synchronize()
    return losses


def assert_learns(losses: list[float]) -> None:
    assert all(torch.isfinite(torch.tensor(losses))), losses
    window = max(1, len(losses) // 4)
    first, last = sum(losses[:window]) / window, sum(losses[-window:]) / window
    assert last < first, f"the loss did not decrease on a repeated batch: {losses}"


def test_lfq_on_the_device_equals_the_cpu(device) -> None:
    from openmagvit2 import LFQ

    bits = 18
    generator = torch.Generator().manual_seed(0)
    z = torch.randn(8, bits, 16, 16, generator=generator) * 0.05
    results = []
    for where in (torch.device("cpu"), device):
        quantizer = LFQ(codebook_bits=bits, entropy_temperature=0.01, entropy_eps=1e-5).train().to(where)
        z_here = z.to(where).requires_grad_()
        out = quantizer(z_here)
        (out.entropy_loss + out.commitment).backward()
        results.append({"quantized": out.quantized, "indices": out.indices, "entropy_loss": out.entropy_loss,
                        "per_sample_entropy": out.per_sample_entropy, "codebook_entropy": out.codebook_entropy,
                        "commitment": out.commitment, "grad": z_here.grad})
    cpu, here = results
    assert torch.equal(here["indices"].cpu(), cpu["indices"]) and torch.equal(here["quantized"].cpu(), cpu["quantized"])
    for name in ("entropy_loss", "per_sample_entropy", "codebook_entropy", "commitment", "grad"):
        expected = cpu[name].detach()
        torch.testing.assert_close(here[name].detach().cpu(), expected, rtol=1e-4,
                                   atol=1e-5 * float(expected.abs().max()) + 1e-8, msg=name)


def test_weight_free_metrics_on_the_device_equal_the_cpu(device, monkeypatch) -> None:
    """PSNR and SSIM to 1e-3; usage to two codes, since a latent within rounding of 0 may take the other sign."""
    from test_eval import CODEBOOK_BITS, image_batches, tiny_tokenizer

    from openmagvit2.eval import evaluate

    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)  # fp32 convolutions, as on the CPU
    metrics = ["psnr", "ssim", "usage"]
    expected = evaluate(tiny_tokenizer(), image_batches(), metrics, "cpu")
    results = evaluate(tiny_tokenizer().to(device), image_batches(), metrics, device)
    assert results["num_images"] == expected["num_images"]
    for name in ("psnr", "ssim"):
        assert results[name] == pytest.approx(expected[name], rel=1e-3), name
    assert abs(results["codes_used"] - expected["codes_used"]) <= 2
    assert results["usage"] == pytest.approx(expected["usage"], abs=2 / 2 ** CODEBOOK_BITS)
    for precision in ("bf16", "fp16") if ON_GPU else ("bf16",):
        approx = evaluate(tiny_tokenizer().to(device), image_batches(), metrics, device, precision=precision)
        assert abs(approx["psnr"] - expected["psnr"]) < 1.0, (precision, approx, expected)


@pytest.mark.slow
def test_torchrun_training_on_the_device_resumes(device, tmp_path: Path) -> None:
    """train.py under torchrun (1 process: the launch and device path of a GPU job), stopped at a checkpoint and
    resumed, then eval.py on its checkpoint. With one process there is no process group, so NCCL collectives need
    a 2-GPU machine."""
    common = ["-m", "torch.distributed.run", "--nproc_per_node=1", "--master_port=29531", "train.py",
              *FAST, f"device={DEVICE}", "loss.disc_start=1", "train.ema_decay=0.9",
              "train.ckpt_every=2", "train.eval_every=2", f"hydra.run.dir={tmp_path}"]
    first = run_entry_point([*common, "train.max_steps=2"], timeout=600)
    assert first.returncode == 0, first.stdout + first.stderr
    assert f"device {DEVICE}" in first.stdout
    second = run_entry_point([*common, "train.max_steps=4"], timeout=600)
    assert second.returncode == 0, second.stdout + second.stderr
    assert "resumed from" in second.stdout and "at step 2" in second.stdout
    assert (tmp_path / "COMPLETED").read_text().strip() == "4"

    # eval.py on the device, on the checkpoint just written: the weight-free metrics and the grid.
    from openmagvit2.train.checkpoint import latest_checkpoint

    run_dir = tmp_path / "eval"
    evaluated = run_entry_point(["eval.py", f"ckpt={latest_checkpoint(tmp_path)}", "metrics=[psnr,ssim,usage]",
                                 "data.image_size=32", "max_images=16", "batch_size=8", f"device={DEVICE}",
                                 "logger.mode=disabled", f"hydra.run.dir={run_dir}"], timeout=300)
    assert evaluated.returncode == 0, evaluated.stdout + evaluated.stderr
    metrics = json.loads((run_dir / "metrics.json").read_text())["metrics"]
    assert metrics["num_images"] == 16 and 0 < metrics["psnr"] < 100
    assert (run_dir / "reconstructions.png").is_file()


# --- the CPU device guard (tests/device_guard.py) against CUDA's real rules --------------------------------------------

def _guard_cases() -> dict:
    """Ops mixing a device tensor `d(shape)` and a host tensor `h(shape)`, each of which CUDA accepts or refuses."""
    import torch.nn.functional as F

    return {
        "stack(d 0-dim, h 0-dim)": lambda d, h: torch.stack([d(()), h(())]),
        "cat(d, h)": lambda d, h: torch.cat([d((2,)), h((2,))]),
        "d + h 0-dim": lambda d, h: d((3,)) + h(()),
        "h 0-dim * d": lambda d, h: h(()) * d((3,)),
        "d 0-dim + h 0-dim": lambda d, h: d(()) + h(()),
        "d + h": lambda d, h: d((3,)) + h((3,)),
        "d += h 0-dim": lambda d, h: d((3,)).add_(h(())),
        "h 0-dim += d 0-dim": lambda d, h: h(()).add_(d(())),
        "maximum(d, h 0-dim)": lambda d, h: torch.maximum(d((3,)), h(())),
        "where(d > 0, d, h 0-dim)": lambda d, h: torch.where(d((3,)) > 0, d((3,)), h(())),
        "lerp(d, d, h 0-dim)": lambda d, h: torch.lerp(d((3,)), d((3,)), h(())),
        "addcmul(d, d, h 0-dim)": lambda d, h: torch.addcmul(d((3,)), d((3,)), h(())),
        "clamp(d, min=h 0-dim)": lambda d, h: d((3,)).clamp(min=h(())),
        "mm(d, h)": lambda d, h: d((2, 2)) @ h((2, 2)),
        "conv2d(d, h weight)": lambda d, h: F.conv2d(d((1, 1, 4, 4)), h((1, 1, 3, 3))),
        "d[h long index]": lambda d, h: d((3,))[h((2,)).long()],
        "d.index_put_(h index, h 0-dim)": lambda d, h: d((3,)).index_put_((h((1,)).long(),), h(())),
        "d.masked_fill(d > 0, h 0-dim)": lambda d, h: d((3,)).masked_fill(d((3,)) > 0, h(())),
        "d.fill_(h 0-dim)": lambda d, h: d((3,)).fill_(h(())),
        "d.copy_(h)": lambda d, h: d((3,)).copy_(h((3,))),
        "_foreach_mul_([d], h 0-dim)": lambda d, h: torch._foreach_mul_([d((3,))], h(())),
        "_foreach_add_([d], [h])": lambda d, h: torch._foreach_add_([d((3,))], [h((3,))]),
    }


def _outcomes(device) -> dict[str, str]:
    def d(shape):
        return torch.ones(shape, device=device)

    def h(shape):
        return torch.ones(shape)

    results = {}
    for name, case in _guard_cases().items():
        try:
            case(d, h)
            results[name] = "accepted"
        except RuntimeError:
            results[name] = "refused"
    return results


def _guard_vs_cuda(device) -> tuple[dict, dict]:
    from device_guard import DeviceGuard

    if not ON_GPU:
        pytest.skip("compares the guard with CUDA itself: needs the GPU")
    cuda = _outcomes(device)
    with DeviceGuard() as guard:
        guarded = _outcomes(guard.device)
    return cuda, guarded


def test_device_guard_refuses_everything_cuda_refuses(device) -> None:
    cuda, guarded = _guard_vs_cuda(device)
    misses = [name for name in cuda if cuda[name] == "refused" and guarded[name] == "accepted"]
    assert not misses, f"tests/device_guard.py accepts what CUDA refuses: {misses}"


def test_device_guard_accepts_everything_cuda_accepts(device) -> None:
    cuda, guarded = _guard_vs_cuda(device)
    false_alarms = [name for name in cuda if cuda[name] == "accepted" and guarded[name] == "refused"]
    assert not false_alarms, f"tests/device_guard.py is stricter than CUDA (harmless, but fix it): {false_alarms}"


# Cheap checks first and compilation last, so that a run stopped by make gpu-check's time cap loses the least.
VARIANTS = [
    ("tiny", "fp32", False, False), ("tiny", "bf16", False, False), ("tiny", "fp16", False, False),
    ("tiny", "bf16", True, False),
    ("openmagvit2_v3_256_large", "fp32", False, False), ("openmagvit2_v3_256_large", "bf16", False, False),
    ("openmagvit2_v3_256_large", "fp16", False, False), ("openmagvit2_v3_256_large", "bf16", True, False),
    ("tiny", "bf16", False, True),
]


@pytest.mark.parametrize(("model", "precision", "channels_last", "compiled"), VARIANTS,
                         ids=[f"{m}-{p}{'-channels_last' if c else ''}{'-compile' if t else ''}"
                              for m, p, c, t in VARIANTS])
def test_training_steps_are_finite_and_learn(device, monkeypatch, model, precision, channels_last, compiled) -> None:
    if not ON_GPU:
        if precision == "fp16":
            pytest.skip("fp16 autocast + GradScaler is CUDA-only (Precision refuses it on the CPU)")
        if model != "tiny" and (precision != "fp32" or channels_last):
            pytest.skip("CPU rehearsal: the Large model runs in fp32 only (bf16 convolutions are a slow fallback)")
        precision = "fp32" if (channels_last or compiled) else precision
        monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="eager"))
    assert_learns(train_losses(model, device, f"train.precision={precision}",
                               f"train.channels_last={str(channels_last).lower()}",
                               f"train.compile={str(compiled).lower()}"))
