"""Reading and writing AR model weights: released Open-MAGVIT2 AR `.ckpt` files and our own checkpoints.

Formats understood by `load_ar_model`:
- ours (`ARModel.checkpoint()`): a dict with `format="openmagvit2_ar"`, `ar_hparams` (ARModel keywords), `model`
  (the state dict);
- released Lightning files (`AR_256_{B,L,XL}.ckpt`): `{"state_dict": {...}}` with `transformer.*` (the AR model) and
  `first_stage_model.*` (the tokenizer, loaded by `Tokenizer.from_checkpoint`).
Every file is read by `_read`, tensors only (never full unpickling).
"""
from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from openmagvit2.io.safe_load import read_checkpoint
from openmagvit2.models.loading import FORMAT as TRAINING_FORMAT  # train.py's checkpoints
from openmagvit2.generation.config import ARModelConfig, ar_model_config, ar_model_names, resolve_config

if TYPE_CHECKING:
    from openmagvit2.generation.model import ARModel

log = logging.getLogger(__name__)

FORMAT = "openmagvit2_ar"

VERSION = 1
RELEASED_PREFIX = "transformer."
WRAPPER_PREFIXES = ("module.", "_orig_mod.")  # DDP and torch.compile prefixes


def _read(path: Path) -> Any:
    """The one place AR files are read: the project's safe reader (released Lightning files hold foreign objects,
    which become inert placeholders; nothing from the file runs)."""
    return read_checkpoint(path, "cpu", what="AR checkpoint")


def checkpoint_dict(model: ARModel) -> dict[str, Any]:
    """Our checkpoint layout: format tag, version, hyper-parameters, CPU weights."""
    state = {key: value.detach().to("cpu") for key, value in model.state_dict().items()}
    return {"format": FORMAT, "version": VERSION, "ar_hparams": model.hparams, "model": state}


def transformer_state(checkpoint: Mapping[str, Any], path: Path) -> tuple[dict[str, torch.Tensor], dict | None]:
    """(AR state dict without prefixes, stored hyper-parameters or None) from either layout."""
    if checkpoint.get("format") == FORMAT:
        return _strip_wrappers(checkpoint["model"]), dict(checkpoint["ar_hparams"])
    if checkpoint.get("format") == TRAINING_FORMAT and "ar_hparams" in checkpoint:  # a `task=generator` checkpoint
        return _strip_wrappers(checkpoint["ar_model"]), dict(checkpoint["ar_hparams"])
    raw = checkpoint.get("state_dict")
    if not isinstance(raw, Mapping) or not any(key.startswith(RELEASED_PREFIX) for key in raw):
        raise ValueError(f"{path} has no transformer.* weights: it is neither an openmagvit2 AR checkpoint nor an "
                         f"Open-MAGVIT2 AR .ckpt.")
    raw = _strip_wrappers(raw)
    return {key[len(RELEASED_PREFIX):]: value for key, value in raw.items() if key.startswith(RELEASED_PREFIX)}, None


def sizes_from_weights(state: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """The keywords readable off the weights (not num_heads, grid_size, dropouts)."""
    def count(prefix: str) -> int:
        layers = 0
        while f"{prefix}.{layers}.attention.wqkv.weight" in state:
            layers += 1
        return layers

    if "pre_emb.weight" not in state or "class_emb.embedding_table.weight" not in state:
        raise KeyError("the AR weights lack pre_emb.weight or class_emb.embedding_table.weight: not an AR model.")
    embeddings = [state[name] for name in ("pre_emb.weight", "post_emb.weight") if name in state]
    return {"dim": int(embeddings[0].shape[1]), "spatial_layers": count("spatial_blocks"),
            "factorized_layers": count("factorized_blocks"),
            "factorized_bits": [int(e.shape[0]).bit_length() - 1 for e in embeddings],
            "num_classes": int(state["class_emb.embedding_table.weight"].shape[0]) - 1}


def matching_config(sizes: Mapping[str, Any], path: Path) -> ARModelConfig:
    """The `conf/ar_model` config whose sizes equal those read off a released file's weights."""
    for name in ar_model_names():
        config = ar_model_config(name)
        if all(getattr(config, key) == value for key, value in sizes.items()):
            log.info("%s: weights match the %s config", path, name)
            return config
    raise ValueError(f"{path}: no conf/ar_model config has the weights' sizes {dict(sizes)}: pass model=<a config "
                     f"name> or a dict with num_heads and grid_size.")


def load_ar_model(cls: type[ARModel], path: str | Path, model: str | Mapping[str, Any] | None) -> ARModel:
    """See `ARModel.from_checkpoint`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}: pass an AR .ckpt or a file saved from ARModel.checkpoint().")
    checkpoint = _read(path)
    if not isinstance(checkpoint, Mapping):
        raise TypeError(f"{path} is not a checkpoint dict (got {type(checkpoint).__name__}).")
    state, stored = transformer_state(checkpoint, path)
    sizes = sizes_from_weights(state)
    if model is not None:
        given = resolve_config(model).to_dict() if isinstance(model, str) else dict(model)
        config = ARModelConfig.from_mapping({**(stored or sizes), **given})
    elif stored is not None:
        config = ARModelConfig.from_mapping(stored)
    else:
        config = matching_config(sizes, path)
    ar_model = cls(**config.to_dict())
    load_strict(ar_model, state, str(path))
    return ar_model.eval()


def load_strict(model: torch.nn.Module, state: Mapping[str, torch.Tensor], source: str) -> None:
    """`load_state_dict(strict=True)`, refusing first with one line naming missing, unexpected or mis-shaped keys."""
    expected = model.state_dict()
    missing = [key for key in expected if key not in state]
    unexpected = [key for key in state if key not in expected]
    if missing or unexpected:
        raise KeyError(f"{source}: {len(missing)} missing key(s) {missing[:3]} and {len(unexpected)} unexpected "
                       f"key(s) {unexpected[:3]}: check the model config (layers, factorized_bits) against the file.")
    for key, value in expected.items():
        if state[key].shape != value.shape:
            raise ValueError(f"{source}: {key} has shape {tuple(state[key].shape)}, the model expects "
                             f"{tuple(value.shape)}: check the model config (dim, num_heads, ffn sizes).")
    model.load_state_dict(state, strict=True)


def _strip_wrappers(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Remove leading `module.` / `_orig_mod.` left by DDP or torch.compile."""
    cleaned = {}
    for key, value in state.items():
        while key.startswith(WRAPPER_PREFIXES):
            key = key.split(".", 1)[1]
        cleaned[key] = value
    return cleaned
