"""`python -m openmagvit2.sample`: the published presets, world-size independence through the real CLI, the npz."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from openmagvit2 import ARModel, Tokenizer
from openmagvit2.config import model_preset
from openmagvit2.errors import ConfigError
from openmagvit2.generation import PUBLISHED_SAMPLING, ar_model_config
from openmagvit2.generation.sample_npz import combine_npz, sample_to_npz
from openmagvit2.sample import published_preset_for, resolve_sampling

ROOT = Path(__file__).resolve().parents[1]


def knobs_cfg(**overrides):
    return OmegaConf.create({"preset": "auto", "cfg_scale": None, "temperature": None, "top_k": None, "top_p": None,
                             **overrides})


def test_published_presets_resolve_from_the_model_size() -> None:
    for name, published in PUBLISHED_SAMPLING.items():
        config = ar_model_config(name)
        assert published_preset_for(config) == name
        preset, knobs = resolve_sampling(knobs_cfg(), config)
        assert preset == name
        assert knobs == {"cfg_scale": list(published["cfg_scale"]), "temperature": list(published["temperature"]),
                         "top_k": 0, "top_p": 1.0}
    # REFERENCE-STAGE2 section 6, scripts/evaluation/sample_*.sh
    assert resolve_sampling(knobs_cfg(), ar_model_config("ar_b"))[1]["cfg_scale"] == [1.9, 2.0]
    assert resolve_sampling(knobs_cfg(), ar_model_config("ar_l"))[1]["temperature"] == [1.1, 1.0]
    assert resolve_sampling(knobs_cfg(), ar_model_config("ar_xl"))[1]["cfg_scale"] == [1.75, 1.85]


def test_explicit_knobs_override_the_preset_and_other_sizes_get_plain_defaults() -> None:
    config = ar_model_config("ar_b")
    preset, knobs = resolve_sampling(knobs_cfg(cfg_scale=[4.0, 4.0], top_p=0.96), config)
    assert preset == "ar_b" and knobs == {"cfg_scale": [4.0, 4.0], "temperature": [1.0, 1.0], "top_k": 0,
                                          "top_p": 0.96}
    assert resolve_sampling(knobs_cfg(preset="ar_xl"), config)[1]["cfg_scale"] == [1.75, 1.85]
    assert resolve_sampling(knobs_cfg(preset="none"), config) == (None, {"cfg_scale": 1.0, "temperature": 1.0,
                                                                         "top_k": 0, "top_p": 1.0})
    assert resolve_sampling(knobs_cfg(), ar_model_config("ar_tiny"))[0] is None
    with pytest.raises(ConfigError, match="preset=ar_m"):
        resolve_sampling(knobs_cfg(preset="ar_m"), config)
    with pytest.raises(ConfigError, match="one value per sub-token"):
        resolve_sampling(knobs_cfg(cfg_scale=[1.0, 2.0, 3.0]), config)


def test_combine_shuffles_with_a_fixed_permutation_whatever_the_world_size(tmp_path) -> None:
    torch.manual_seed(0)
    model = ARModel(dim=32, num_heads=2, spatial_layers=1, factorized_layers=1, num_classes=3, grid_size=4,
                    ffn_multiple_of=16).eval()
    tokenizer = Tokenizer(**model_preset("tiny")).eval()
    merged = {}
    for world_size in (1, 2):
        for rank in range(world_size):
            sample_to_npz(model, tokenizer, tmp_path / str(world_size), per_class=2, rank=rank,
                          world_size=world_size, top_k=1)
        merged[world_size] = dict(np.load(combine_npz(tmp_path / str(world_size), world_size, shuffle_seed=0)))
    ids = merged[1]["sample_ids"]
    assert sorted(ids.tolist()) == list(range(6)) and ids.tolist() != list(range(6))
    assert (merged[1]["labels"] == ids // 2).all()  # labels follow the images
    for key in ("arr_0", "labels", "sample_ids"):
        np.testing.assert_array_equal(merged[1][key], merged[2][key])


# -- the real command line ----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_files(tmp_path_factory) -> tuple[Path, Path]:
    """A tiny AR checkpoint (ours: no embedded tokenizer) and a tiny tokenizer folder."""
    folder = tmp_path_factory.mktemp("tiny")
    torch.manual_seed(0)
    model = ARModel(dim=32, num_heads=2, spatial_layers=1, factorized_layers=1, num_classes=3, grid_size=4,
                    ffn_multiple_of=16)
    with torch.no_grad():
        for head in model.head:
            head.weight.normal_()  # zero heads would sample uniformly; random ones make the classes differ
    torch.save(model.checkpoint(), folder / "ar.pt")
    Tokenizer(**model_preset("tiny")).save_pretrained(folder / "tok")
    return folder / "ar.pt", folder / "tok"


def run_sample(args: list[str], cwd: Path, nproc: int = 1) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    launcher = [sys.executable] if nproc == 1 else [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                                    f"--nproc_per_node={nproc}"]
    return subprocess.run([*launcher, "-m", "openmagvit2.sample", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


def test_two_gloo_ranks_write_the_samples_of_one_rank(tiny_files, tmp_path) -> None:
    ar, tok = tiny_files
    common = [f"ckpt={ar}", f"tokenizer={tok}", "num_per_class=3", "cfg_scale=[1.5,2.0]", "top_p=0.95",
              "device=cpu", "grid_classes=2", "grid_per_class=3"]
    one = run_sample([*common, "batch_size=4", f"out={tmp_path / 'one'}"], tmp_path)
    assert one.returncode == 0, one.stderr[-3000:]
    # no out=: both ranks must agree on rank 0's Hydra run dir
    two = run_sample([*common, "batch_size=2", f"hydra.run.dir={tmp_path / 'two'}"], tmp_path, nproc=2)
    assert two.returncode == 0, two.stderr[-3000:]
    first, second = (dict(np.load(tmp_path / name / "samples.npz")) for name in ("one", "two"))
    images = first["arr_0"]
    assert images.dtype == np.uint8 and images.shape == (9, 16, 16, 3)  # ADM layout: N H W 3
    assert sorted(first["sample_ids"].tolist()) == list(range(9))
    assert (first["labels"] == first["sample_ids"] // 3).all()
    for key in ("arr_0", "labels", "sample_ids"):
        np.testing.assert_array_equal(first[key], second[key])
    assert not list((tmp_path / "two").glob("samples_*.npz"))  # the rank parts are merged and removed
    grid = Image.open(tmp_path / "one" / "grid.png")
    assert grid.size == (3 * 16 + 4 * 2, 2 * 16 + 3 * 2)  # 2 class rows of 3 images, 2 px padding
    settings = json.loads((tmp_path / "two" / "sampling.json").read_text())
    assert settings["world_size"] == 2 and settings["cfg_scale"] == [1.5, 2.0] and settings["preset"] is None


def test_refusals_name_the_key_before_any_work(tiny_files, tmp_path) -> None:
    from hydra import compose, initialize_config_dir

    from openmagvit2.sample import run

    ar, _ = tiny_files
    cases = [([f"ckpt={tmp_path / 'absent.ckpt'}"], "ckpt=.*does not exist"),
             ([f"ckpt={ar}", "preset=ar_m"], "preset=ar_m is not a published setting"),
             ([f"ckpt={ar}", "num_per_class=0"], "num_per_class=0 must be >= 1"),
             ([f"ckpt={ar}", "precision=fp8"], "precision=fp8"),
             ([f"ckpt={ar}", "device=cpu"], "embeds no tokenizer.*pass tokenizer="),
             ([f"ckpt={ar}", "device=cpu", f"tokenizer={tiny_files[1]}", "cfg_scale=[1,2,3]"],
              "one value per sub-token")]
    for overrides, message in cases:
        with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
            cfg = compose("sample", [*overrides, f"out={tmp_path / 'o'}"])
        with pytest.raises(ConfigError, match=message):
            run(cfg)


def test_the_command_refuses_with_one_line_and_exit_2(tiny_files, tmp_path) -> None:
    ar, _ = tiny_files
    result = run_sample([f"ckpt={ar}", "device=cpu", f"out={tmp_path / 'o'}"], tmp_path)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "pass tokenizer=" in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
