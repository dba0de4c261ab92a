"""The loss config group: its yaml options, and validation messages of the typed schema (LossConfig)."""
import dataclasses

import pytest
from conftest import CONF_DIR, compose_group

from openmagvit2.config import ConfigError, LossConfig

# What each option changes from the schema's defaults (the released v1 recipe; pinned in tests/test_config.py).
OPTIONS = {"recipe": {}, "recipe_128_large": {"lecam_weight": 0.01}, "recipe_256_large": {"lecam_weight": 0.05},
           "no_perceptual": {"perceptual_weight": 0.0},
           "recipe_video": {"gen_loss_weight": 0.3, "lecam_weight": 0.05}}  # REFERENCE-VIDEO §3


@pytest.mark.parametrize("option", sorted(OPTIONS))
def test_every_loss_option_composes_and_validates(option):
    loss = compose_group("loss", option)
    typed = LossConfig.from_config(loss)
    assert typed == dataclasses.replace(LossConfig(), **OPTIONS[option])


def test_every_yaml_file_is_tested():
    assert {p.stem for p in (CONF_DIR / "loss").glob("*.yaml")} == set(OPTIONS)


@pytest.mark.parametrize("key, value, allowed", [
    ("perceptual_weight", -1.0, ">= 0"), ("codebook_weight", -0.1, ">= 0"), ("commit_weight", "a", ">= 0"),
    ("lecam_weight", -0.005, ">= 0"), ("gen_loss_weight", -0.1, "or null"), ("disc_weight", float("nan"), ">= 0"),
    ("lecam_decay", 1.0, r"\[0, 1\)"), ("lecam_decay", -0.1, r"\[0, 1\)"), ("disc_start", -1, ">= 0"),
    ("disc_start", 1.5, "integer"), ("disc_norm", "group", "batch .* or none"), ("disc_channels", 0, ">= 1"),
    ("disc_layers", True, "integer"), ("codebook_enlarge_ratio", -1, ">= 0"), ("codebook_enlarge_steps", 0, ">= 1"),
])
def test_bad_values_name_the_key_and_range(key, value, allowed):
    with pytest.raises(ConfigError, match=rf"^loss\.{key}=.* is invalid: expected .*{allowed}"):
        LossConfig.from_config({key: value})


def test_null_gen_loss_weight_selects_the_adaptive_weight():
    assert LossConfig.from_config({"gen_loss_weight": None}).gen_loss_weight is None


def test_unknown_key_is_refused_with_the_known_ones():
    with pytest.raises(ConfigError, match="loss.lecam_wieght is not a loss option: expected one of .*lecam_weight"):
        LossConfig.from_config({"lecam_wieght": 0.1})
