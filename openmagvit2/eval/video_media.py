"""Clips made watchable: originals beside their reconstructions as an animated GIF or an MP4, and as a frame grid.

The GIF is written by Pillow (no codec needed: it opens everywhere, the demo's choice); the MP4 by PyAV (H.264 when
the FFmpeg build has libx264, else MPEG-4 Part 2), at the same frames. Both show one clip per row: original | recon.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from einops import rearrange
from PIL import Image

from openmagvit2.eval.grid import save_reconstruction_grid
from openmagvit2.eval.images import to_uint8

GAP = 2  # white pixels between the original and its reconstruction, and between clips


def side_by_side_frames(clips: torch.Tensor, reconstructions: torch.Tensor) -> np.ndarray:
    """Clips `b 3 t h w` x2 in [-1, 1] -> `t H W 3` uint8 frames: one row per clip, original left, recon right."""
    if clips.shape != reconstructions.shape or clips.ndim != 5:
        raise ValueError(f"expected two `b 3 t h w` tensors of one shape, got {tuple(clips.shape)} and "
                         f"{tuple(reconstructions.shape)}.")
    pair = torch.stack([to_uint8(clips), to_uint8(reconstructions)]).cpu()  # `2 b 3 t h w`
    pair = torch.nn.functional.pad(pair, (0, GAP, 0, GAP), value=255)  # gaps right of and below every tile
    frames = rearrange(pair, "pair b c t h w -> t (b h) (pair w) c")
    return frames[:, :-GAP, :-GAP].contiguous().numpy()


def save_side_by_side(clips: torch.Tensor, reconstructions: torch.Tensor, path: str | Path, fps: int = 8) -> Path:
    """Write `side_by_side_frames` as `.gif` (Pillow) or `.mp4` (PyAV) at `fps`; parent folders are created."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    frames = side_by_side_frames(clips, reconstructions)
    if path.suffix == ".gif":
        images = [Image.fromarray(frame) for frame in frames]
        images[0].save(path, save_all=True, append_images=images[1:], duration=round(1000 / fps), loop=0)
    elif path.suffix == ".mp4":
        _write_mp4(frames, path, fps)
    else:
        raise ValueError(f"{path}: write a .gif or an .mp4.")
    return path


def _write_mp4(frames: np.ndarray, path: Path, fps: int) -> None:
    import av

    height, width = (side + side % 2 for side in frames.shape[1:3])  # yuv420p needs even sides
    frames = np.pad(frames, ((0, 0), (0, height - frames.shape[1]), (0, width - frames.shape[2]), (0, 0)),
                    constant_values=255)
    codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())


def save_clip_grid(clips: torch.Tensor, reconstructions: torch.Tensor, path: str | Path) -> Path:
    """A PNG with every frame of each clip in a row and the reconstructed frames in the row below."""
    frames = clips.shape[2]
    return save_reconstruction_grid(rearrange(clips, "b c t h w -> (b t) c h w"),
                                    rearrange(reconstructions, "b c t h w -> (b t) c h w"), path, nrow=frames)
