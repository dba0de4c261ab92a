"""Fine-tuning: start a fresh run from the weights of another checkpoint (ours or a released Open-MAGVIT2 .ckpt).

Unlike `train.resume`, only weights are taken (generator, and the discriminator when the file has one); the
optimisers, step, data position and EMA start afresh. The file is read once, without running code from it.
"""
from __future__ import annotations

from pathlib import Path

from torch import nn

from openmagvit2.io.safe_load import read_checkpoint
from openmagvit2.losses.discriminator import load_discriminator_state, released_discriminator_state
from openmagvit2.models.loading import FORMAT, generator_from_file, load_generator_state, select_generator_state


def initialise_from_checkpoint(path: str | Path, tokenizer: nn.Module, discriminator: nn.Module,
                               use_ema: bool = True) -> str:
    """Load generator (EMA copy when asked and present) and discriminator weights; returns what was loaded.

    The training config's `model` must match the file's generator exactly (`CheckpointMismatchError` otherwise).
    `path` may be a released name (`hf://TencentARC/...`), read from the Hugging Face cache (`openmagvit2.hub`).
    """
    from openmagvit2.hub import resolve_path

    path = resolve_path(path)
    checkpoint = read_checkpoint(path, map_location="cpu")
    if not isinstance(checkpoint, dict):
        raise ValueError(f"train.init_from={path} is not a checkpoint dict (got {type(checkpoint).__name__}).")
    state, source = select_generator_state(tokenizer, checkpoint, use_ema, f"train.init_from={path}",
                                           "the training config's model (model=...)")
    load_generator_state(tokenizer, state, f"{path} ({source} weights)")
    if checkpoint.get("format") == FORMAT:
        disc_state = checkpoint.get("discriminator")
    else:
        raw, _ = generator_from_file(checkpoint, str(path))
        try:
            disc_state = released_discriminator_state(raw)
        except ValueError:
            disc_state = None
    if disc_state is None:
        return f"generator ({source} weights) from {path}; the file has no discriminator, it starts from scratch"
    load_discriminator_state(discriminator, disc_state, str(path),
                             "loss.disc_* settings (e.g. loss.disc_norm, disc_channels, disc_layers)")
    return f"generator ({source} weights) and discriminator from {path}"
