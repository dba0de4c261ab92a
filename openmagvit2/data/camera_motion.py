"""Videos for the CPU demo and the tests: real pixels, synthetic motion.

    python -m openmagvit2.data.camera_motion --out data/camera_motion/train [--photos astronaut chelsea ...]
        [--videos-per-photo 4] [--frames 33] [--size 64] [--seed 0]

Each video is a smooth camera path over one of the photographs bundled in scikit-image (the ones ``data=sample``
uses, same loader): a square window that pans and zooms from a random start at a random speed (about a pixel per
frame or less at 64 px), eased in and out (``(1 - cos(pi t)) / 2``), resampled at sub-pixel positions (PIL's
bilinear resize of a float box, antialiased when it shrinks), so consecutive frames are close and the first and last
frames show different views. The path is a pure function of (seed, photo, video number). Written as
``<out>/<photo>/<photo>_<k>.mp4`` (H.264, yuv420p, 25 fps): the class-folder layout ``make_video_shards`` reads, the
photo being the class. About 30 videos of 33 frames at 64 px take a few seconds.
"""
from __future__ import annotations

import argparse
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from .sample import PHOTOS, load_photos
from .transforms import sample_rng

FPS = 25
START_SIDE = (0.4, 0.9)  # window side at the first frame / photo short side
PAN_SPEED = (0.005, 0.02)  # window centre travel per frame / window side (64 px frames: 0.3-1.3 px per frame)
ZOOM_SPEED = 0.01  # |log change| of the window side per frame, at most


def camera_path(width: int, height: int, frames: int, rng: np.random.Generator) -> np.ndarray:
    """`frames x 4` float boxes (left, top, right, bottom) of a square window panning and zooming inside a
    `width x height` photo at a random speed per frame, eased in and out."""
    short = min(width, height)
    zoom = math.exp(rng.uniform(-1, 1) * ZOOM_SPEED * (frames - 1))
    sides = short * rng.uniform(*START_SIDE) * np.array([1.0, zoom])
    sides[1] = min(sides[1], short)
    angle, distance = rng.uniform(0, 2 * math.pi), sides[0] * rng.uniform(*PAN_SPEED) * (frames - 1)
    half = sides[0] / 2
    start = np.array([rng.uniform(half, width - half), rng.uniform(half, height - half)])
    end = start + distance * np.array([math.cos(angle), math.sin(angle)])
    end = np.clip(end, sides[1] / 2, [width - sides[1] / 2, height - sides[1] / 2])  # keep the end window inside
    ease = (1 - np.cos(np.pi * np.linspace(0, 1, frames))) / 2
    centres = start + ease[:, None] * (end - start)
    side = sides[0] + ease * (sides[1] - sides[0])
    # Both end windows lie inside the photo and the path interpolates centre and side linearly, so every window does.
    return np.stack([centres[:, 0] - side / 2, centres[:, 1] - side / 2, centres[:, 0] + side / 2,
                     centres[:, 1] + side / 2], axis=1)


def render(photo: Image.Image, boxes: np.ndarray, size: int) -> np.ndarray:
    """The frames `t size size 3` uint8 seen through `boxes` (bilinear, sub-pixel)."""
    return np.stack([np.asarray(photo.resize((size, size), Image.BILINEAR, box=tuple(float(v) for v in box)))
                     for box in boxes])


def write_video(path: Path, frames: np.ndarray, codec: str = "libx264") -> None:
    """`t h w 3` uint8 frames -> an H.264 (or `codec`) yuv420p video at 25 fps."""
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        options = {"crf": "18", "preset": "veryfast"} if codec == "libx264" else {}
        stream = container.add_stream(codec, rate=FPS, options=options)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def write_camera_motion_videos(out_dir: str | Path, photos: Sequence[str], videos_per_photo: int, frames: int,
                               size: int, seed: int = 0, codec: str = "libx264") -> list[Path]:
    """Write `videos_per_photo` camera-motion videos of `frames` frames at `size` px per photo (see the module
    docstring); returns their paths, `<out_dir>/<photo>/<photo>_<k>.mp4`, in order."""
    unknown = [name for name in photos if name not in PHOTOS]
    if unknown or not photos:
        raise ValueError(f"photos {unknown or '[]'} are not bundled photos: choose from {sorted(PHOTOS)}.")
    if size < 2 or size % 2:
        raise ValueError(f"size={size} must be an even number of pixels (yuv420p halves the colour planes).")
    if frames < 2 or videos_per_photo < 1:
        raise ValueError(f"frames={frames} and videos_per_photo={videos_per_photo} must be at least 2 and 1.")
    names = list(PHOTOS)
    paths = []
    for name, photo in zip(photos, load_photos(photos)):
        for k in range(videos_per_photo):
            boxes = camera_path(photo.width, photo.height, frames, sample_rng(seed, names.index(name), k))
            path = Path(out_dir) / name / f"{name}_{k}.mp4"
            write_video(path, render(photo, boxes, size), codec)
            paths.append(path)
    return paths


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="output folder (one sub-folder per photo)")
    parser.add_argument("--photos", nargs="+", default=sorted(PHOTOS), help="bundled photos (default: all)")
    parser.add_argument("--videos-per-photo", type=int, default=4)
    parser.add_argument("--frames", type=int, default=33, help="frames per video (clips are 4k + 1 of them)")
    parser.add_argument("--size", type=int, default=64, help="frame side in pixels (even)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--codec", default="libx264", help="PyAV encoder (libx264, or mpeg4 as UCF-101's .avi)")
    args = parser.parse_args(argv)
    try:
        paths = write_camera_motion_videos(args.out, args.photos, args.videos_per_photo, args.frames, args.size,
                                           args.seed, args.codec)
    except ValueError as error:
        parser.error(str(error))
    print(f"[camera_motion] wrote {len(paths)} videos of {args.frames} frames at {args.size} px under {args.out}")


if __name__ == "__main__":
    main()
