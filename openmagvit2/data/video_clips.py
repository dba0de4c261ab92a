"""Video clips for the video tokenizer (`data=video_wds`): a `<class>/<video>.avi` folder scan for the converter,
17-consecutive-frame decoding, the clip resize and crop, and the per-sample decoder the shard loaders run.
REFERENCE-VIDEO §6, §8.

Upstream (`ucf101.py`) decodes every frame of a video with decord and keeps 17 consecutive ones from a random start
(training) or the centre (evaluation), resizes the short side to 128 (cv2 INTER_LINEAR on uint8 frames), crops 128
(random, also at eval) and maps to [-1, 1], without flips. Here PyAV seeks to the keyframe before the start and
decodes only up to the last frame needed, from the shard's bytes in memory; the frames are the same. bench/video.py
(320x240 MPEG-4, one thread): 90 clips/s, decord's get_batch 73, decord decoding all frames (upstream) 6-17, OpenCV
111 (but only from a file path, so a temporary file per shard sample). Evaluation crops the centre (deterministic)
unless the reference protocol is asked for (`build_val_loader(..., protocol="reference")`, see
:func:`reference_copies`).
"""
from __future__ import annotations

import io
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from .decode import CorruptImageError, ImageLimits, UnusableImageError
from .folder import FolderListing
from .shards import encoded_bytes
from .transforms import Stream, center_crop_box, random_crop_box, sample_rng

VIDEO_EXTENSIONS = frozenset({".avi", ".mp4", ".webm", ".mkv", ".mov"})
VIDEO_FIELDS = tuple(extension.lstrip(".") for extension in sorted(VIDEO_EXTENSIONS))
# The reference evaluation (`evaluation_video.py`): the clip list padded to this many with duplicates (§7).
REFERENCE_PAD_TO = 10_000
# Fixed seed of the reference protocol's crops and duplicates: the same clips on every call, whatever the run's seed.
REFERENCE_SEED = 20240603


class ShortVideoError(UnusableImageError):
    """A video with fewer decodable frames than a clip needs."""

    counter = "skipped_short"


def scan_video_folder(root: str, key: str = "--src") -> FolderListing:
    """List `<root>/<class>/**/<video>.{avi,mp4,...}` (sorted; class index = sorted folder position)."""
    if not os.path.isdir(root):
        raise ValueError(f"{key}={root!r} is not a directory: point it at a folder of <class>/<video>.avi files.")
    classes = sorted(entry.name for entry in os.scandir(root) if entry.is_dir(follow_symlinks=True))
    paths, labels = [], []
    for label, name in enumerate(classes):
        for current, subdirs, files in os.walk(os.path.join(root, name), followlinks=True):
            subdirs.sort()
            for file in sorted(files):
                if os.path.splitext(file)[1].lower() in VIDEO_EXTENSIONS:
                    paths.append(os.path.relpath(os.path.join(current, file), root))
                    labels.append(label)
    if not paths:
        raise ValueError(f"{key}={root!r} holds no videos ({', '.join(sorted(VIDEO_EXTENSIONS))}) in class folders.")
    return FolderListing(root=root, paths=paths, labels=labels, classes=classes)


def _decode_range(container, stream, first: int, stop: int) -> list[np.ndarray]:
    """Frames first..stop-1 (`h w 3` uint8) after seeking to the keyframe at or before `first`."""
    fps, offset = float(stream.average_rate), stream.start_time or 0
    if first > 0:
        container.seek(offset + int(first / fps / stream.time_base), stream=stream, backward=True)
    frames = []
    for frame in container.decode(stream):
        index = round(float((frame.pts - offset) * stream.time_base) * fps) if frame.pts is not None else -1
        if index >= stop:
            break
        if index >= first:
            frames.append(frame.to_ndarray(format="rgb24"))
    return frames


def _pick_start(total: int, length: int, rng: np.random.Generator | None) -> int:
    return int(rng.integers(0, total - length + 1)) if rng is not None else (total - length) // 2


def _decode_clip(data: bytes, length: int, rng: np.random.Generator | None, start: int | None,
                 limits: ImageLimits | None) -> np.ndarray:
    import av

    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.video[0]
        stream.codec_context.thread_count = 1  # one decoding thread per loader worker; the workers give parallelism
        if limits is not None:
            limits.check(stream.codec_context.width, stream.codec_context.height)
        total = stream.frames
        if total >= length:
            if start is None:
                start = _pick_start(total, length, rng)
            frames = _decode_range(container, stream, start, start + length)
            if len(frames) == length:
                return np.stack(frames)
            container.seek(0)
        frames = [frame.to_ndarray(format="rgb24") for frame in container.decode(stream)]
    if len(frames) < length:
        raise ShortVideoError(f"the video has {len(frames)} decodable frames, fewer than a {length}-frame clip")
    if start is None or start + length > len(frames):
        start = _pick_start(len(frames), length, rng)
    return np.stack(frames[start:start + length])


