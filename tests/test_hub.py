"""Released models by name: the registry, the Hugging Face cache (offline, laid out as the Hub lays it out) and the
entry points' `hf://` names. No network: every file is built here from our modules."""
from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_checkpoint_loading import (REFERENCE_DETAILED, TINY_V3, assert_same_weights, released_checkpoint,
                                     seeded_tokenizer)

from openmagvit2 import Tokenizer, hub
from openmagvit2.config import ConfigError, TrainConfig, model_preset

ROOT = Path(__file__).resolve().parents[1]
REPO = "TencentARC/Open-MAGVIT2-Tokenizer-256-resolution"
REVISION = "0123456789abcdef0123456789abcdef01234567"


def fake_hub_cache(cache: Path, repo_id: str, filename: str, payload: dict) -> Path:
    """`models--<org>--<name>/{refs/main, snapshots/<rev>/<file>}`, as `huggingface_hub` writes its cache."""
    folder = cache / ("models--" + repo_id.replace("/", "--"))
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text(REVISION)
    path = folder / "snapshots" / REVISION / filename
    path.parent.mkdir(parents=True)
    torch.save(payload, path)
    return path


@pytest.fixture
def offline_cache(tmp_path, monkeypatch):
    """An offline HF cache at tmp_path/hf holding a tiny released-layout file under the 256 tokenizer's name, with
    the registry's architecture for it replaced by the tiny v3 one (the real one is 115M parameters)."""
    import huggingface_hub.constants

    cache = tmp_path / "hf"
    raw, ema = seeded_tokenizer(0), seeded_tokenizer(1)
    fake_hub_cache(cache, REPO, "imagenet_256_L.ckpt", released_checkpoint(raw, ema))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # read at import; the env is for children
    tiny = [dataclasses.replace(spec, model=TINY_V3) if spec.repo_id == REPO else spec for spec in hub.RELEASED]
    monkeypatch.setattr(hub, "RELEASED", tuple(tiny))
    return cache, raw, ema


def test_registry_lists_only_files_named_in_the_reference_with_their_presets_bit_order():
    import re

    from braceexpand import braceexpand

    names = {name for quoted in re.findall(r"`([^`]+)`", REFERENCE_DETAILED.read_text())
             for name in braceexpand(quoted)}
    files = {name.rsplit("/", 1)[-1] for name in names}
    suffixes = tuple(name for name in names if name.startswith("-"))  # "`...-256-resolution` / `-128-resolution`"
    for spec in hub.RELEASED:
        assert spec.repo_id in names or spec.name in names or spec.repo_id.endswith(suffixes), spec
        assert spec.filename in files, spec
        if spec.kind == "tokenizer":
            assert model_preset(spec.model)["bit_order"] == spec.bit_order, spec
    assert hub.lookup(f"hf://{REPO}").filename == "imagenet_256_L.ckpt"
    assert hub.lookup("TencentARC/Open-MAGVIT2-Tokenizer-128-resolution").model == "openmagvit2_v3_128_large"
    assert hub.lookup("hf://TencentARC/Open-MAGVIT2/imagenet_256_B.ckpt").bit_order == "msb_first"


def test_ambiguous_and_unknown_names_are_refused_with_the_known_ones():
    with pytest.raises(hub.HubError, match="several released files; name one: .*imagenet_256_B.ckpt"):
        hub.lookup("hf://TencentARC/Open-MAGVIT2")
    with pytest.raises(hub.HubError, match=f"not a released Open-MAGVIT2 file; known: hf://{REPO}"):
        hub.lookup("hf://TencentARC/Open-MAGVIT3")
    assert not hub.is_hub_name("runs/x/step_1.pt") and hub.is_hub_name(REPO)


def test_from_pretrained_by_name_reads_the_offline_cache_and_loads_ema_weights(offline_cache):
    cache, raw, ema = offline_cache
    path = hub.resolve_hf(f"hf://{REPO}")
    assert path == cache / f"models--{REPO.replace('/', '--')}" / "snapshots" / REVISION / "imagenet_256_L.ckpt"
    assert_same_weights(hub.from_pretrained(REPO), ema)
    assert_same_weights(hub.from_pretrained(f"hf://{REPO}", use_ema=False), raw)


