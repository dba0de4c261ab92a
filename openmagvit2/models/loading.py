"""Reading and writing tokenizer weights: our checkpoints, released Open-MAGVIT2 `.ckpt` files, safetensors folders.

Formats understood by `load_tokenizer`:
- ours (written by the trainer): a dict with `format="openmagvit2"`, `tokenizer_hparams`, `generator`,
  `generator_ema` (a Tokenizer state dict or None);
- released Lightning files: `{"state_dict": {...}}` with `encoder.*`, `decoder.*`, ignored `loss.*`, and, when EMA
  was on, `model_ema.<parameter name without dots>` (e.g. `model_ema.encoderdown0block0conv1weight`);
- a folder from `save_pretrained`: `config.json` + `model.safetensors`.

Files are read with `openmagvit2.io.read_checkpoint`, which never runs code from them. Every path counts missing,
unexpected and mis-shaped generator keys and refuses a mismatch in one line that names the architecture the file
holds (and the `conf/model` name that loads it).
"""
from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import nn

from openmagvit2.config import model_names, model_preset
from openmagvit2.io.safe_load import CheckpointError, read_checkpoint

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


class CheckpointMismatchError(CheckpointError):
    """The file's generator does not fit the requested architecture; the message names the one it holds."""


def known_architectures() -> dict[str, dict[str, Any]]:
    """Architectures by `conf/model` name (ch, ch_mult, num_res_blocks, adaptive_norm, bit_order, ...): the shipped
    model configs are the one registry."""
    return {name: model_preset(name) for name in model_names()}


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


