"""The composed config: every group option composes against its schema, the published recipes keep their values,
and bad values are refused with the key, the value and the allowed range named, before any work starts."""
from __future__ import annotations

import json

import pytest
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

from conftest import CONF_DIR, compose_config, run_entry_point
from openmagvit2.config import ConfigError, RunConfig, SampleDataConfig, WdsDataConfig, validate_config

GROUPS = ["model", "quantizer", "loss", "data", "optim", "logger", "cluster", "experiment", "debug", "sweep"]
OPTIONS = [(group, path.stem) for group in GROUPS for path in sorted((CONF_DIR / group).glob("*.yaml"))]
RECIPES = ["in128_base", "in256_base", "in128_large", "in256_large"]
STEPS_PER_EPOCH = 5005  # ImageNet-1k train (1,281,167 images) at 256 images per step


def test_every_group_has_options() -> None:
    present = {group for group, _ in OPTIONS}
    assert present == set(GROUPS), f"groups without any option: {set(GROUPS) - present}"


@pytest.mark.parametrize("group,option", OPTIONS, ids=[f"{g}={o}" for g, o in OPTIONS])
def test_every_option_composes_and_resolves(group: str, option: str) -> None:
    cfg = compose_config([f"{group}={option}"])
    resolved = OmegaConf.to_container(cfg, resolve=True)
    assert resolved["model"]["ch"] > 0 and resolved["quantizer"]["codebook_bits"] >= 1
    assert OmegaConf.get_type(cfg) is RunConfig  # typed by the schema, so a wrong key or type fails here


@pytest.fixture
def shard_root(tmp_path, monkeypatch):
    """Empty files named like the ImageNet shards (only paths are checked) with the index JSONs make_shards writes
    beside them, and 32 processes (the recipe's)."""
    for split, count in (("train", 1282), ("val", 50)):
        names = [f"{split}-{index:06d}.tar" for index in range(count)]
        for name in names:
            (tmp_path / name).touch()
        (tmp_path / f"{split}.json").write_text(json.dumps({"shards": [{"name": name, "count": 1000}
                                                                      for name in names]}))
    monkeypatch.setenv("WORLD_SIZE", "32")
    return tmp_path


@pytest.mark.parametrize("experiment", RECIPES)
def test_published_recipes_validate(experiment: str, shard_root) -> None:
    config = validate_config(compose_config([f"experiment={experiment}", f"data.root={shard_root}",
                                             "data.epoch_samples=1281167"]))
    assert isinstance(config.data, WdsDataConfig) and config.data.shards.startswith(str(shard_root))


def test_demo_config_is_valid() -> None:
    config = validate_config(compose_config(["experiment=demo"]))
    assert isinstance(config.data, SampleDataConfig) and config.data.image_size == 64
    assert config.model.ch_mult == [1, 2, 2] and config.loss.perceptual_weight == 0.0 and config.device == "cpu"


