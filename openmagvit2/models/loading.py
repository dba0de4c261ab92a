"""Reading and writing tokenizer weights: our checkpoints, released Open-MAGVIT2 `.ckpt` files, safetensors folders.

Formats understood by `load_tokenizer`:
- ours (written by the trainer): a dict with `format="openmagvit2"`, `tokenizer_hparams`, `generator`,
  `generator_ema` (a Tokenizer state dict or None);
- released Lightning files: `{"state_dict": {...}}` with `encoder.*`, `decoder.*`, ignored `loss.*`, and, when EMA
  was on, `model_ema.<parameter name without dots>` (e.g. `model_ema.encoderdown0block0conv1weight`);
- a folder from `save_pretrained`: `config.json` + `model.safetensors`.
"""
from __future__ import annotations

import json
import logging
import pickle
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import nn

from openmagvit2.models.presets import model_preset

log = logging.getLogger(__name__)

FORMAT = "openmagvit2"
PRETRAINED_VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
GENERATOR_PREFIXES = ("encoder.", "decoder.")
# Wrappers that prefix parameter names when a model is saved from inside them (DDP, torch.compile).
WRAPPER_PREFIXES = ("module.", "_orig_mod.")
# Released Open-MAGVIT2 AR checkpoints (AR_256_*.ckpt) embed the tokenizer they decode with under this prefix.
AR_TOKENIZER_PREFIX = "first_stage_model."

T = TypeVar("T", bound=nn.Module)


def read_checkpoint(path: Path, map_location: str | torch.device, weights_only: bool | None) -> Any:
    """torch.load with the safe loader first; full unpickling only as allowed by `weights_only` (see from_checkpoint)."""
    if weights_only is False:
        return torch.load(path, map_location=map_location, weights_only=False)
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        if weights_only:
            raise ValueError(f"{path} holds Python objects besides tensors and weights_only=True refuses them: pass "
                             f"weights_only=False if you trust the file's source.") from error
        warnings.warn(f"{path} holds Python objects besides tensors; loading it with full unpickling. Only load "
                      f"checkpoints from sources you trust (or convert them once with save_pretrained).",
                      stacklevel=3)
        return torch.load(path, map_location=map_location, weights_only=False)


