"""Validation of the composed Hydra config, before any model, data or GPU is touched.

Hydra already refuses unknown keys (the configs are in struct mode); this module refuses values of the wrong type or
out of range, with one sentence that names the key, what was wrong and what is allowed.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

from omegaconf import DictConfig, ListConfig, OmegaConf


class ConfigError(ValueError):
    """A config value a user can fix; the message names the key."""


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check(cfg: DictConfig, key: str, predicate: Callable[[Any], bool], allowed: str) -> Any:
    value = OmegaConf.select(cfg, key, throw_on_missing=False)
    if not predicate(value):
        raise ConfigError(f"{key}={value!r} is invalid: expected {allowed}.")
    return value


def _positive_int(v: Any) -> bool:
    return _is_int(v) and v >= 1


def _non_negative_int(v: Any) -> bool:
    return _is_int(v) and v >= 0


def _validate_train(cfg: DictConfig) -> None:
    _check(cfg, "seed", _is_int, "an integer")
    _check(cfg, "device", lambda v: v in ("auto", "cpu", "cuda"), "one of auto, cpu, cuda")
    _check(cfg, "train.batch_size", _positive_int, "an integer >= 1 (images per process)")
    _check(cfg, "train.max_steps", _positive_int, "an integer >= 1")
    _check(cfg, "train.precision", lambda v: v in ("fp32", "bf16", "fp16"), "one of fp32, bf16, fp16")
    _check(cfg, "train.ckpt_every", _positive_int, "an integer >= 1 (steps between checkpoints)")
    _check(cfg, "train.keep_last", _non_negative_int, "an integer >= 0 (0 keeps every checkpoint)")
    _check(cfg, "train.log_every", _positive_int, "an integer >= 1")
    _check(cfg, "train.image_every", _non_negative_int, "an integer >= 0 (0 = off)")
    _check(cfg, "train.eval_every", _non_negative_int, "an integer >= 0 (0 = only at the end)")
    _check(cfg, "train.eval_images", _positive_int, "an integer >= 1")
    _check(cfg, "train.ema_decay", lambda v: v is None or (_is_number(v) and 0 <= v < 1), "null or a number in [0, 1)")
    _check(cfg, "train.grad_clip", lambda v: v is None or (_is_number(v) and v > 0), "null or a number > 0")
    for flag in ("train.channels_last", "train.compile", "train.detect_anomaly"):
        _check(cfg, flag, lambda v: isinstance(v, bool), "true or false")
    resume = _check(cfg, "train.resume", lambda v: isinstance(v, str) and v != "", "auto, never, or a checkpoint path")
    if resume not in ("auto", "never") and not Path(resume).is_file():
        raise ConfigError(f"train.resume={resume!r} is not a file; give a checkpoint path, or auto / never.")
    global_batch = _check(cfg, "train.global_batch_size", lambda v: v is None or _positive_int(v),
                          "null or an integer >= 1 (images per step over all processes)")
    init_from = _check(cfg, "train.init_from", lambda v: v is None or isinstance(v, str),
                       "null or the path of a checkpoint to fine-tune from")
    if init_from is not None and not Path(init_from).is_file():
        raise ConfigError(f"train.init_from={init_from!r} is not a file; give our checkpoint or a released "
                          "Open-MAGVIT2 .ckpt (e.g. imagenet_256_L.ckpt).")
    _check(cfg, "train.init_use_ema", lambda v: isinstance(v, bool), "true or false")
    world_size = int(os.environ.get("WORLD_SIZE", os.environ.get("SLURM_NTASKS", "1")))
    if global_batch is not None and global_batch != cfg.train.batch_size * world_size:
        raise ConfigError(f"train.global_batch_size={global_batch} does not equal train.batch_size "
                          f"({cfg.train.batch_size}) x {world_size} processes; change the batch size or the "
                          "number of processes, or set train.global_batch_size=null to train with another batch.")


def _validate_model(cfg: DictConfig) -> None:
    _check(cfg, "model.ch", lambda v: _is_int(v) and v >= 32 and v % 32 == 0,
           "a positive multiple of 32 (GroupNorm uses 32 groups)")
    _check(cfg, "model.ch_mult", lambda v: isinstance(v, (list, ListConfig)) and len(v) >= 1
           and all(_positive_int(m) for m in v), "a non-empty list of integers >= 1, e.g. [1,2,2,4]")
    _check(cfg, "model.num_res_blocks", _positive_int, "an integer >= 1")
    _check(cfg, "model.adaptive_norm", lambda v: isinstance(v, bool), "true or false")
    _check(cfg, "model.bit_order", lambda v: v in ("lsb_first", "msb_first"), "lsb_first (v2/v3) or msb_first (v1)")
    _check(cfg, "quantizer.codebook_bits", lambda v: _is_int(v) and 1 <= v <= 30,
           "an integer in 1..30 (the codebook has 2^bits entries; the recipe uses 18)")
    _check(cfg, "quantizer.entropy_temperature", lambda v: _is_number(v) and v > 0, "a number > 0")
    downsampling = 2 ** (len(cfg.model.ch_mult) - 1)
    _check(cfg, "data.image_size", lambda v: _is_int(v) and v >= downsampling and v % downsampling == 0,
           f"a multiple of the model's downsampling factor {downsampling}")


def _validate_optim_logger(cfg: DictConfig) -> None:
    _check(cfg, "optim.lr", lambda v: _is_number(v) and v > 0, "a number > 0")
    _check(cfg, "optim.disc_lr", lambda v: _is_number(v) and v > 0, "a number > 0")
    _check(cfg, "optim.betas", lambda v: isinstance(v, (list, ListConfig)) and len(v) == 2
           and all(_is_number(b) and 0 <= b < 1 for b in v), "two numbers in [0, 1), e.g. [0.5, 0.9]")
    _check(cfg, "optim.schedule", lambda v: v in ("constant", "cosine", "step"), "one of constant, cosine, step")
    _check(cfg, "optim.warmup_steps", _non_negative_int, "an integer >= 0")
    _check(cfg, "logger.mode", lambda v: v in ("auto", "online", "offline", "disabled"),
           "one of auto, online, offline, disabled")


def validate_config(cfg: DictConfig) -> None:
    """Raise ConfigError for the first invalid value; also runs the data and loss groups' own validators."""
    from openmagvit2.data import validate_data_config
    from openmagvit2.losses import validate_loss_config

    _validate_train(cfg)
    _validate_model(cfg)
    _validate_optim_logger(cfg)
    for validator, group in ((validate_loss_config, "loss"), (validate_data_config, "data")):
        try:
            validator(cfg[group])
        except ConfigError:
            raise
        except ValueError as error:
            raise ConfigError(str(error)) from None