# The published Open-MAGVIT2 recipes (../shared/REFERENCE.md: "Training recipe"; the per-model architectures and
# epochs of the v1/v3 releases). They are spread over the schema defaults, experiment/_imagenet_recipe.yaml and the
# four deltas, so this pins the composed result: any change to a default or a file that moves a published value fails.
SHARED = {
    "optim.lr": 1e-4, "optim.disc_lr": 1e-4, "optim.betas": [0.5, 0.9], "optim.weight_decay": 0.0,
    "optim.warmup_steps": 0, "optim.drop_rate": 0.1,
    "quantizer.codebook_bits": 18, "quantizer.entropy_temperature": 0.01, "quantizer.entropy_eps": 1e-5,
    "quantizer.sample_minimization_weight": 1.0, "quantizer.batch_maximization_weight": 1.0,
    "quantizer.entropy_across_ranks": False,  # pbar over the local (per-GPU) batch, as released
    "loss.perceptual_weight": 1.0, "loss.gen_loss_weight": 0.1, "loss.codebook_weight": 0.1,
    "loss.commit_weight": 0.25, "loss.lecam_decay": 0.999, "loss.disc_start": 0, "loss.disc_norm": "batch",
    "loss.disc_channels": 64, "loss.disc_layers": 3, "loss.codebook_enlarge_ratio": 0.0,
    "train.batch_size": 8, "train.global_batch_size": 256, "train.grad_clip": None, "train.ema_decay": 0.999,
    "train.precision": "bf16", "train.ckpt_every": STEPS_PER_EPOCH, "train.eval_every": STEPS_PER_EPOCH,
    "train.image_every": STEPS_PER_EPOCH, "train.eval_images": 1024, "train.log_every": 50,
    "data.name": "imagenet_wds", "data.hflip": False, "device": "cuda",
    "cluster.nodes": 4, "cluster.gpus_per_node": 8, "cluster.processes_per_node": 8,
}
BASE_V1 = {"model.ch": 128, "model.num_res_blocks": 2, "model.adaptive_norm": False, "model.bit_order": "msb_first",
           "loss.lecam_weight": 0.005, "optim.schedule": "constant", "optim.drop_steps": [],
           "train.max_steps": 150 * STEPS_PER_EPOCH}
LARGE_V3 = {"model.ch": 128, "model.num_res_blocks": 4, "model.adaptive_norm": True, "model.bit_order": "lsb_first",
            "optim.schedule": "step"}
PUBLISHED = {
    "in128_base": {**BASE_V1, "model.ch_mult": [1, 2, 2, 4], "data.image_size": 128},
    "in256_base": {**BASE_V1, "model.ch_mult": [1, 1, 2, 2, 4], "data.image_size": 256},
    "in128_large": {**LARGE_V3, "model.ch_mult": [1, 2, 2, 4], "data.image_size": 128, "loss.lecam_weight": 0.01,
                    "train.max_steps": 350 * STEPS_PER_EPOCH,
                    "optim.drop_steps": [250 * STEPS_PER_EPOCH, 300 * STEPS_PER_EPOCH]},
    "in256_large": {**LARGE_V3, "model.ch_mult": [1, 1, 2, 2, 4], "data.image_size": 256, "loss.lecam_weight": 0.05,
                    "train.max_steps": 270 * STEPS_PER_EPOCH,
                    "optim.drop_steps": [200 * STEPS_PER_EPOCH, 250 * STEPS_PER_EPOCH]},
}


@pytest.mark.parametrize("experiment", RECIPES)
def test_published_recipe_values_are_pinned(experiment: str) -> None:
    cfg = compose_config([f"experiment={experiment}"])
    assert cfg.experiment_name == experiment
    expected = {**SHARED, **PUBLISHED[experiment]}
    actual = {key: OmegaConf.select(cfg, key) for key in expected}
    actual = {key: OmegaConf.to_container(v) if OmegaConf.is_config(v) else v for key, v in actual.items()}
    assert actual == expected


BAD_VALUES = [
    ("quantizer.codebook_bits=29", r"quantizer\.codebook_bits=29 is invalid: expected an integer in 1\.\.28"),
    ("quantizer.codebook_bits=0", r"quantizer\.codebook_bits=0 is invalid"),
    ("quantizer.entropy_temperature=0", r"quantizer\.entropy_temperature=0\.0 is invalid: expected a number > 0"),
    ("train.batch_size=0", r"train\.batch_size=0 is invalid: expected an integer >= 1"),
    ("train.max_steps=-3", r"train\.max_steps=-3"),
    ("train.precision=fp8", r"train\.precision='fp8' is invalid: expected one of fp32, bf16, fp16"),
    ("train.ema_decay=1.5", r"train\.ema_decay=1\.5 is invalid: expected null or a number in \[0, 1\)"),
    ("train.resume=/no/such/ckpt.pt", r"train\.resume='/no/such/ckpt\.pt' is not a file"),
    ("train.init_from=/no/such/released.ckpt", r"train\.init_from='/no/such/released\.ckpt' is not a file"),
    ("data.image_size=70", r"data\.image_size=70 is invalid: expected a multiple of the model's downsampling factor 4"),
    ("data.crop_scale=[0.8,0.2]", r"data\.crop_scale"),
    ("model.ch=48", r"model\.ch=48 is invalid: expected a positive multiple of 32"),
    ("model.bit_order=middle", r"model\.bit_order='middle' is invalid"),
    ("optim.lr=-1", r"optim\.lr=-1\.0 is invalid: expected a number > 0"),
    ("optim.betas=[0.5]", r"optim\.betas=\[0\.5\] is invalid"),
    ("optim.schedule=linear_decay", r"optim\.schedule='linear_decay' is invalid: expected one of constant, cosine, "
                                    r"step, linear"),
    ("logger.mode=loud", r"logger\.mode='loud' is invalid"),
    ("loss.lecam_decay=1", r"loss\.lecam_decay=1\.0 is invalid: expected a number in \[0, 1\)"),
    ("cluster.nodes=0", r"cluster\.nodes=0 is invalid: expected an integer >= 1"),
    ("device=tpu", r"device='tpu' is invalid: expected one of auto, cpu, cuda"),
]