def test_from_pretrained_keeps_loading_save_pretrained_folders(tmp_path):
    model = seeded_tokenizer(3)
    model.save_pretrained(tmp_path / "folder")
    assert_same_weights(hub.from_pretrained(tmp_path / "folder"), model)


def test_a_file_absent_from_the_offline_cache_says_what_to_copy_where(offline_cache):
    cache, _, _ = offline_cache
    with pytest.raises(hub.HubError) as error:
        hub.resolve_hf("hf://TencentARC/Open-MAGVIT2-Tokenizer-128-resolution")
    message = str(error.value)
    assert "\n" not in message and "not in the Hugging Face cache" in message
    assert f"copy {cache}/models--TencentARC--Open-MAGVIT2-Tokenizer-128-resolution" in message


def test_train_init_from_accepts_hub_names_and_refuses_unknown_ones():
    assert TrainConfig(init_from=f"hf://{REPO}").init_from == f"hf://{REPO}"
    with pytest.raises(ConfigError, match="not a released Open-MAGVIT2 file"):
        TrainConfig(init_from="hf://TencentARC/nothing")


@pytest.mark.slow
def test_eval_py_evaluates_a_released_name_from_the_offline_cache(tmp_path):
    cache = tmp_path / "hf"
    ema = seeded_tokenizer(1)
    fake_hub_cache(cache, REPO, "imagenet_256_L.ckpt", released_checkpoint(seeded_tokenizer(0), ema))
    env = {**os.environ, "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT),
           "WANDB_SILENT": "true", "OMP_NUM_THREADS": "1"}
    run_dir = tmp_path / "run"
    # model=... because the registry's architecture (115M parameters) is not the tiny file's
    result = subprocess.run([sys.executable, str(ROOT / "eval.py"), f"ckpt=hf://{REPO}", "model=tiny",
                             "model.adaptive_norm=true", "metrics=[psnr,usage]", "data.image_size=32",
                             "max_images=4", "batch_size=4", "device=cpu", f"hydra.run.dir={run_dir}"],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    saved = json.loads((run_dir / "metrics.json").read_text())
    assert saved["ckpt"] == f"hf://{REPO}" and saved["metrics"]["num_images"] == 4


def test_an_ar_name_gives_the_ar_model_and_its_tokenizer(offline_cache, tmp_path, monkeypatch):
    """A released AR file from the cache: `ARModel` with the registry's size, and the tokenizer embedded in it."""
    from openmagvit2 import ARModel

    ar_repo = "TencentARC/Open-MAGVIT2-AR-B-256-resolution"
    ar_tiny = {"dim": 32, "num_heads": 2, "spatial_layers": 1, "factorized_layers": 1, "num_classes": 3,
               "grid_size": 2, "ffn_multiple_of": 16}
    model, tokenizer = ARModel(**ar_tiny), seeded_tokenizer(2)
    state = {**{f"transformer.{k}": v for k, v in model.state_dict().items()},
             **{f"first_stage_model.{k}": v for k, v in tokenizer.state_dict().items()}}
    fake_hub_cache(tmp_path / "hf", ar_repo, "AR_256_B.ckpt", {"state_dict": state})
    specs = [dataclasses.replace(spec, model=ar_tiny) if spec.repo_id == ar_repo else spec for spec in hub.RELEASED]
    monkeypatch.setattr(hub, "RELEASED", tuple(specs))
    loaded = hub.from_pretrained(ar_repo)
    assert isinstance(loaded, ARModel) and torch.equal(loaded.state_dict()["head.0.weight"],
                                                       model.state_dict()["head.0.weight"])
    embedded = Tokenizer.from_checkpoint(hub.resolve_hf(ar_repo), model=TINY_V3, use_ema=False)
    assert torch.equal(embedded.state_dict()["decoder.conv_out.weight"], tokenizer.state_dict()["decoder.conv_out.weight"])
