"""Deterministic image transforms: resize short side, random/centre crop, optional flip, tensor conversion.

Randomness never comes from global or worker RNG state: every random choice takes an explicit
``numpy.random.Generator``, built by :func:`sample_rng` from (seed, epoch, sample index). The crops a run sees are
therefore a pure function of those numbers, whatever the number of workers and however often the run is resumed.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image


def sample_rng(*key: int) -> np.random.Generator:
    """A generator seeded from integers, e.g. ``sample_rng(seed, epoch, index)``; equal keys give equal streams."""
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


def to_model_range(images: torch.Tensor) -> torch.Tensor:
    """uint8 ``b 3 h w`` in [0, 255] -> float32 ``b 3 h w`` in [-1, 1], the tokenizer's input range."""
    return images.to(torch.float32).div_(127.5).sub_(1.0)


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
