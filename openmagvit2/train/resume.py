"""What a resumed run may change: the checkpoint's stored config against this run's, before anything is built.

Architecture keys (the tokenizer's and the discriminator's shapes, the codebook) cannot change: the weights would
not load, and torch's answer is 79 lines of size mismatches. They are refused in one line naming each key. Recipe
keys (learning rates, loss weights, cadence, precision, ...) may change, with a warning, since continuing with a new
schedule is a legitimate thing to do. An EMA the checkpoint holds is kept when this run would switch it off.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from openmagvit2.config import ConfigError

# Keys whose change makes the checkpoint's tensors unusable, per task (a task's other model groups are ignored).
_DISCRIMINATOR = ("loss.disc_norm", "loss.disc_channels", "loss.disc_layers")
ARCHITECTURE_KEYS = {
    "tokenizer": ("model.ch", "model.ch_mult", "model.num_res_blocks", "model.adaptive_norm", "model.bit_order",
                  "quantizer.codebook_bits", *_DISCRIMINATOR),
    "video_tokenizer": ("video_model.ch", "video_model.ch_mult", "video_model.num_res_blocks",
                        "video_model.codebook_bits", "video_model.bit_order", *_DISCRIMINATOR),
    "generator": ("ar_model.dim", "ar_model.num_heads", "ar_model.spatial_layers", "ar_model.factorized_layers",
                  "ar_model.factorized_bits", "ar_model.num_classes", "ar_model.grid_size"),
}
# Keys that never matter for a resume (where things are written, how they are logged).
IGNORED_PREFIXES = ("logger.", "hydra.", "cluster.", "train.resume", "train.init_from", "train.max_steps",
                    "experiment_name", "device")


class ResumeMismatch(ConfigError):
    """The run's config contradicts the checkpoint it would resume (an architecture key differs)."""


def flatten(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """`{"a": {"b": 1}} -> {"a.b": 1}` (lists stay values)."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def check_resume(cfg: DictConfig, saved_config: dict[str, Any], saved_step: int, path: Path) -> list[str]:
    """Refuse architecture changes and a `train.max_steps` below the saved step; keep the saved EMA.

    Edits `cfg` in place only to keep the checkpoint's EMA (`train.ema_decay`). Returns warnings for the changed
    recipe keys, one line each, for the run log.
    """
    before = flatten(saved_config)
    warnings = []
    saved_ema = before.get("train.ema_decay")
    if cfg.train.ema_decay is None and saved_ema is not None:
        cfg.train.ema_decay = saved_ema
        warnings.append(f"train.ema_decay=null but {path} holds EMA weights: kept, with the checkpoint's decay "
                        f"{saved_ema} (to drop them, start a new run with train.init_from={path})")
    now = flatten(OmegaConf.to_container(cfg, resolve=True))
    architecture = ("task.name", *ARCHITECTURE_KEYS[now.get("task.name", "tokenizer")])
    changed_architecture = [key for key in architecture if key in before and before[key] != now.get(key)]
    if changed_architecture:
        details = ", ".join(f"{key}={before[key]!r} in the checkpoint but {now.get(key)!r} now"
                            for key in changed_architecture)
        raise ResumeMismatch(f"cannot resume {path}: {details}. Resume with the checkpoint's values (its run dir's "
                             f".hydra/config.yaml), start a new run dir, or fine-tune from it with "
                             f"train.init_from={path} train.resume=never.")
    if cfg.train.max_steps < saved_step:
        raise ResumeMismatch(f"train.max_steps={cfg.train.max_steps} is below the step of {path} ({saved_step}): "
                             f"there is nothing left to train; raise train.max_steps to continue.")
    recipe_changes = sorted(key for key in set(before) | set(now)
                            if key not in architecture and not key.startswith(IGNORED_PREFIXES)
                            and before.get(key) != now.get(key))
    warnings += [f"resuming with {key}={now.get(key)!r} (the checkpoint used {before.get(key)!r})"
                 for key in recipe_changes]
    return warnings
