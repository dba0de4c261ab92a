"""What a user sees when something is wrong or missing: one line and exit code 2, naming the way out (issue 12,
items 2, 5 and 6). Each test fails on the old behaviour (a traceback, a train-split check, a bare `make weights`)."""
from __future__ import annotations

import urllib.error
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from test_eval import run_eval_py, save_tiny_checkpoint

from openmagvit2 import config as config_module
from openmagvit2 import weights
from openmagvit2.config import ConfigError, FolderDataConfig, SampleDataConfig, cap_workers, data_config
from openmagvit2.train.distributed import resolve_device


def write_images(folder: Path, count: int, size: int = 40) -> Path:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for index in range(count):
        Image.fromarray(rng.integers(0, 255, (size, size + 8, 3), dtype=np.uint8)).save(folder / f"{index}.png")
    return folder


# ------------------------------------------------------------------------------------------ item 2: eval needs val only
def test_eval_data_needs_only_the_val_split(tmp_path):
    val = write_images(tmp_path / "val", 2)
    folder = {"name": "imagenet_folder", "root": str(tmp_path / "absent"), "train_dir": str(tmp_path / "absent"),
              "val_dir": str(val), "num_workers": 0}
    with pytest.raises(ConfigError, match="data.train_dir"):  # training still needs its split
        data_config(folder)
    assert data_config(folder, for_eval=True).val_dir == str(val)
    shard = tmp_path / "val-000000.tar"
    shard.write_bytes(b"")
    shards = {"name": "imagenet_wds", "root": str(tmp_path / "absent"), "val_shards": str(shard)}
    assert data_config(shards, for_eval=True).val_shards == str(shard)  # no train shards, no train index


def test_eval_data_requires_the_val_split_with_a_hint_that_survives_the_shell():
    with pytest.raises(ConfigError) as error:
        data_config({"name": "imagenet_wds", "val_shards": None}, for_eval=True)
    # the braces need Hydra's quotes inside the shell's: "data.val_shards='/path/val-{000000..000049}.tar'"
    assert "\"data.val_shards='/path/val-{000000..000049}.tar'\"" in str(error.value)
    with pytest.raises(ConfigError, match="pass data.val_dir=/path/to/images"):
        data_config({"name": "imagenet_folder", "val_dir": None}, for_eval=True)


@pytest.mark.slow
def test_eval_py_on_a_val_folder_without_a_train_split(tmp_path):
    ckpt = tmp_path / "step_00000005.pt"
    save_tiny_checkpoint(ckpt)
    val = write_images(tmp_path / "val", 3)
    result = run_eval_py([f"ckpt={ckpt}", "data=imagenet_folder", f"data.val_dir={val}", "data.image_size=32",
                          "data.num_workers=0", "metrics=[psnr,ssim,usage]", "device=cpu",
                          f"hydra.run.dir={tmp_path / 'run'}"], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "run" / "metrics.json").is_file()


# --------------------------------------------------------------------------------- item 5: one line, not a traceback
def test_device_cuda_without_a_gpu_is_a_config_error():
    if torch.cuda.is_available():
        pytest.skip("a GPU is visible")
    with pytest.raises(ConfigError, match="device=cuda .* use device=cpu or device=auto"):
        resolve_device("cuda", 0)


@pytest.mark.slow
def test_eval_py_refuses_an_image_size_the_model_cannot_tokenize_in_one_line(tmp_path):
    ckpt = tmp_path / "step_00000005.pt"
    save_tiny_checkpoint(ckpt)
    result = run_eval_py([f"ckpt={ckpt}", "data.image_size=66", "metrics=[psnr]", "device=cpu",
                          f"hydra.run.dir={tmp_path / 'run'}"], tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert "data.image_size=66 is not a multiple of" in result.stderr and "use 64 or 68" in result.stderr


def test_weights_download_offline_is_one_line_naming_the_url_and_destination(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "home"))

    def no_network(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(weights.urllib.request, "urlopen", no_network)
    assert weights._main(["download", "lpips_vgg"]) == 2
    error = capsys.readouterr().err.strip()
    spec = weights.WEIGHTS["lpips_vgg"]
    assert "\n" not in error and "Traceback" not in error
    assert spec.url in error and str(spec.path) in error and "name resolution" in error
    assert not spec.path.parent.exists() or not any(spec.path.parent.iterdir())  # nothing half-written


# ------------------------------------------------------------------------------ item 6: the offline way out, and CPUs
def test_missing_weights_message_offers_the_offline_settings(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "home"))
    with pytest.raises(weights.MissingWeightsError) as error:
        weights.require(["lpips_vgg"])
    message = str(error.value)
    assert "make weights" in message and str(weights.WEIGHTS["lpips_vgg"].path) in message
    assert "loss.perceptual_weight=0" in message and "metrics=[psnr,ssim,usage]" in message
    with pytest.raises(weights.MissingWeightsError) as error:
        weights.require(["inception_clean"])
    assert "metrics=[psnr,ssim,usage]" in str(error.value) and "perceptual_weight" not in str(error.value)


def test_loader_workers_are_capped_by_the_usable_cpus_with_one_warning(monkeypatch):
    monkeypatch.setattr(config_module, "usable_cpus", lambda: 2)
    monkeypatch.setattr(config_module, "_WORKER_CAP_WARNED", set())
    with pytest.warns(UserWarning, match="data.num_workers=8 but this process may use 2 CPU"):
        assert cap_workers(SampleDataConfig(num_workers=8)).num_workers == 2
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert cap_workers(SampleDataConfig(num_workers=8)).num_workers == 2  # warned once
        assert cap_workers(SampleDataConfig(num_workers=1)).num_workers == 1
    assert FolderDataConfig.__dataclass_fields__["num_workers"].default == 8  # the schema keeps the cluster default


def test_training_without_a_val_split_is_accepted_and_evaluates_nothing(tmp_path):
    """`data.val_dir=null` is documented as "no validation set": training runs, in-training evaluation is skipped."""
    from conftest import FAST, compose_config

    from openmagvit2.config import validate_config
    from openmagvit2.data import has_validation_set

    train = write_images(tmp_path / "train", 2)
    cfg = compose_config([*FAST, "data=imagenet_folder", f"data.train_dir={train}", "data.val_dir=null"])
    assert not has_validation_set(validate_config(cfg).data)
