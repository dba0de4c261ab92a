"""Video clips for the video tokenizer: a `<class>/<video>.avi` folder scan, 17-consecutive-frame decoding, transforms,
and an iterable over WebDataset video shards (written by `make_video_shards`). REFERENCE-VIDEO §6, §8.

Upstream (`ucf101.py`) decodes every frame of a video with decord and keeps 17 consecutive ones from a random start
(training) or the centre (evaluation), resizes the short side to 128 (bilinear), crops 128 (random, also at eval)
and maps to [-1, 1], without flips. Here PyAV seeks to the keyframe before the start and decodes only up to the last
frame needed, from the shard's bytes in memory; the frames are the same. bench/video.py (320x240 MPEG-4, one thread):
90 clips/s, decord's get_batch 73, decord decoding all frames (upstream) 6-17, OpenCV 111 (but only from a file
path, so a temporary file per shard sample). Evaluation crops the centre (deterministic), unlike upstream's random crop.
"""
from __future__ import annotations

import io
import os
import random
from collections.abc import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
import webdataset as wds

from .folder import UNLABELED, FolderListing
from .shards import iter_shard

VIDEO_EXTENSIONS = frozenset({".avi", ".mp4", ".webm", ".mkv", ".mov"})
VIDEO_FIELDS = tuple(extension.lstrip(".") for extension in sorted(VIDEO_EXTENSIONS))


class ShortVideoError(ValueError):
    """A video with fewer frames than a clip needs (or none decodable)."""


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


def decode_clip(data: bytes, length: int = 17, rng: random.Random | None = None, start: int | None = None
                ) -> np.ndarray:
    """`length` consecutive frames `t h w 3` uint8 of an encoded video: from `start` if given, else a random start
    with `rng`, else the centre.

    Uses the container's frame count to pick the start; when it is unknown or the seek comes back short, decodes
    every frame and slices (upstream's way). Raises ShortVideoError for videos shorter than `length`.
    """
    import av

    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.video[0]
        stream.codec_context.thread_count = 1  # one decoding thread per loader worker; the workers give parallelism
        total = stream.frames
        if total >= length:
            if start is None:
                start = rng.randint(0, total - length) if rng is not None else (total - length) // 2
            frames = _decode_range(container, stream, start, start + length)
            if len(frames) == length:
                return np.stack(frames)
            container.seek(0)
        frames = [frame.to_ndarray(format="rgb24") for frame in container.decode(stream)]
    if len(frames) < length:
        raise ShortVideoError(f"the video has {len(frames)} decodable frames, fewer than a {length}-frame clip.")
    if start is None or start + length > len(frames):
        start = rng.randint(0, len(frames) - length) if rng is not None else (len(frames) - length) // 2
    return np.stack(frames[start:start + length])


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


def clip_to_tensor(frames: np.ndarray, size: int = 128, rng: random.Random | None = None) -> torch.Tensor:
    """`t h w 3` uint8 -> `3 t size size` float in [-1, 1]: short side to `size` (bilinear, half-pixel centres as
    cv2.INTER_LINEAR), then a random crop with `rng`, else the centre crop."""
    video = torch.from_numpy(frames).permute(0, 3, 1, 2).float()  # `t 3 h w`
    height, width = video.shape[-2:]
    scale = size / min(height, width)
    new_size = (max(size, int(height * scale)), max(size, int(width * scale)))
    if new_size != (height, width):
        video = F.interpolate(video, size=new_size, mode="bilinear", align_corners=False)
    top_range, left_range = new_size[0] - size, new_size[1] - size
    top = rng.randint(0, top_range) if rng is not None else top_range // 2
    left = rng.randint(0, left_range) if rng is not None else left_range // 2
    video = video[:, :, top:top + size, left:left + size]
    return (video.clamp(0, 255) / 127.5 - 1).permute(1, 0, 2, 3).contiguous()


def video_bytes(sample: dict) -> bytes:
    """The encoded video of a shard sample (first known video field)."""
    for field in VIDEO_FIELDS:
        if field in sample:
            return sample[field]
    raise ShortVideoError(f"sample has no video field (fields: {sorted(k for k in sample if not k.startswith('__'))})")


class VideoClipShards(torch.utils.data.IterableDataset):
    """Clips `3 frames size size` and labels from video shards; shards split over ranks, then over loader workers.

    Training (`train=True`): shards shuffled per epoch, a streaming shuffle buffer, random start and crop; forever
    when `repeat`. Evaluation: stored order, centre clip and crop. Videos shorter than a clip are skipped (counted
    in `skipped` of the worker that met them).
    """

    def __init__(self, urls: Sequence[str], frames: int = 17, size: int = 128, train: bool = True, seed: int = 0,
                 rank: int = 0, world_size: int = 1, shuffle_buffer_size: int = 64, repeat: bool = False) -> None:
        super().__init__()
        if len(urls) < world_size:
            raise ValueError(f"{len(urls)} shard(s) cannot be split over {world_size} ranks: write more shards "
                             f"(make_video_shards --shard-size).")
        self.urls, self.frames, self.size, self.train, self.seed = list(urls), frames, size, train, seed
        self.rank, self.world_size, self.buffer, self.repeat = rank, world_size, shuffle_buffer_size, repeat
        self.skipped = 0

    def _my_urls(self, epoch: int) -> list[str]:
        urls = list(self.urls)
        if self.train:
            random.Random(self.seed + epoch).shuffle(urls)
        info = torch.utils.data.get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        return urls[self.rank::self.world_size][worker::workers]

    def __iter__(self) -> Iterator[tuple[torch.Tensor, int]]:
        info = torch.utils.data.get_worker_info()
        rng = random.Random(hash((self.seed, self.rank, info.id if info else 0)))
        epoch = 0
        while True:
            samples = (sample for url in self._my_urls(epoch) for sample in iter_shard(url))
            if self.train:
                samples = wds.shuffle(self.buffer, initial=self.buffer, rng=rng)(samples)
            for sample in samples:
                try:
                    frames = decode_clip(video_bytes(sample), self.frames, rng if self.train else None)
                except ShortVideoError:
                    self.skipped += 1
                    continue
                label = int(sample["cls"]) if "cls" in sample else UNLABELED
                yield clip_to_tensor(frames, self.size, rng if self.train else None), label
            epoch += 1
            if not (self.train and self.repeat):
                return