def strip_wrapper_prefixes(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Remove `module.` / `_orig_mod.` prefixes left by DDP or torch.compile."""
    cleaned = {}
    for key, value in state.items():
        changed = True
        while changed:
            changed = False
            for prefix in WRAPPER_PREFIXES:
                if key.startswith(prefix):
                    key, changed = key[len(prefix):], True
        cleaned[key] = value
    return cleaned


def ar_tokenizer_state(state: Mapping[str, torch.Tensor]) -> Mapping[str, torch.Tensor]:
    """The embedded tokenizer's keys of an AR checkpoint, prefix removed; any other state dict unchanged."""
    if not any(key.startswith(AR_TOKENIZER_PREFIX) for key in state):
        return state
    return {key[len(AR_TOKENIZER_PREFIX):]: value for key, value in state.items()
            if key.startswith(AR_TOKENIZER_PREFIX)}


def ema_key(name: str) -> str:
    """Released EMA buffer name of a parameter: `model_ema.` + the name with its dots removed."""
    return "model_ema." + name.replace(".", "")


def infer_hparams(state: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """Architecture from generator keys and shapes; bit order from the generation (adaptive norm means v2/v3).

    The released v1 "Base" files have no `decoder.adaptive.*` and index bits MSB first; the v2/v3 "Large" and
    pretrain files have adaptive norm and index LSB first.
    """
    if "encoder.conv_in.weight" not in state or "encoder.conv_out.weight" not in state:
        raise ValueError("cannot infer the architecture: the checkpoint has no encoder.conv_in.weight / "
                         "encoder.conv_out.weight; pass model=<a conf/model name or a dict of hyper-parameters>.")
    ch = state["encoder.conv_in.weight"].shape[0]
    levels = 0
    while f"encoder.down.{levels}.block.0.conv1.weight" in state:
        levels += 1
    ch_mult = [state[f"encoder.down.{i}.block.0.conv1.weight"].shape[0] // ch for i in range(levels)]
    num_res_blocks = 0
    while f"encoder.down.0.block.{num_res_blocks}.conv1.weight" in state:
        num_res_blocks += 1
    adaptive_norm = any(key.startswith("decoder.adaptive.") for key in state)
    bit_order = "lsb_first" if adaptive_norm else "msb_first"
    log.info("architecture inferred from the checkpoint keys: ch=%d ch_mult=%s num_res_blocks=%d adaptive_norm=%s; "
             "bit order %s (pass model=... to set it explicitly)", ch, ch_mult, num_res_blocks, adaptive_norm,
             bit_order)
    return {"ch": ch, "ch_mult": ch_mult, "num_res_blocks": num_res_blocks, "adaptive_norm": adaptive_norm,
                "bit_order": bit_order, "codebook_bits": state["encoder.conv_out.weight"].shape[0],
                "in_channels": state["encoder.conv_in.weight"].shape[1],
                "out_channels": state["decoder.conv_out.weight"].shape[0] if "decoder.conv_out.weight" in state else 3}


def resolve_model(model: str | Mapping[str, Any]) -> dict[str, Any]:
    """Hyper-parameters from a `conf/model` name or a dict (a `name` key in a dict is ignored)."""
    if isinstance(model, str):
        return model_preset(model)
    return {key: value for key, value in dict(model).items() if key != "name"}


def released_generator_state(state: Mapping[str, torch.Tensor], names: list[str], use_ema: bool
                             ) -> tuple[dict[str, torch.Tensor], str]:
    """Generator tensors from a released state dict: the `model_ema.*` copies when asked and present, else the raw ones."""
    has_ema = any(key.startswith("model_ema.") and key not in ("model_ema.decay", "model_ema.num_updates")
                  for key in state)
    if use_ema and has_ema:
        missing = [name for name in names if ema_key(name) not in state]
        if missing:
            raise KeyError(f"the checkpoint's EMA lacks {ema_key(missing[0])} (for {missing[0]}; {len(missing)} "
                           f"missing in all): pass use_ema=False to load the raw weights, or check the model choice.")
        return {name: state[ema_key(name)] for name in names}, "ema"
    return {key: value for key, value in state.items() if key.startswith(GENERATOR_PREFIXES)}, "raw"


def load_generator_state(model: nn.Module, state: Mapping[str, torch.Tensor], source: str) -> None:
    """Strictly load `encoder.*`/`decoder.*` tensors, naming the first missing, unexpected or mis-shaped key."""
    expected = model.state_dict()
    generator = {key: value for key, value in state.items() if key.startswith(GENERATOR_PREFIXES)}
    hint = "check the `model` argument (a v1 Base or v3 Large config, the right ch_mult) against the file"
    missing = [key for key in expected if key not in generator]
    if missing:
        raise KeyError(f"{source} lacks {missing[0]} ({len(missing)} generator key(s) missing): {hint}.")
    unexpected = [key for key in generator if key not in expected]
    if unexpected:
        raise KeyError(f"{source} has {unexpected[0]} which the model lacks ({len(unexpected)} unexpected "
                       f"key(s)): {hint}.")
    for key, value in expected.items():
        if generator[key].shape != value.shape:
            raise ValueError(f"{source}: {key} has shape {tuple(generator[key].shape)}, the model expects "
                             f"{tuple(value.shape)}: {hint}.")
    model.load_state_dict(generator, strict=True)


def load_tokenizer(cls: type[T], path: str | Path, model: str | Mapping[str, Any] | None, use_ema: bool,
                   map_location: str | torch.device, weights_only: bool | None) -> T:
    """See `Tokenizer.from_checkpoint`."""
    path = Path(path)
    if path.is_dir():
        if model is not None:
            raise ValueError(f"{path} is a save_pretrained folder whose config.json defines the architecture: "
                             f"drop the model argument.")
        return load_pretrained(cls, path, map_location=map_location)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}: pass a .pt/.ckpt file or a save_pretrained folder.")
    checkpoint = read_checkpoint(path, map_location, weights_only)
    if not isinstance(checkpoint, Mapping):
        raise TypeError(f"{path} is not a checkpoint dict (got {type(checkpoint).__name__}).")

    if checkpoint.get("format") == FORMAT:
        hparams = resolve_model(model) if model is not None else dict(checkpoint["tokenizer_hparams"])
        ema = checkpoint.get("generator_ema")
        state, source = (ema, "ema") if use_ema and ema is not None else (checkpoint["generator"], "raw")
        state = strip_wrapper_prefixes(state)
    else:
        raw = checkpoint.get("state_dict", checkpoint)
        raw = ar_tokenizer_state(strip_wrapper_prefixes(raw))
        if not any(key.startswith(GENERATOR_PREFIXES) for key in raw):
            raise ValueError(f"{path} has no encoder.*/decoder.* weights: it is neither an openmagvit2 checkpoint "
                             f"nor an Open-MAGVIT2 tokenizer .ckpt.")
        hparams = resolve_model(model) if model is not None else infer_hparams(raw)
        tokenizer = cls(**hparams)
        state, source = released_generator_state(raw, list(tokenizer.state_dict()), use_ema)
        load_generator_state(tokenizer, state, f"{path} ({source} weights)")
        return tokenizer.eval()

    tokenizer = cls(**hparams)
    load_generator_state(tokenizer, state, f"{path} ({source} weights)")
    return tokenizer.eval()


def save_pretrained(tokenizer: nn.Module, directory: str | Path) -> Path:
    """Write `config.json` and `model.safetensors` (contiguous CPU copies of the state dict)."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config = {"format": FORMAT, "version": PRETRAINED_VERSION, "tokenizer_hparams": tokenizer.hparams}
    (directory / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
    tensors = {key: value.detach().to("cpu").contiguous() for key, value in tokenizer.state_dict().items()}
    save_file(tensors, str(directory / WEIGHTS_FILE), metadata={"format": FORMAT})
    return directory


def load_pretrained(cls: type[T], directory: str | Path, map_location: str | torch.device = "cpu") -> T:
    """Rebuild a tokenizer from a `save_pretrained` folder, in eval mode."""
    from safetensors.torch import load_file

    directory = Path(directory)
    config_path, weights_path = directory / CONFIG_FILE, directory / WEIGHTS_FILE
    if not config_path.is_file() or not weights_path.is_file():
        raise FileNotFoundError(f"{directory} must hold {CONFIG_FILE} and {WEIGHTS_FILE} (written by "
                                f"Tokenizer.save_pretrained).")
    config = json.loads(config_path.read_text())
    if config.get("format") != FORMAT:
        raise ValueError(f"{config_path} is not an openmagvit2 config (format={config.get('format')!r}).")
    tokenizer = cls(**config["tokenizer_hparams"])
    device = str(map_location) if isinstance(map_location, torch.device) else map_location
    load_generator_state(tokenizer, load_file(str(weights_path), device=device), str(weights_path))
    return tokenizer.eval()
