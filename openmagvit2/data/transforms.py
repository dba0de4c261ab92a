"""Deterministic image transforms: resize short side, random/centre crop, optional flip, tensor conversion.

Randomness never comes from global or worker RNG state: every random choice takes an explicit
``numpy.random.Generator``, built by :func:`sample_rng` from (seed, epoch, sample index). The crops a run sees are
therefore a pure function of those numbers, whatever the number of workers and however often the run is resumed.
"""

from __future__ import annotations

import enum

import numpy as np
import torch
from PIL import Image


class Stream(enum.IntEnum):
    """First key of every ``sample_rng`` call: distinct ids keep the random streams independent of each other.

    The values are part of the data order (changing one changes every batch of that source), hence fixed numbers.
    """

    EPOCH_ORDER = 1  # map-style: the permutation of an epoch, from (seed, epoch)
    CROP = 2  # map-style: crop and flip of a sample, from (seed, epoch, index, attempt)
    REPLACEMENT = 3  # map-style: the substitute for an unusable file, from (seed, epoch, index, attempt)
    SHARD_ORDER = 11  # shards: the epoch's shard order, and a reader's re-read order in later rounds
    SHUFFLE_BUFFER = 12  # shards: seed of a reader's shuffle buffer, from (seed, epoch, rank, reader)
    STREAM_CROP = 13  # shards: crop and flip (video: clip start first) of a sample, from (seed, epoch, rank, reader,
    # sample number)
    VAL_CROP = 21  # shard val, seeded crops (video reference protocol): from (fixed seed, shard, position, copy)
    VAL_PADDING = 22  # shard val, the duplicates padding the clip list (video reference protocol): from (fixed seed)


def sample_rng(*key: int) -> np.random.Generator:
    """A generator seeded from integers, e.g. ``sample_rng(seed, Stream.CROP, epoch, index)``; equal keys give equal
    streams."""
    return np.random.default_rng(np.random.SeedSequence([int(k) for k in key]))


def resize_short_side(image: Image.Image, size: int) -> Image.Image:
    """Resize so that the shorter side is ``size`` px, keeping the aspect ratio (bilinear, antialiased).

    PIL's bilinear filter widens its support when downscaling, so this is antialiased like torchvision's
    ``Resize(size, antialias=True)``; images smaller than ``size`` are upscaled.
    """
    width, height = image.size
    short = min(width, height)
    if short == size:
        return image
    new_width = max(size, round(width * size / short))
    new_height = max(size, round(height * size / short))
    return image.resize((new_width, new_height), Image.BILINEAR)


def random_crop_box(width: int, height: int, size: int, rng: np.random.Generator) -> tuple[int, int]:
    """Top-left corner (left, top) of a uniformly random ``size`` x ``size`` crop in a ``width`` x ``height`` image."""
    left = int(rng.integers(0, width - size + 1))
    top = int(rng.integers(0, height - size + 1))
    return left, top


def center_crop_box(width: int, height: int, size: int) -> tuple[int, int]:
    """Top-left corner (left, top) of the centred ``size`` x ``size`` crop (rounding like torchvision)."""
    return int(round((width - size) / 2.0)), int(round((height - size) / 2.0))


def crop(image: Image.Image, left: int, top: int, size: int) -> Image.Image:
    """The ``size`` x ``size`` square whose top-left corner is (left, top)."""
    return image.crop((left, top, left + size, top + size))


def to_uint8_tensor(image: Image.Image) -> torch.Tensor:
    """RGB PIL image -> uint8 tensor ``3 h w`` (uint8 keeps worker-to-trainer traffic 4x smaller than float)."""
    # numpy does the HWC -> CHW copy: torch's strided copy may fan out to intra-op threads for a 200 kB tensor.
    return torch.from_numpy(np.ascontiguousarray(np.asarray(image, dtype=np.uint8).transpose(2, 0, 1)))


def to_model_range(images: torch.Tensor, pin_memory: bool = False) -> torch.Tensor:
    """uint8 ``b 3 h w`` (images) or ``b 3 t h w`` (clips) in [0, 255] -> float32 of the same shape in [-1, 1], the
    tokenizer's input range.

    ``pin_memory``: write the result into page-locked memory (CUDA only), so that ``.to(device, non_blocking=True)``
    is a real asynchronous copy. The float tensor is what travels to the GPU, so it is the one pinned.
    """
    out = torch.empty(images.shape, dtype=torch.float32, pin_memory=pin_memory)
    return out.copy_(images).div_(127.5).sub_(1.0)


def train_transform(image: Image.Image, size: int, rng: np.random.Generator, hflip: bool) -> torch.Tensor:
    """The recipe's training augmentation: resize short side to ``size``, random ``size`` crop, optional flip.

    Returns uint8 ``3 size size``.
    """
    image = resize_short_side(image, size)
    left, top = random_crop_box(image.width, image.height, size, rng)
    image = crop(image, left, top, size)
    # Draw the flip coin even when flipping is off so that turning ``hflip`` on does not move the crops.
    flip = bool(rng.integers(0, 2))
    if hflip and flip:
        image = image.transpose(Image.FLIP_LEFT_RIGHT)
    return to_uint8_tensor(image)


def val_transform(image: Image.Image, size: int) -> torch.Tensor:
    """Evaluation preprocessing: resize short side to ``size``, centre ``size`` crop; uint8 ``3 size size``."""
    image = resize_short_side(image, size)
    left, top = center_crop_box(image.width, image.height, size)
    return to_uint8_tensor(crop(image, left, top, size))
