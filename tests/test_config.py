"""The composed config: every group option composes, and bad values are refused with the key named."""
from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from conftest import CONF_DIR, compose_config, run_entry_point
from openmagvit2.config import ConfigError, validate_config

GROUPS = ["model", "quantizer", "loss", "data", "optim", "logger", "cluster", "experiment"]
OPTIONS = [(group, path.stem) for group in GROUPS for path in sorted((CONF_DIR / group).glob("*.yaml"))]


def test_every_group_has_options() -> None:
    present = {group for group, _ in OPTIONS}
    assert present == set(GROUPS), f"groups without any option: {set(GROUPS) - present}"


@pytest.mark.parametrize("group,option", OPTIONS, ids=[f"{g}={o}" for g, o in OPTIONS])
def test_every_option_composes_and_resolves(group: str, option: str) -> None:
    cfg = compose_config([f"{group}={option}"])
    resolved = OmegaConf.to_container(cfg, resolve=True)
    assert resolved["model"]["ch"] > 0 and resolved["quantizer"]["codebook_bits"] >= 1
    if group != "experiment":
        assert cfg[group] is not None


def test_demo_config_is_valid() -> None:
    validate_config(compose_config(["experiment=demo"]))


def test_released_recipe_pins_published_values() -> None:
    cfg = compose_config(["experiment=in256_large"])
    assert cfg.model.ch_mult == [1, 1, 2, 2, 4] and cfg.model.num_res_blocks == 4 and cfg.model.adaptive_norm
    assert cfg.loss.lecam_weight == 0.05 and cfg.loss.gen_loss_weight == 0.1 and cfg.loss.codebook_weight == 0.1
    assert cfg.optim.lr == 1e-4 and list(cfg.optim.betas) == [0.5, 0.9]
    assert cfg.train.batch_size * cfg.cluster.nodes * cfg.cluster.gpus_per_node == 256


BAD_VALUES = [
    ("quantizer.codebook_bits=40", "quantizer.codebook_bits"),
    ("quantizer.codebook_bits=0", "quantizer.codebook_bits"),
    ("train.batch_size=0", "train.batch_size"),
    ("train.max_steps=-3", "train.max_steps"),
    ("train.precision=fp8", "train.precision"),
    ("train.ema_decay=1.5", "train.ema_decay"),
    ("train.resume=/no/such/ckpt.pt", "train.resume"),
    ("train.init_from=/no/such/released.ckpt", "train.init_from"),
    ("data.image_size=70", "data.image_size"),
    ("model.ch=48", "model.ch"),
    ("model.bit_order=middle", "model.bit_order"),
    ("optim.lr=-1", "optim.lr"),
    ("optim.betas=[0.5]", "optim.betas"),
    ("logger.mode=loud", "logger.mode"),
    ("device=tpu", "device"),
]


@pytest.mark.parametrize("override,key", BAD_VALUES, ids=[b[0] for b in BAD_VALUES])
def test_bad_values_are_refused_naming_the_key(override: str, key: str) -> None:
    cfg = compose_config(["experiment=demo", override])
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        validate_config(cfg)


def test_global_batch_plan_is_checked_against_the_process_count(monkeypatch) -> None:
    cfg = compose_config(["experiment=demo", "train.batch_size=8", "train.global_batch_size=256"])
    monkeypatch.setenv("WORLD_SIZE", "32")
    validate_config(cfg)
    monkeypatch.setenv("WORLD_SIZE", "16")
    with pytest.raises(ConfigError, match=r"train\.global_batch_size=256 .* 16 processes"):
        validate_config(cfg)


def test_cli_prints_job_config() -> None:
    result = run_entry_point(["train.py", "quantizer.codebook_bits=18", "--cfg", "job"])
    assert result.returncode == 0, result.stderr
    printed = OmegaConf.create(result.stdout)
    assert printed.quantizer.codebook_bits == 18


@pytest.mark.parametrize("override,key", [("quantizer.codebook_bits=31", "quantizer.codebook_bits"),
                                          ("train.precision=fp64", "train.precision")])
def test_cli_bad_value_exits_nonzero_with_one_clear_line(override: str, key: str, tmp_path) -> None:
    result = run_entry_point(["train.py", "experiment=demo", override, f"hydra.run.dir={tmp_path}"])
    assert result.returncode == 2
    assert key in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "checkpoints").exists()


def test_cli_unknown_key_is_refused(tmp_path) -> None:
    result = run_entry_point(["train.py", "experiment=demo", "train.batchsize=4", f"hydra.run.dir={tmp_path}"])
    assert result.returncode != 0
    assert "batchsize" in result.stderr and "Traceback" not in result.stderr
