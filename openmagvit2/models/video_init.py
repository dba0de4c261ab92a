"""`train.init_from` for video runs: start a video tokenizer from a video checkpoint, or inflate it from an image one
(a path or a released name such as hf://TencentARC/Open-MAGVIT2-Tokenizer-128-resolution).

The file is read once. A video file (released or ours) loads strictly, with its 3D discriminator when it has one; an
image file (released 2D `.ckpt` or ours) is inflated by the last-slice rule (§4) and the 3D discriminator starts from
scratch, as upstream (no discriminator or LPIPS weights are taken from the image checkpoint).
"""
from __future__ import annotations

from pathlib import Path

from torch import nn

from openmagvit2.losses.discriminator import load_discriminator_state, released_discriminator_state
from openmagvit2.models.inflate import image_key, inflate_state
from openmagvit2.models.loading import FORMAT, load_generator_state, strip_wrapper_prefixes
from openmagvit2.models.video_loading import HINT, IMAGE_KEY, read_video_checkpoint, video_generator_state



def initialise_video_from_checkpoint(path: str | Path, video: nn.Module, discriminator: nn.Module | None = None,
                                     use_ema: bool = True) -> str:
    """Load or inflate `video`'s generator (EMA copy when asked and present), and the discriminator; says what it did."""
    from openmagvit2.hub import resolve_path

    path = Path(resolve_path(path))  # a released name (hf://TencentARC/...) from the Hugging Face cache
    checkpoint = read_video_checkpoint(path)
    raw_state, _, _ = video_generator_state(checkpoint, None, use_ema=False, path=path)
    if IMAGE_KEY in raw_state:
        names = [image_key(key) for key in video.state_dict()]
        state, source, _ = video_generator_state(checkpoint, names, use_ema, path)
        video.load_state_dict(inflate_state(state, video), strict=True)
        return (f"video generator inflated from the image tokenizer's {source} weights in {path}; the 3D "
                f"discriminator starts from scratch")
    state, source, _ = video_generator_state(checkpoint, list(video.state_dict()), use_ema, path)
    load_generator_state(video, state, f"{path} ({source} weights)", hint=HINT)
    if checkpoint.get("format") == FORMAT:
        disc_state = checkpoint.get("discriminator")
    else:
        raw = strip_wrapper_prefixes(checkpoint.get("state_dict", checkpoint))
        try:
            disc_state = released_discriminator_state(raw)  # the same `loss.discriminator.*` keys as the 2D files
        except ValueError:
            disc_state = None
    if discriminator is None or disc_state is None:
        return f"video generator ({source} weights) from {path}; the 3D discriminator starts from scratch"
    load_discriminator_state(discriminator, disc_state, str(path), "the 3D discriminator's settings")
    return f"video generator ({source} weights) and 3D discriminator from {path}"
