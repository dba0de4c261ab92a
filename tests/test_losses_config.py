"""The loss config group: recipe defaults, its yaml variants, and validation messages."""
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from openmagvit2.losses import LossConfig, validate_loss_config

CONF = Path(__file__).resolve().parents[1] / "conf"
RECIPE = dict(perceptual_weight=1.0, gen_loss_weight=0.1, disc_weight=0.8, codebook_weight=0.1, commit_weight=0.25,
              lecam_weight=0.005, lecam_decay=0.999, disc_start=0, disc_norm="batch", disc_channels=64,
              disc_layers=3, codebook_enlarge_ratio=0, codebook_enlarge_steps=2000)


def compose_loss(option: str) -> dict:
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return OmegaConf.to_container(compose(config_name=f"loss/{option}").loss)


def test_defaults_are_the_recipe():
    assert LossConfig() == LossConfig(**RECIPE)
    assert LossConfig.from_config(None) == LossConfig.from_config(OmegaConf.create({}))


@pytest.mark.parametrize("option, overrides", [
    ("recipe", {}), ("recipe_128_large", {"lecam_weight": 0.01}), ("recipe_256_large", {"lecam_weight": 0.05}),
    ("no_perceptual", {"perceptual_weight": 0.0}),
])
def test_every_loss_option_composes_and_validates(option, overrides):
    loss = compose_loss(option)
    assert loss == {**RECIPE, **overrides}
    validate_loss_config(OmegaConf.create(loss))
    assert LossConfig.from_config(loss) == LossConfig(**{**RECIPE, **overrides})


def test_every_yaml_file_is_tested():
    assert {p.stem for p in (CONF / "loss").glob("*.yaml")} == {"recipe", "recipe_128_large", "recipe_256_large",
                                                                "no_perceptual"}


@pytest.mark.parametrize("key, value, allowed", [
    ("perceptual_weight", -1.0, ">= 0"), ("codebook_weight", -0.1, ">= 0"), ("commit_weight", "a", ">= 0"),
    ("lecam_weight", -0.005, ">= 0"), ("gen_loss_weight", -0.1, "or null"), ("disc_weight", float("nan"), ">= 0"),
    ("lecam_decay", 1.0, r"\[0, 1\)"), ("lecam_decay", -0.1, r"\[0, 1\)"), ("disc_start", -1, ">= 0"),
    ("disc_start", 1.5, "integer"), ("disc_norm", "group", "batch .* or none"), ("disc_channels", 0, ">= 1"),
    ("disc_layers", True, "integer"), ("codebook_enlarge_ratio", -1, ">= 0"), ("codebook_enlarge_steps", 0, ">= 1"),
])
def test_bad_values_name_the_key_and_range(key, value, allowed):
    with pytest.raises(ValueError, match=rf"^loss\.{key}=.* is invalid: expected .*{allowed}"):
        validate_loss_config({key: value})


def test_null_gen_loss_weight_selects_the_adaptive_weight():
    assert LossConfig.from_config({"gen_loss_weight": None}).gen_loss_weight is None


def test_unknown_key_is_refused_with_the_known_ones():
    with pytest.raises(ValueError, match="loss.lecam_wieght is not a loss option: expected one of .*lecam_weight"):
        validate_loss_config({"lecam_wieght": 0.1})
    validate_loss_config({"name": "recipe"})  # a group file may label itself
