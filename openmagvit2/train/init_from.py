"""Fine-tuning: start a fresh run from the weights of another checkpoint (ours or a released Open-MAGVIT2 .ckpt).

Unlike `train.resume`, only weights are taken (generator, and the discriminator when the file has one); the
optimisers, step, data position and EMA start afresh. The file is read once.
"""
from __future__ import annotations

from pathlib import Path

from torch import nn

from openmagvit2.losses.discriminator import released_discriminator_state
from openmagvit2.models.loading import (FORMAT, load_generator_state, read_checkpoint, released_generator_state,
                                        strip_wrapper_prefixes)


def initialise_from_checkpoint(path: str | Path, tokenizer: nn.Module, discriminator: nn.Module,
                               use_ema: bool = True) -> str:
    """Load generator (EMA copy when asked and present) and discriminator weights; returns what was loaded."""
    path = Path(path)
    checkpoint = read_checkpoint(path, map_location="cpu", weights_only=None)
    if checkpoint.get("format") == FORMAT:
        ema = checkpoint.get("generator_ema")
        state, source = (ema, "ema") if use_ema and ema is not None else (checkpoint["generator"], "raw")
        load_generator_state(tokenizer, strip_wrapper_prefixes(state), f"{path} ({source} weights)")
        disc_state = checkpoint.get("discriminator")
    else:
        raw = strip_wrapper_prefixes(checkpoint.get("state_dict", checkpoint))
        state, source = released_generator_state(raw, list(tokenizer.state_dict()), use_ema)
        load_generator_state(tokenizer, state, f"{path} ({source} weights)")
        try:
            disc_state = released_discriminator_state(raw)
        except ValueError:
            disc_state = None
    if disc_state is None:
        return f"generator ({source} weights) from {path}; the file has no discriminator, it starts from scratch"
    try:
        discriminator.load_state_dict(disc_state)
    except RuntimeError as error:
        raise ValueError(f"the discriminator in {path} does not match loss.disc_* settings (e.g. loss.disc_norm, "
                         f"disc_channels, disc_layers): {str(error).splitlines()[0]}") from None
    return f"generator ({source} weights) and discriminator from {path}"