def decode_clip(data: bytes, length: int = 17, rng: np.random.Generator | None = None, start: int | None = None,
                limits: ImageLimits | None = None) -> np.ndarray:
    """`length` consecutive frames `t h w 3` uint8 of an encoded video: from `start` if given, else a random start
    drawn from `rng`, else the centre (`(frames - length) // 2`, as upstream).

    Uses the container's frame count to pick the start; when it is unknown or the seek comes back short, decodes
    every frame and slices (upstream's way). `limits` (`data.max_pixels`, `data.max_aspect_ratio`) are checked on
    the stream's frame size before any decoding. Raises :class:`ShortVideoError` for videos shorter than `length`,
    :class:`CorruptImageError` for data PyAV cannot decode, an `ImageLimits` error for frames beyond the limits.
    """
    import av

    try:
        return _decode_clip(data, length, rng, start, limits)
    except UnusableImageError:
        raise
    except (av.FFmpegError, OSError, ValueError, TypeError, IndexError, ZeroDivisionError) as error:
        detail = str(error).splitlines()[0] if str(error) else "no video stream"
        raise CorruptImageError(f"cannot decode the video ({type(error).__name__}: {detail})") from error


def video_corruption(data: bytes) -> str | None:
    """Why `data` is not a decodable video (None if its first frame decodes): the converter's check."""
    import av

    try:
        with av.open(io.BytesIO(data)) as container:
            if not container.streams.video:
                return "no video stream"
            next(container.decode(container.streams.video[0]))
    except (av.FFmpegError, StopIteration, OSError, ValueError) as error:
        return f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else 'no frames'}"
    return None


def resize_crop_clip(frames: np.ndarray, size: int, rng: np.random.Generator | None = None,
                     hflip: bool = False) -> torch.Tensor:
    """`t h w 3` uint8 -> uint8 `3 t size size`: short side to `size`, then a random crop drawn from `rng` (and a
    flip coin, drawn always, applied when `hflip`), else the centre crop.

    The resize is bilinear with half-pixel centres and no antialiasing, as upstream's cv2.INTER_LINEAR on uint8
    frames (new long side `int(size * long / short)`), rounded back to uint8: the loader workers ship uint8 (4x less
    than float) and the main process maps to [-1, 1].
    """
    video = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2)  # `t 3 h w`
    height, width = video.shape[-2:]
    scale = size / min(height, width)
    new_height, new_width = max(size, int(height * scale)), max(size, int(width * scale))
    if (new_height, new_width) != (height, width):
        video = F.interpolate(video.float(), size=(new_height, new_width), mode="bilinear", align_corners=False)
        video = video.round_().clamp_(0, 255).to(torch.uint8)
    if rng is not None:
        left, top = random_crop_box(new_width, new_height, size, rng)
        flip = bool(rng.integers(0, 2))  # drawn even when off, so that turning hflip on does not move the crops
    else:
        (left, top), flip = center_crop_box(new_width, new_height, size), False
    video = video[:, :, top:top + size, left:left + size]
    if hflip and flip:
        video = video.flip(-1)
    return video.permute(1, 0, 2, 3).contiguous()


def video_bytes(sample: dict) -> bytes:
    """The encoded video of a shard sample (first known video field)."""
    return encoded_bytes(sample, VIDEO_FIELDS, "video")


@dataclass(frozen=True)
class ClipDecoder:
    """The shard loaders' per-sample work for video shards: encoded video -> uint8 clip `3 frames size size`.

    Training: `frames` consecutive frames from a random start, short side to `size`, random crop (start, crop and
    flip coin all from the sample's `rng`). Evaluation: the centre frames, the centre crop (or a random one from the
    given `rng`: the reference protocol)."""

    frames: int
    size: int
    hflip: bool = False
    limits: ImageLimits = ImageLimits()
    converter: ClassVar[str] = "make_video_shards"

    def train(self, sample: dict, rng: np.random.Generator) -> torch.Tensor:
        clip = decode_clip(video_bytes(sample), self.frames, rng, limits=self.limits)
        return resize_crop_clip(clip, self.size, rng, self.hflip)

    def val(self, sample: dict, rng: np.random.Generator | None = None) -> torch.Tensor:
        return resize_crop_clip(decode_clip(video_bytes(sample), self.frames, limits=self.limits), self.size, rng)


def reference_copies(counts: Sequence[int], pad_to: int = REFERENCE_PAD_TO, seed: int = REFERENCE_SEED
                     ) -> dict[tuple[int, int], int]:
    """Extra copies of `(shard, position)` samples that pad a list of `sum(counts)` clips to `pad_to`.

    Upstream pads its clip list to `num_eval_sample` with `random.sample` duplicates, unseeded (§7); here they are
    drawn from `seed`, so every call evaluates the same clips. No padding when the shards hold `pad_to` or more;
    duplicates are drawn without replacement while they fit (as `random.sample`), with replacement beyond.
    """
    total = sum(counts)
    missing = pad_to - total
    if missing <= 0 or total == 0:
        return {}
    picks = sample_rng(seed, Stream.VAL_PADDING).choice(total, missing, replace=missing > total)
    starts = np.cumsum([0, *counts])
    copies: dict[tuple[int, int], int] = {}
    for index in picks:
        shard = int(np.searchsorted(starts, index, side="right")) - 1
        key = (shard, int(index - starts[shard]))
        copies[key] = copies.get(key, 0) + 1
    return copies
