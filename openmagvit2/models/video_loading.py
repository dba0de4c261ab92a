"""Loading video tokenizer weights: the released Open-MAGVIT2 video `.ckpt` and our own video checkpoints.

Formats understood by `load_video_tokenizer` (REFERENCE-VIDEO §3):
- released Lightning files: `{"state_dict": {...}}` with `encoder.*`, `decoder.*` (3D convs wrapped as `conv_1`),
  ignored `loss.perceptual_loss.*` / `loss.discriminator.*`, and `model_ema.<name without dots>` for every trainable
  parameter (generator and discriminator) plus `model_ema.decay` / `model_ema.num_updates`;
- ours (the trainer's format): `format="openmagvit2"`, `tokenizer_hparams`, `generator`, `generator_ema`.
The generator keys must match exactly (strict); the first missing or unexpected one is named in a one-line error.
"""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import nn

from openmagvit2.models.loading import (FORMAT, GENERATOR_PREFIXES, CheckpointMismatchError, load_generator_state,
                                        read_checkpoint,
                                        released_generator_state, strip_wrapper_prefixes)
from openmagvit2.models.video_config import resolve_video_model

T = TypeVar("T", bound=nn.Module)
IMAGE_KEY = "encoder.conv_in.weight"  # a 2D tokenizer's first kernel; the video one is `encoder.conv_in.conv_1.weight`
HINT = "check the `model` argument (ch, ch_mult, num_res_blocks, codebook_bits) against the file"


def read_video_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> Any:
    """The one place video checkpoints are read: the project's safe reader (no code from the file runs)."""
    return read_checkpoint(path, map_location, what="video checkpoint")


def infer_video_hparams(state: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """Architecture from the keys and shapes of a video generator state dict (released or ours)."""
    conv_in = state.get("encoder.conv_in.conv_1.weight")
    if conv_in is None or "encoder.conv_out.conv_1.weight" not in state:
        raise CheckpointMismatchError("cannot infer the video architecture: the checkpoint has no encoder.conv_in.conv_1.weight / "
                         "encoder.conv_out.conv_1.weight; pass model=<a preset name or a dict of hyper-parameters>.")
    ch = conv_in.shape[0]
    levels = 0
    while f"encoder.down.{levels}.block.0.conv1.conv_1.weight" in state:
        levels += 1
    ch_mult = [state[f"encoder.down.{i}.block.0.conv1.conv_1.weight"].shape[0] // ch for i in range(levels)]
    num_res_blocks = 0
    while f"encoder.down.0.block.{num_res_blocks}.conv1.conv_1.weight" in state:
        num_res_blocks += 1
    out = state.get("decoder.conv_out.conv_1.weight")
    return {"ch": ch, "ch_mult": ch_mult, "num_res_blocks": num_res_blocks,
            "codebook_bits": state["encoder.conv_out.conv_1.weight"].shape[0], "in_channels": conv_in.shape[1],
            "out_channels": out.shape[0] if out is not None else 3}


def refuse_image_state(state: Mapping[str, torch.Tensor], path: Path) -> None:
    """An image tokenizer's weights cannot load into the video model: say how to inflate them instead."""
    if IMAGE_KEY in state:
        raise CheckpointMismatchError(f"{path} holds an image tokenizer (2D kernels, {IMAGE_KEY}): build the video tokenizer with "
                         f"VideoTokenizer.inflate_from({str(path)!r}) instead.")


def video_generator_state(checkpoint: Mapping[str, Any], names: list[str] | None, use_ema: bool, path: Path
                          ) -> tuple[dict[str, torch.Tensor], str, dict[str, Any] | None]:
    """(generator state, "ema"/"raw", our hyper-parameters or None) from a read checkpoint of either format.

    `names` are the model's state-dict keys, needed to find released EMA tensors (None: raw tensors only).
    """
    if checkpoint.get("format") == FORMAT:
        ema = checkpoint.get("generator_ema")
        state, source = (ema, "ema") if use_ema and ema is not None else (checkpoint["generator"], "raw")
        return strip_wrapper_prefixes(state), source, dict(checkpoint["tokenizer_hparams"])
    raw = strip_wrapper_prefixes(checkpoint.get("state_dict", checkpoint))
    if not any(key.startswith(GENERATOR_PREFIXES) for key in raw):
        raise CheckpointMismatchError(f"{path} has no encoder.*/decoder.* weights: it is neither an openmagvit2 checkpoint nor an "
                         f"Open-MAGVIT2 video tokenizer .ckpt.")
    if names is None:
        return {key: value for key, value in raw.items() if key.startswith(GENERATOR_PREFIXES)}, "raw", None
    state, source = released_generator_state(raw, names, use_ema)
    return state, source, None


def load_video_tokenizer(cls: type[T], path: str | Path, model: str | Mapping[str, Any] | None, use_ema: bool,
                         map_location: str | torch.device = "cpu") -> T:
    """See `VideoTokenizer.from_checkpoint`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}: pass a video tokenizer .pt/.ckpt file.")
    checkpoint = read_video_checkpoint(path, map_location)
    if not isinstance(checkpoint, Mapping):
        raise CheckpointMismatchError(f"{path} is not a checkpoint dict (got {type(checkpoint).__name__}).")
    raw_state, _, our_hparams = video_generator_state(checkpoint, None, use_ema=False, path=path)
    refuse_image_state(raw_state, path)
    if model is not None:
        hparams = resolve_video_model(model)
    else:
        hparams = our_hparams if our_hparams is not None else infer_video_hparams(raw_state)
    tokenizer = cls(**hparams)
    state, source, _ = video_generator_state(checkpoint, list(tokenizer.state_dict()), use_ema, path)
    load_generator_state(tokenizer, state, f"{path} ({source} weights)", hint=HINT)
    return tokenizer.eval()