@pytest.mark.parametrize("override,message", BAD_VALUES, ids=[b[0] for b in BAD_VALUES])
def test_bad_values_are_refused_naming_key_value_and_range(override: str, message: str) -> None:
    cfg = compose_config(["experiment=demo", override])
    with pytest.raises(ConfigError, match=f"^{message}"):
        validate_config(cfg)


@pytest.mark.parametrize("override", ["quantizer.name=lfq", "optim.name=sgd", "model.name=tiny", "train.batchsize=4",
                                      "train.batch_size=many"])
def test_unknown_keys_and_wrong_types_are_refused_while_composing(override: str) -> None:
    with pytest.raises(ConfigCompositionException):
        compose_config(["experiment=demo", override])


def test_more_codebook_bits_are_allowed_without_the_entropy_loss() -> None:
    config = validate_config(compose_config(["experiment=demo", "quantizer.codebook_bits=30",
                                             "quantizer.sample_minimization_weight=0",
                                             "quantizer.batch_maximization_weight=0"]))
    assert config.quantizer.codebook_bits == 30


def test_global_batch_plan_is_checked_against_the_process_count(monkeypatch) -> None:
    cfg = compose_config(["experiment=demo", "train.batch_size=8", "train.global_batch_size=256"])
    monkeypatch.setenv("WORLD_SIZE", "32")
    validate_config(cfg)
    monkeypatch.setenv("WORLD_SIZE", "16")
    with pytest.raises(ConfigError, match=r"^16 process\(es\) x train\.batch_size=8 = 128 images per step, but "
                                          r"train\.global_batch_size=256; set train\.batch_size=16"):
        validate_config(cfg)


def test_cli_prints_job_config() -> None:
    result = run_entry_point(["train.py", "quantizer.codebook_bits=18", "--cfg", "job"])
    assert result.returncode == 0, result.stderr
    printed = OmegaConf.create(result.stdout)
    assert printed.quantizer.codebook_bits == 18


@pytest.mark.parametrize("override,key", [("quantizer.codebook_bits=29", "quantizer.codebook_bits=29"),
                                          ("quantizer.codebook_bits=31", "quantizer.codebook_bits=31"),
                                          ("train.precision=fp64", "train.precision='fp64'")])
def test_cli_bad_value_exits_2_with_one_line_before_any_work(override: str, key: str, tmp_path) -> None:
    result = run_entry_point(["train.py", override, f"hydra.run.dir={tmp_path}"])  # the default config
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {key} is invalid: expected"), result.stderr
    assert not (tmp_path / "train.log").exists() and not (tmp_path / "checkpoints").exists()


def test_cli_unknown_key_is_refused(tmp_path) -> None:
    result = run_entry_point(["train.py", "experiment=demo", "train.batchsize=4", f"hydra.run.dir={tmp_path}"])
    assert result.returncode != 0
    assert "batchsize" in result.stderr and "Traceback" not in result.stderr
