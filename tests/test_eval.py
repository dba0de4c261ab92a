"""The evaluation runner and eval.py: values equal direct computations, ranks split the work, weights refused early."""
from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import TinyFeatures

from openmagvit2 import weights
from openmagvit2.eval import evaluate, reconstruction_grid, save_reconstruction_grid
from openmagvit2.eval.batch import EvalBatch
from openmagvit2.eval.fid import FID, build_inception, prepare_for_inception
from openmagvit2.eval.images import to_uint8
from openmagvit2.eval.pixel import psnr_per_image, ssim_per_image
from openmagvit2.config import SampleDataConfig, model_preset
from openmagvit2.models import Tokenizer

ROOT = Path(__file__).resolve().parents[1]
CODEBOOK_BITS = 6


def tiny_tokenizer(seed: int = 0) -> Tokenizer:
    torch.manual_seed(seed)
    return Tokenizer(**model_preset("tiny"), codebook_bits=CODEBOOK_BITS).eval()


def image_batches(seed: int = 0, sizes: tuple[int, ...] = (4, 3, 5), size: int = 32) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    batches = []
    for b in sizes:
        low = torch.rand(b, 3, size // 4, size // 4, generator=generator) * 2 - 1
        batches.append(torch.nn.functional.interpolate(low, size=(size, size), mode="bilinear", align_corners=False))
    return batches


@functools.lru_cache(maxsize=1)
def random_lpips() -> torch.nn.Module:
    """LPIPS-AlexNet with a random trunk (no download), built once: AlexNet's initialisation takes seconds."""
    import lpips

    torch.manual_seed(7)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return lpips.LPIPS(net="alex", pnet_rand=True, verbose=False).eval()


ALL_METRICS = ["rfid", "psnr", "ssim", "lpips_alex", "usage"]


def run_all_metrics(tokenizer, batches):
    return evaluate(tokenizer, batches, ALL_METRICS, "cpu", fid_mode="legacy_pytorch", fid_extractor=TinyFeatures(seed=123),
                    fid_feature_dim=8, lpips_networks={"lpips_alex": random_lpips()})


@pytest.mark.filterwarnings("ignore:The `disp` argument:DeprecationWarning")  # clean-fid's call into scipy
def test_evaluate_equals_direct_computation_on_a_real_tiny_tokenizer():
    from cleanfid.fid import fid_from_feats

    tokenizer = tiny_tokenizer()
    batches = image_batches()
    results = run_all_metrics(tokenizer, batches)

    images = torch.cat(batches)
    with torch.no_grad():
        output = tokenizer(images)
        reconstructions, indices = output.reconstruction.clamp(-1, 1), output.quantizer.indices
        extractor = TinyFeatures(seed=123)
        real = extractor(prepare_for_inception(images, "legacy_pytorch")).double().numpy()
        fake = extractor(prepare_for_inception(reconstructions, "legacy_pytorch")).double().numpy()
        lpips_mean = random_lpips()(reconstructions, images).mean().item()
    a, b = to_uint8(images), to_uint8(reconstructions)
    counts = np.bincount(indices.flatten().numpy(), minlength=2**CODEBOOK_BITS)

    assert results["num_images"] == 12
    assert results["psnr"] == pytest.approx(psnr_per_image(a, b).mean().item(), rel=1e-9)
    assert results["ssim"] == pytest.approx(ssim_per_image(a, b).mean().item(), rel=1e-9)
    assert results["lpips_alex"] == pytest.approx(lpips_mean, rel=1e-5)
    assert results["rfid"] == pytest.approx(fid_from_feats(real, fake), rel=1e-5)
    assert results["usage"] == (counts > 0).sum() / 2**CODEBOOK_BITS
    assert results["codes_used"] == (counts > 0).sum()
    assert 0 < results["usage"] <= 1 and results["rfid"] > 0


class IdentityTokenizer(torch.nn.Module):
    """Reconstructs perfectly; its token id is the quantised mean brightness of each 4x4 patch."""

    def __init__(self, gain: float = 1.0) -> None:
        super().__init__()
        self.gain = gain
        self.quantizer = SimpleNamespace(codebook_size=8)

    def forward(self, images, compute_losses=False):
        patches = torch.nn.functional.avg_pool2d(images.mean(1, keepdim=True), 4).squeeze(1)
        indices = ((patches + 1) / 2 * 7.999).long().clamp(0, 7)
        return SimpleNamespace(reconstruction=images * self.gain, quantizer=SimpleNamespace(indices=indices))


def test_perfect_reconstructions_give_zero_fid_and_unit_ssim():
    metrics = ["rfid", "ssim", "psnr"]
    brighter = evaluate(IdentityTokenizer(gain=1.5), image_batches(1), metrics, "cpu", fid_extractor=TinyFeatures(seed=123),
                        fid_feature_dim=8)
    assert brighter["ssim"] < 0.99 and brighter["rfid"] > 1e-3  # x1.5 then clamped: not the originals
    ones = evaluate(IdentityTokenizer(), image_batches(1), metrics, "cpu", fid_extractor=TinyFeatures(seed=123),
                    fid_feature_dim=8)
    assert abs(ones["rfid"]) < 1e-6
    assert ones["ssim"] == pytest.approx(1.0, abs=1e-12)
    assert ones["psnr"] > 100


def test_evaluate_refuses_bad_arguments_and_restores_train_mode():
    tokenizer = tiny_tokenizer().train()
    with pytest.raises(ValueError, match="precision"):
        evaluate(tokenizer, image_batches(), ["psnr"], "cpu", precision="fp8")
    with pytest.raises(TypeError, match="b 3 H W"):
        evaluate(tokenizer, [(torch.zeros(1, 3, 16, 16), 0)], ["psnr"], "cpu")
    assert tokenizer.training
    with pytest.raises(ValueError, match="saw no images"):
        evaluate(tokenizer, [], ["psnr"], "cpu")


def test_on_batch_sees_clamped_reconstructions_and_grid_interleaves_rows(tmp_path):
    seen = []
    evaluate(IdentityTokenizer(gain=1.5), image_batches(2, sizes=(6,)), ["psnr"], "cpu",
             on_batch=lambda images, recons: seen.append((images, recons)))
    images, recons = seen[0]
    assert recons.max() <= 1 and recons.min() >= -1
    grid = reconstruction_grid(images, -recons, nrow=3)  # 2 rows of originals, each followed by its reconstructions
    cell = 32 + 2
    assert grid.shape == (3, 2 + 4 * cell, 2 + 3 * cell)
    assert torch.equal(grid[:, 2:34, 2:34], to_uint8(images[0]))
    assert torch.equal(grid[:, 2 + cell:34 + cell, 2:34], to_uint8(-recons[0]))
    assert torch.equal(grid[:, 2 + 2 * cell:34 + 2 * cell, 2:34], to_uint8(images[3]))
    path = save_reconstruction_grid(images, recons, tmp_path / "grid" / "r.png", nrow=3)
    from PIL import Image

    assert Image.open(path).size == (grid.shape[2], grid.shape[1])


@pytest.mark.filterwarnings("ignore::FutureWarning")  # torch.jit is deprecated, but clean-fid's file is TorchScript
def test_default_clean_inception_loads_the_torchscript_file_from_the_weights_path(tmp_path, monkeypatch):
    """Without injection, rFID builds clean-fid's InceptionV3W from the file `openmagvit2.weights` points to."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))

    class Layers(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x.mean(dim=(1, 2, 3), keepdim=True).expand(-1, 2048, 1, 1)

    class Base(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.layers = Layers()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.layers(x)

    path = weights.WEIGHTS["inception_clean"].path
    path.parent.mkdir(parents=True)
    torch.jit.save(torch.jit.script(Base()), str(path))
    build_inception.cache_clear()
    try:
        metric = FID(torch.device("cpu"), "clean")  # no extractor injected: the cached clean-fid network
        images = image_batches(3, sizes=(2,))[0]
        metric.update(EvalBatch(images, -images, torch.zeros(1)))
        assert build_inception("clean", "cpu") is build_inception("clean", "cpu")  # cached for repeated calls
    finally:
        build_inception.cache_clear()
    # InceptionV3W normalised the 299x299 pixels ((x - 128) / 128) and the stand-in averaged them per image
    expected = ((prepare_for_inception(images, "clean") - 128) / 128).mean(dim=(1, 2, 3)).double()
    assert metric.real.count.item() == 2
    assert torch.allclose(metric.real.total, expected.sum().expand(2048), rtol=1e-5)
    assert not torch.allclose(metric.fake.total, metric.real.total)


def _rank_worker(rank: int, world_size: int, port: int, out_dir: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
    try:
        batches = image_batches(sizes=(4, 3, 5, 2))
        mine = [batch for i, batch in enumerate(batches) if i % world_size == rank]  # disjoint shards
        results = run_all_metrics(tiny_tokenizer(), mine)
        Path(out_dir, f"rank{rank}.json").write_text(json.dumps(results))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_gloo_processes_give_the_same_metrics_as_one(tmp_path):
    import socket

    import torch.multiprocessing as mp

    single = run_all_metrics(tiny_tokenizer(), image_batches(sizes=(4, 3, 5, 2)))
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    mp.spawn(_rank_worker, args=(2, port, str(tmp_path)), nprocs=2, join=True)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert ranks[0] == ranks[1]  # every rank returns the same dict
    assert ranks[0]["num_images"] == single["num_images"] == 14
    for key, value in single.items():
        assert ranks[0][key] == pytest.approx(value, rel=1e-6, abs=1e-9), key


def run_eval_py(args: list[str], tmp_path: Path, nproc: int = 1) -> subprocess.CompletedProcess:
    env = {**os.environ, "TORCH_HOME": str(tmp_path / "empty_torch_home"), "PYTHONPATH": str(ROOT),
           "WANDB_SILENT": "true"}
    launcher = [sys.executable] if nproc == 1 else [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                                    f"--nproc_per_node={nproc}"]
    return subprocess.run([*launcher, str(ROOT / "eval.py"), *args], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=300)


def load_eval_entry_point():
    import importlib.util

    spec = importlib.util.spec_from_file_location("eval_entry_point", ROOT / "eval.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_eval_run_refuses_missing_weights_before_reading_the_checkpoint(tmp_path, monkeypatch):
    from hydra import compose, initialize_config_dir

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty_torch_home"))
    not_a_checkpoint = tmp_path / "model.pt"
    not_a_checkpoint.write_text("refused before anything reads this")
    entry = load_eval_entry_point()
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("eval", [f"ckpt={not_a_checkpoint}", "metrics=[psnr,lpips_vgg]"])
    with pytest.raises(weights.MissingWeightsError, match="lpips_vgg") as error:
        entry.run(cfg)
    assert "lpips_alex" not in str(error.value)
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("eval", [f"ckpt={not_a_checkpoint}", "fid_mode=tensorflow"])
    with pytest.raises(entry.ConfigError, match="fid_mode=tensorflow"):
        entry.run(cfg)
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("eval", [f"ckpt={not_a_checkpoint}", "metrics=[psnr,fidd]"])
    with pytest.raises(entry.ConfigError, match="unknown metric 'fidd'"):
        entry.run(cfg)


@pytest.mark.slow
def test_eval_py_refuses_missing_weights_with_the_message_not_a_traceback(tmp_path):
    not_a_checkpoint = tmp_path / "model.pt"
    not_a_checkpoint.write_text("refused before anything reads this")
    result = run_eval_py([f"ckpt={not_a_checkpoint}", "metrics=[rfid,lpips,psnr]",
                          f"hydra.run.dir={tmp_path / 'run'}"], tmp_path)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    for name in ("inception_clean", "lpips_alex", "lpips_vgg"):
        spec = weights.WEIGHTS[name]
        assert f"{tmp_path / 'empty_torch_home' / 'hub' / 'checkpoints' / spec.filename}" in result.stderr
    assert "make weights" in result.stderr


@pytest.mark.slow
def test_eval_py_refuses_a_missing_checkpoint_without_a_traceback(tmp_path):
    result = run_eval_py([f"ckpt={tmp_path / 'absent.pt'}", f"hydra.run.dir={tmp_path / 'run'}"], tmp_path)
    assert result.returncode == 2 and "does not exist" in result.stderr and "Traceback" not in result.stderr


def save_tiny_checkpoint(path: Path) -> Tokenizer:
    """A checkpoint in our training format, with an EMA copy that differs from the raw weights."""
    tokenizer = tiny_tokenizer(seed=1)
    ema = tiny_tokenizer(seed=2)
    torch.save({"format": "openmagvit2", "version": 1, "step": 5, "tokenizer_hparams": tokenizer.hparams,
                "generator": tokenizer.state_dict(), "generator_ema": ema.state_dict(), "discriminator": {},
                "config": {"data": {"image_size": 32}}}, path)
    return ema


@pytest.mark.slow
@pytest.mark.parametrize("nproc", [1, 2])
def test_eval_py_end_to_end_on_a_tiny_checkpoint(tmp_path, nproc):
    from openmagvit2.data import build_val_loader

    ckpt = tmp_path / "step_00000005.pt"
    ema = save_tiny_checkpoint(ckpt)
    run_dir = tmp_path / "run"
    wandb_mode = "offline" if nproc == 1 else "disabled"  # offline W&B needs no network or key
    # with 2 processes, also name the architecture on the command line (it must match the file's)
    architecture = [] if nproc == 1 else ["model=tiny", f"quantizer.codebook_bits={CODEBOOK_BITS}"]
    result = run_eval_py([f"ckpt={ckpt}", "metrics=[psnr,ssim,usage]", "data.image_size=32", "max_images=24",
                          "batch_size=8", "device=cpu", f"logger.mode={wandb_mode}", *architecture,
                          f"hydra.run.dir={run_dir}"], tmp_path, nproc=nproc)
    assert result.returncode == 0, result.stderr[-3000:]
    saved = json.loads((run_dir / "metrics.json").read_text())
    expected = evaluate(ema, build_val_loader(SampleDataConfig(image_size=32), 8, 0, 1, 24), ["psnr", "ssim", "usage"], "cpu")
    assert saved["metrics"]["num_images"] == 24
    for key, value in expected.items():
        assert saved["metrics"][key] == pytest.approx(value, rel=1e-9), key
    assert saved["world_size"] == nproc and saved["tokenizer_hparams"]["codebook_bits"] == CODEBOOK_BITS
    assert (run_dir / "reconstructions.png").is_file()
    assert f"| step_00000005 | 32 | 8×8 @32 | 2^{CODEBOOK_BITS} | – | {expected['psnr']:.2f} |" in result.stdout
    wandb_grids = list((run_dir / "wandb").glob("offline-run-*/files/media/images/eval/reconstructions_*.png"))
    assert len(wandb_grids) == (1 if nproc == 1 else 0)