def infer_architecture(state: Mapping[str, Any]) -> dict[str, Any]:
    """ch, ch_mult, num_res_blocks, adaptive_norm and channel counts read off generator keys and shapes.

    ch is `encoder.conv_in` 's width, ch_mult the width of each `encoder.down.{i}` over ch, num_res_blocks the
    number of blocks in `encoder.down.0`, adaptive_norm whether `decoder.adaptive.*` exists. The bit order of the
    token index cannot be read off weights (see `infer_hparams`).
    """
    def shape(key: str) -> tuple[int, ...] | None:
        value = state.get(key)
        return tuple(value.shape) if isinstance(value, torch.Tensor) else None

    conv_in, conv_out = shape("encoder.conv_in.weight"), shape("encoder.conv_out.weight")
    if conv_in is None or conv_out is None or len(conv_in) != 4 or len(conv_out) != 4:
        raise CheckpointMismatchError("cannot infer the architecture: the file has no encoder.conv_in.weight / "
                                      "encoder.conv_out.weight tensors; pass model=<a conf/model name or a dict>.")
    ch = conv_in[0]
    levels = 0
    while shape(f"encoder.down.{levels}.block.0.conv1.weight") is not None:
        levels += 1
    num_res_blocks = 0
    while shape(f"encoder.down.0.block.{num_res_blocks}.conv1.weight") is not None:
        num_res_blocks += 1
    decoder_out = shape("decoder.conv_out.weight")
    return {"ch": ch, "ch_mult": [shape(f"encoder.down.{i}.block.0.conv1.weight")[0] // ch for i in range(levels)],
            "num_res_blocks": num_res_blocks,
            "adaptive_norm": any(key.startswith("decoder.adaptive.") for key in state),
            "codebook_bits": conv_out[0], "in_channels": conv_in[1],
            "out_channels": decoder_out[0] if decoder_out else 3}


def infer_hparams(state: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """Architecture from generator keys and shapes; bit order from the generation (adaptive norm means v2/v3).

    The released v1 "Base" files have no `decoder.adaptive.*` and index bits MSB first; the v2/v3 "Large" and
    pretrain files have adaptive norm and index LSB first.
    """
    hparams = infer_architecture(state)
    hparams["bit_order"] = "lsb_first" if hparams["adaptive_norm"] else "msb_first"
    log.info("architecture inferred from the checkpoint keys: %s; bit order %s (pass model=... to set it "
             "explicitly)", describe_architecture(hparams), hparams["bit_order"])
    return hparams


def describe_architecture(architecture: Mapping[str, Any]) -> str:
    text = " ".join(f"{key}={architecture[key]}" for key in ("ch", "ch_mult", "num_res_blocks", "adaptive_norm"))
    if architecture.get("codebook_bits", 18) != 18:
        text += f" codebook_bits={architecture['codebook_bits']}"
    return text


def matching_architectures(architecture: Mapping[str, Any]) -> list[str]:
    """`conf/model` names whose weights have the shapes of `architecture` (the bit order is not compared)."""
    defaults = {"codebook_bits": 18, "in_channels": 3, "out_channels": 3}
    names = []
    for name, preset in known_architectures().items():
        full = {**defaults, **preset}
        if all(list(full[key]) == list(architecture[key]) if key == "ch_mult" else full[key] == architecture[key]
               for key in ("ch", "ch_mult", "num_res_blocks", "adaptive_norm", *defaults) if key in architecture):
            names.append(name)
    return names


def resolve_model(model: str | Mapping[str, Any]) -> dict[str, Any]:
    """Hyper-parameters from a `conf/model` name or a dict (a `name` key in a dict is ignored)."""
    if isinstance(model, str):
        return model_preset(model)  # refuses an unknown name, listing the known ones
    return {key: value for key, value in dict(model).items() if key != "name"}


def describe_request(model: str | Mapping[str, Any] | None, default: str) -> str:
    if isinstance(model, str):
        return f"model={model}"
    if isinstance(model, Mapping) and model.get("name"):
        return f"model={model['name']} (as given)"
    return "the given model hyper-parameters" if model is not None else default


def architecture_hint(file_state: Mapping[str, Any]) -> str:
    """What the file holds and which `model=` loads it, for mismatch messages."""
    try:
        architecture = infer_architecture(file_state)
    except CheckpointError:
        return "the file's generator keys do not describe a complete tokenizer"
    names = matching_architectures(architecture)
    advice = f"pass model={names[0]} or omit model=" if names else "pass these hyper-parameters or omit model="
    return f"the file holds {describe_architecture(architecture)}: {advice}"


def check_fits(model: nn.Module, file_state: Mapping[str, Any], label: str, requested: str,
               hint: str | None = None) -> None:
    """Refuse unless the file's `encoder.*`/`decoder.*` tensors are exactly the model's keys with the model's shapes.

    Counts every missing, unexpected and mis-shaped key (a released v3 file also fits a v1 model's key names for
    half of its tensors, so looking only at what the model asks for is not enough). `hint` replaces the image
    architecture read off the file (e.g. for the video tokenizer).
    """
    expected = {key: tuple(value.shape) for key, value in model.state_dict().items()}
    found = {key: tuple(value.shape) if isinstance(value, torch.Tensor) else None
             for key, value in file_state.items() if key.startswith(GENERATOR_PREFIXES)}
    missing = [key for key in expected if key not in found]
    unexpected = [key for key in found if key not in expected]
    reshaped = [key for key in expected if key in found and found[key] != expected[key]]
    problems = []
    if missing:
        problems.append(f"it lacks {missing[0]} ({len(missing)} missing generator key(s))")
    if unexpected:
        problems.append(f"it has {unexpected[0]} which the model lacks ({len(unexpected)} unexpected key(s))")
    if reshaped:
        key = reshaped[0]
        problems.append(f"{key} has shape {found[key]}, the model expects {expected[key]} ({len(reshaped)} "
                        f"mis-shaped key(s))")
    if problems:
        raise CheckpointMismatchError(f"{label} does not fit {requested}: {'; '.join(problems)}; "
                                      f"{hint or architecture_hint(file_state)}.")


def released_generator_state(state: Mapping[str, torch.Tensor], names: list[str], use_ema: bool, label: str = "the file"
                             ) -> tuple[dict[str, torch.Tensor], str]:
    """Generator tensors from a released state dict: the `model_ema.*` copies when asked and present, else the raw ones.

    The EMA set must be exactly the model's parameters (no missing and no left-over `model_ema.encoder*/decoder*`).
    """
    ema_keys = [key for key in state if key.startswith(("model_ema.encoder", "model_ema.decoder"))]
    if use_ema and ema_keys:
        wanted = {ema_key(name) for name in names}
        missing = [ema_key(name) for name in names if ema_key(name) not in state]
        leftover = [key for key in ema_keys if key not in wanted]
        if missing or leftover:
            first = f"lacks {missing[0]}" if missing else f"has {leftover[0]}, which the model lacks"
            raise CheckpointMismatchError(
                f"{label}: the EMA weights do not fit the model: it {first} ({len(missing)} missing, {len(leftover)} "
                f"unexpected EMA key(s)); check model=, or pass use_ema=False to load the raw weights.")
        return {name: state[ema_key(name)] for name in names}, "ema"
    return {key: value for key, value in state.items() if key.startswith(GENERATOR_PREFIXES)}, "raw"


def load_generator_state(model: nn.Module, state: Mapping[str, torch.Tensor], source: str,
                         hint: str | None = None) -> None:
    """Strictly load a generator state dict: every key the model has, no other key, each with the model's shape."""
    check_fits(model, state, source, "the model", hint)
    others = [key for key in state if not key.startswith(GENERATOR_PREFIXES)]
    if others:
        raise CheckpointMismatchError(f"{source} has {others[0]}, which is not a generator weight ({len(others)} "
                                      "such key(s)): check the file.")
    model.load_state_dict(dict(state), strict=True)


def _string_keys(state: Mapping[Any, Any]) -> dict[str, Any]:
    """Entries with string keys (a foreign file may hold anything; only names can be weights)."""
    return {key: value for key, value in state.items() if isinstance(key, str)}


def generator_from_file(checkpoint: Mapping[str, Any], label: str) -> tuple[dict[str, Any], bool]:
    """The file's raw generator tensors (ours: `generator`; released: `state_dict` or the top level) and whether the
    file is ours."""
    if checkpoint.get("format") == FORMAT:
        generator = checkpoint.get("generator")
        if not isinstance(generator, Mapping) or not isinstance(checkpoint.get("tokenizer_hparams"), Mapping):
            raise CheckpointMismatchError(f"{label} says format={FORMAT!r} but has no generator state dict or "
                                          "tokenizer_hparams.")
        return strip_wrapper_prefixes(_string_keys(generator)), True
    raw = checkpoint.get("state_dict", checkpoint)
    raw = dict(ar_tokenizer_state(strip_wrapper_prefixes(_string_keys(raw)))) if isinstance(raw, Mapping) else {}
    if not any(key.startswith(GENERATOR_PREFIXES) for key in raw):
        raise CheckpointMismatchError(f"{label} has no encoder.*/decoder.* weights: it is neither an openmagvit2 "
                                      f"checkpoint nor an Open-MAGVIT2 tokenizer .ckpt.")
    return raw, False


def select_generator_state(model: nn.Module, checkpoint: Mapping[str, Any], use_ema: bool, label: str,
                           requested: str) -> tuple[dict[str, torch.Tensor], str]:
    """Check that the file's generator fits `model`, then pick its EMA copy (when asked and present) or raw weights."""
    raw, ours = generator_from_file(checkpoint, label)
    check_fits(model, raw, label, requested)
    if ours:
        ema = checkpoint.get("generator_ema")
        if use_ema and isinstance(ema, Mapping):
            return strip_wrapper_prefixes(_string_keys(ema)), "ema"
        return raw, "raw"
    return released_generator_state(raw, list(model.state_dict()), use_ema, label)


def tokenizer_from_checkpoint(cls: type[T], checkpoint: Any, label: str, model: str | Mapping[str, Any] | None,
                              use_ema: bool) -> T:
    """Build and load a tokenizer from an already-read checkpoint dict (see `Tokenizer.from_checkpoint`)."""
    if not isinstance(checkpoint, Mapping):
        raise CheckpointMismatchError(f"{label} is not a checkpoint dict (got {type(checkpoint).__name__}).")
    raw, ours = generator_from_file(checkpoint, label)
    if ours and checkpoint.get("tokenizer_kind") == "video_tokenizer":
        raise CheckpointMismatchError(f"{label} holds a video tokenizer: load it with VideoTokenizer.from_checkpoint "
                                      "(eval.py and train.init_from do so for video runs).")
    if model is not None:
        hparams = resolve_model(model)
    elif ours:
        hparams = dict(checkpoint["tokenizer_hparams"])
    else:
        hparams = infer_hparams(raw)
    default = "its own tokenizer_hparams" if ours else "the architecture inferred from its keys"
    tokenizer = cls(**hparams)
    file_bit_order = dict(checkpoint.get("tokenizer_hparams") or {}).get("bit_order") if ours else None
    if file_bit_order is not None and tokenizer.hparams.get("bit_order") != file_bit_order:
        raise CheckpointMismatchError(f"{label} was trained with bit_order={file_bit_order} but "
                                      f"{describe_request(model, 'the model')} has bit_order="
                                      f"{tokenizer.hparams.get('bit_order')}: token indices would be wrong; omit "
                                      "model= to use the file's own architecture.")
    state, source = select_generator_state(tokenizer, checkpoint, use_ema, label, describe_request(model, default))
    load_generator_state(tokenizer, state, f"{label} ({source} weights)")
    return tokenizer.eval()


def load_tokenizer(cls: type[T], path: str | Path, model: str | Mapping[str, Any] | None, use_ema: bool,
                   map_location: str | torch.device) -> T:
    """See `Tokenizer.from_checkpoint`."""
    path = Path(path)
    if path.is_dir():
        if model is not None:
            raise ValueError(f"{path} is a save_pretrained folder whose config.json defines the architecture: "
                             f"drop the model argument.")
        return load_pretrained(cls, path, map_location=map_location)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}: pass a .pt/.ckpt file or a save_pretrained folder.")
    return tokenizer_from_checkpoint(cls, read_checkpoint(path, map_location), str(path), model, use_ema)


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
