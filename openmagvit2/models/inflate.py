"""Inflation: a causal video tokenizer initialised from an image tokenizer, upstream's last-slice rule (REFERENCE-VIDEO §4).

Per tensor of the video model (matched by name: the 3D key without its `.conv_1` is the 2D key):
- same shape (GroupNorm, AdaptiveGroupNorm linears, conv biases) -> copied;
- 2D kernel `o i kh kw` -> 3D `o i kt kh kw`: zeros, the 2D kernel in the last temporal slice `[:, :, kt - 1]` (for
  1x1x1 kernels that is slice 0). A causal conv's last slice looks at the current frame, so on a single frame every
  conv equals its 2D original;
- temporal upsampler (3D out-channels = bt x 2D, bt = 2): the 2D kernel / bias repeated bt times along the output
  channels, i.e. copied for both temporal sub-positions of the DCR layout, so both new frames start as the 2D output.
Upstream matches tensors by position and silently keeps random init on a shape mismatch; here any missing, unused or
mismatched tensor is refused with its name. Hence: the inflated model on t = 1 equals the 2D model.
"""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import nn

from openmagvit2.models.loading import GENERATOR_PREFIXES, CheckpointMismatchError

T = TypeVar("T", bound=nn.Module)
# Hyper-parameters an image tokenizer passes on to the video tokenizer it inflates into.
SHARED_HPARAMS = ("ch", "ch_mult", "num_res_blocks", "codebook_bits", "bit_order", "in_channels", "out_channels",
                  "entropy_temperature", "entropy_eps", "sample_minimization_weight", "batch_maximization_weight",
                  "entropy_across_ranks")


def image_key(video_key: str) -> str:
    """`encoder.conv_in.conv_1.weight -> encoder.conv_in.weight`: the 2D name of a video tensor."""
    return video_key.replace(".conv_1.", ".")


def inflate_tensor(image: torch.Tensor, shape: torch.Size, name: str) -> torch.Tensor:
    """One video tensor of `shape` from its 2D counterpart `image` by the rules in the module docstring."""
    if tuple(image.shape) == tuple(shape):
        return image.clone()
    repeats = shape[0] // image.shape[0] if image.shape[0] else 0
    if image.ndim == 1 and len(shape) == 1 and repeats * image.shape[0] == shape[0]:
        return image.repeat(repeats)  # temporal upsampler bias
    if image.ndim == 4 and len(shape) == 5 and repeats * image.shape[0] == shape[0] \
            and tuple(image.shape[1:]) == (shape[1], shape[3], shape[4]):
        kernel = image.new_zeros(shape)
        kernel[:, :, shape[2] - 1] = image.repeat(repeats, 1, 1, 1)
        return kernel
    raise CheckpointMismatchError(f"cannot inflate {name}: the image tensor has shape {tuple(image.shape)}, the video model "
                     f"expects {tuple(shape)}; the image tokenizer must have the same ch, ch_mult and num_res_blocks.")


def inflate_state(image_state: Mapping[str, torch.Tensor], video: nn.Module) -> dict[str, torch.Tensor]:
    """The video model's state dict inflated from a 2D generator state dict, refusing missing and unused tensors."""
    image_state = {key: value for key, value in image_state.items() if key.startswith(GENERATOR_PREFIXES)}
    target = video.state_dict()
    missing = [key for key in target if image_key(key) not in image_state]
    if missing:
        raise CheckpointMismatchError(f"the image tokenizer lacks {image_key(missing[0])} (for {missing[0]}; {len(missing)} in all): "
                       f"inflation needs an image tokenizer with adaptive_norm=True and the same ch, ch_mult, "
                       f"num_res_blocks and codebook_bits.")
    unused = sorted(set(image_state) - {image_key(key) for key in target})
    if unused:
        raise CheckpointMismatchError(f"the image tokenizer has {unused[0]} which the video model lacks ({len(unused)} in all): "
                       f"use the same ch_mult and num_res_blocks as the image tokenizer.")
    return {key: inflate_tensor(image_state[image_key(key)], value.shape, key).to(value.dtype)
            for key, value in target.items()}


def video_hparams_from_image(image_hparams: Mapping[str, Any]) -> dict[str, Any]:
    """The video architecture matching an image tokenizer's hyper-parameters (the decoder always has adaptive norm)."""
    if not image_hparams.get("adaptive_norm", False):
        raise CheckpointMismatchError("the image tokenizer has no adaptive GroupNorm (a v1 Base model): the video decoder has one "
                         "at every level, so inflate from an adaptive_norm=True (v2/v3 Large) tokenizer.")
    return {key: image_hparams[key] for key in SHARED_HPARAMS if key in image_hparams}


def inflate_video_tokenizer(cls: type[T], tokenizer: nn.Module | str | Path, use_ema: bool = True) -> T:
    """See `VideoTokenizer.inflate_from`. A path is loaded with `Tokenizer.from_checkpoint(path, use_ema=...)`."""
    if isinstance(tokenizer, (str, Path)):
        from openmagvit2.models.tokenizer import Tokenizer

        tokenizer = Tokenizer.from_checkpoint(tokenizer, use_ema=use_ema)
    hparams = getattr(tokenizer, "hparams", None)
    if hparams is None:
        raise TypeError(f"inflate_from expects an image Tokenizer or a path, got {type(tokenizer).__name__}.")
    video = cls(**video_hparams_from_image(hparams))
    video.load_state_dict(inflate_state(tokenizer.state_dict(), video), strict=True)
    return video
