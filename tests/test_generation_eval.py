"""`openmagvit2.eval.generation`: FID, IS, precision/recall against direct computations; ADM npz; refusals."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import scipy.linalg
import torch
from hydra import compose, initialize_config_dir
from einops import rearrange

from openmagvit2 import weights
from openmagvit2.errors import ConfigError
from openmagvit2.eval.generation import Batch, generation_metrics, precision_recall, read_batch, run

ROOT = Path(__file__).resolve().parents[1]


class RandomFeatures(torch.nn.Module):
    """A random-initialised stand-in for Inception (no download): uint8 `b h w 3` -> (`b 6` features, `b 5` logits)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 6, kernel_size=4, stride=4)
        self.classifier = torch.nn.Linear(6, 5, bias=False)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pixels = rearrange(images, "b h w c -> b c h w").float() / 128 - 1
        features = self.conv(pixels).mean(dim=(2, 3)) * 10
        return features, self.classifier(features)


def images(count: int, seed: int, shift: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.clip(rng.integers(0, 200, (count, 16, 16, 3)) + shift, 0, 255).astype(np.uint8)


def fid_by_hand(a: np.ndarray, b_mu: np.ndarray, b_sigma: np.ndarray) -> float:
    mu, sigma = a.mean(0), np.cov(a, rowvar=False)
    root = scipy.linalg.sqrtm(sigma @ b_sigma).real
    return float(((mu - b_mu) ** 2).sum() + np.trace(sigma) + np.trace(b_sigma) - 2 * np.trace(root))


def is_by_hand(logits: np.ndarray, split: int) -> float:
    scores = []
    for start in range(0, len(logits), split):
        p = torch.softmax(torch.from_numpy(logits[start:start + split]), dim=1).numpy()
        py = p.mean(0)
        scores.append(np.exp(np.mean([np.sum(row * (np.log(row) - np.log(py))) for row in p])))
    return float(np.mean(scores))


def pr_by_hand(ref: np.ndarray, gen: np.ndarray, k: int) -> tuple[float, float]:
    def radii(x):
        d = ((x[:, None] - x[None]) ** 2).sum(-1)
        return np.sort(d, axis=1)[:, k]  # column 0 is the point itself

    d = ((gen[:, None] - ref[None]) ** 2).sum(-1)  # gen x ref
    precision = np.mean([(d[i] <= radii(ref)).any() for i in range(len(gen))])
    recall = np.mean([(d[:, j] <= radii(gen)).any() for j in range(len(ref))])
    return float(precision), float(recall)


def test_metrics_equal_direct_computations_on_the_features() -> None:
    network = RandomFeatures()
    samples, reference = images(40, seed=1, shift=30), images(30, seed=2)
    results = generation_metrics(samples, Batch(reference, None, None), network, batch_size=7, is_split_size=16)
    gen_features, gen_logits = (t.double().numpy() for t in network(torch.from_numpy(samples)))
    ref_features = network(torch.from_numpy(reference))[0].double().numpy()
    expected_fid = fid_by_hand(gen_features, ref_features.mean(0), np.cov(ref_features, rowvar=False))
    assert results["fid"] == pytest.approx(expected_fid, rel=1e-6)
    assert results["fid"] > 1.0  # the shifted samples are far from the reference
    assert results["fid_reference"] == "reference images"
    assert results["inception_score"] == pytest.approx(is_by_hand(gen_logits, 16), rel=1e-9)
    expected_pr = pr_by_hand(ref_features, gen_features, k=3)
    assert (results["precision"], results["recall"]) == pytest.approx(expected_pr, abs=1e-12)
    assert results["num_samples"] == 40 and results["num_reference"] == 30


def test_precision_recall_edge_cases_and_blocks() -> None:
    rng = np.random.default_rng(0)
    ref = rng.normal(size=(50, 4))
    assert precision_recall(ref, ref.copy(), k=3) == (1.0, 1.0)  # identical sets
    far = ref + 100.0
    assert precision_recall(ref, far, k=3) == (0.0, 0.0)  # disjoint sets
    gen = rng.normal(size=(37, 4)) * 1.5
    assert precision_recall(ref, gen, k=3, block=8) == pytest.approx(pr_by_hand(ref, gen, 3), abs=1e-12)
    assert precision_recall(ref, gen, k=3, block=8) == precision_recall(ref, gen, k=3)


def test_reference_statistics_are_used_for_fid_when_present(tmp_path) -> None:
    network = RandomFeatures()
    samples, reference = images(24, seed=3), images(20, seed=4)
    mu, sigma = np.arange(6, dtype=np.float64), np.eye(6) * 2.0
    path = tmp_path / "ref.npz"
    np.savez(path, arr_0=reference, mu=mu, sigma=sigma)
    batch = read_batch(path, "ref")
    assert batch.images.dtype == np.uint8 and batch.mu.shape == (6,)
    results = generation_metrics(samples, batch, network)
    gen_features = network(torch.from_numpy(samples))[0].double().numpy()
    assert results["fid_reference"] == "npz mu/sigma"
    assert results["fid"] == pytest.approx(fid_by_hand(gen_features, mu, sigma), rel=1e-6)
    assert results["precision"] is not None  # still from the reference images
    images_only = generation_metrics(samples, batch, network, use_reference_statistics=False)
    assert images_only["fid_reference"] == "reference images" and images_only["fid"] != results["fid"]


def test_run_writes_metrics_json_and_refuses_bad_layouts(tmp_path) -> None:
    np.savez(tmp_path / "samples.npz", arr_0=images(12, seed=5), labels=np.zeros(12, np.int64))
    np.savez(tmp_path / "ref.npz", arr_0=images(10, seed=6))
    np.savez(tmp_path / "nchw.npz", arr_0=rearrange(images(4, seed=7), "b h w c -> b c h w"))
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        good = compose("eval_generation", [f"samples={tmp_path / 'samples.npz'}", f"ref={tmp_path / 'ref.npz'}",
                                           f"out={tmp_path / 'out'}", "device=cpu"])
        nchw = compose("eval_generation", [f"samples={tmp_path / 'nchw.npz'}", f"ref={tmp_path / 'ref.npz'}",
                                           f"out={tmp_path / 'out'}", "device=cpu"])
    results = run(good, network=RandomFeatures())
    assert (tmp_path / "out" / "metrics.json").is_file() and results["num_samples"] == 12
    with pytest.raises(ConfigError, match=r"arr_0 is uint8 \(4, 3, 16, 16\)"):
        run(nchw, network=RandomFeatures())


def cleanfid_tmp_copy_exists() -> bool:
    """clean-fid's own /tmp copy of the Inception counts as present whatever TORCH_HOME says."""
    return (weights.CLEANFID_CACHE_DIR / weights.WEIGHTS["inception_clean"].filename).is_file()


@pytest.mark.skipif(cleanfid_tmp_copy_exists(), reason="clean-fid's /tmp copy of the Inception exists here")
def test_cli_refuses_missing_inception_weights_with_one_message_and_exit_2(tmp_path) -> None:
    np.savez(tmp_path / "samples.npz", arr_0=images(4, seed=8))
    np.savez(tmp_path / "ref.npz", arr_0=images(4, seed=9))
    home = tmp_path / "empty_torch_home"
    env = {**os.environ, "TORCH_HOME": str(home), "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-m", "openmagvit2.eval.generation", f"samples={tmp_path / 'samples.npz'}",
                             f"ref={tmp_path / 'ref.npz'}", f"hydra.run.dir={tmp_path / 'run'}"], cwd=tmp_path,
                            env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    spec = weights.WEIGHTS["inception_clean"]
    assert f"put {spec.filename} at {home / 'hub' / 'checkpoints' / spec.filename}" in result.stderr
    assert result.stderr.startswith("openmagvit2.eval.generation: 1 pretrained weight file(s) are missing")
    assert "make weights" in result.stderr
    missing_samples = subprocess.run([sys.executable, "-m", "openmagvit2.eval.generation",
                                      f"samples={tmp_path / 'absent.npz'}", f"ref={tmp_path / 'ref.npz'}",
                                      f"hydra.run.dir={tmp_path / 'run'}"], cwd=tmp_path, env=env,
                                     capture_output=True, text=True, timeout=120)
    assert missing_samples.returncode == 2 and len(missing_samples.stderr.strip().splitlines()) == 1
    assert "samples=" in missing_samples.stderr and "does not exist" in missing_samples.stderr


class FakeInception(torch.nn.Module):
    """The interface of clean-fid's TorchScript Inception (`layers`, `output`, forward's keywords), random and tiny."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.layers = torch.nn.Sequential(torch.nn.Conv2d(3, 8, kernel_size=13, stride=13), torch.nn.ReLU(),
                                          torch.nn.AdaptiveAvgPool2d(1))
        self.output = torch.nn.Linear(8, 10)

    def forward(self, img: torch.Tensor, return_features: bool = False, use_fp16: bool = False,
                no_output_bias: bool = False) -> torch.Tensor:
        x = torch.nn.functional.interpolate(img.float(), size=[299, 299], mode="bilinear", align_corners=False)
        features = self.layers((x - 128.0) / 128.0).reshape(img.shape[0], -1)
        if return_features:
            return features
        logits = features @ self.output.weight.T if no_output_bias else self.output(features)
        return torch.softmax(logits, dim=1)


@pytest.fixture
def fake_inception_home(tmp_path, monkeypatch) -> Path:
    """A TORCH_HOME whose Inception file is a scripted `FakeInception` (no download)."""
    home = tmp_path / "torch_home"
    path = home / "hub" / "checkpoints" / weights.WEIGHTS["inception_clean"].filename
    path.parent.mkdir(parents=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # TorchScript is deprecated; the real file is TorchScript
        torch.jit.save(torch.jit.script(FakeInception()), str(path))
    monkeypatch.setenv("TORCH_HOME", str(home))
    return home


def test_inception_network_gives_pool_features_and_bias_free_logits(fake_inception_home) -> None:
    from openmagvit2.eval.generation import InceptionNetwork

    network = InceptionNetwork(torch.device("cpu"))
    batch = torch.from_numpy(images(3, seed=10))
    features, logits = network(batch)
    scripted = network.model
    nchw = rearrange(batch, "b h w c -> b c h w").float()
    torch.testing.assert_close(features, scripted(nchw, return_features=True))
    # softmax of our logits = the network's own no_output_bias probabilities (ADM's and StyleGAN's IS input)
    torch.testing.assert_close(logits.softmax(dim=1), scripted(nchw, no_output_bias=True))


def test_sample_then_score_through_both_commands(fake_inception_home, tmp_path) -> None:
    from openmagvit2 import ARModel, Tokenizer
    from openmagvit2.config import model_preset

    torch.manual_seed(0)
    model = ARModel(dim=32, num_heads=2, spatial_layers=1, factorized_layers=1, num_classes=2, grid_size=4,
                    ffn_multiple_of=16)
    torch.save(model.checkpoint(), tmp_path / "ar.pt")
    Tokenizer(**model_preset("tiny")).save_pretrained(tmp_path / "tok")
    np.savez(tmp_path / "ref.npz", arr_0=images(10, seed=11))
    env = {**os.environ, "TORCH_HOME": str(fake_inception_home), "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    sample = subprocess.run([sys.executable, "-m", "openmagvit2.sample", f"ckpt={tmp_path / 'ar.pt'}",
                             f"tokenizer={tmp_path / 'tok'}", "num_per_class=5", "device=cpu",
                             f"out={tmp_path / 'samples'}"], cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=300)
    assert sample.returncode == 0, sample.stderr[-3000:]
    score = subprocess.run([sys.executable, "-m", "openmagvit2.eval.generation",
                            f"samples={tmp_path / 'samples' / 'samples.npz'}", f"ref={tmp_path / 'ref.npz'}",
                            "device=cpu", f"out={tmp_path / 'scores'}"], cwd=tmp_path, env=env, capture_output=True,
                           text=True, timeout=300)
    assert score.returncode == 0, score.stderr[-3000:]
    saved = json.loads((tmp_path / "scores" / "metrics.json").read_text())["metrics"]
    assert saved["num_samples"] == 10 and saved["num_reference"] == 10
    assert saved["fid"] > 0 and 1.0 <= saved["inception_score"] <= 10.0
    assert 0.0 <= saved["precision"] <= 1.0 and 0.0 <= saved["recall"] <= 1.0
