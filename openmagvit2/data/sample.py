"""``data=sample``: real photographs bundled inside scikit-image, cut into crops; no download needed.

scikit-image ships a handful of colour photographs in its wheel (``skimage/data/*.png|jpg``) that load offline.
Training crops come from the training photos; the validation crops come from *held-out* photos, so the demo's
PSNR is measured on images the model never trained on. An epoch is a fixed number of crops (``data.epoch_crops``).

Labels (``labels=True``, class-conditional Stage II): a crop's label is the index of its photo in
``data.train_photos``. The held-out val photo is no class of those, so a *labelled* validation set is made of
held-out crops of the training photos instead: ``data.val_crops`` crops drawn with a fixed seed of their own
(:data:`LABELLED_VAL_SEED`), which training never uses (training crops come from the run's seed).

Each crop is a random square whose side is a random fraction (``data.crop_scale``) of the photo's short side,
resized to ``data.image_size`` (bilinear, antialiased): random-resized-crop style scale jitter, so that a 64 px
demo sees both fine texture and whole objects.
"""

from __future__ import annotations

import functools
from typing import Callable, Sequence

import numpy as np
import torch
from PIL import Image

from .transforms import sample_rng, to_uint8_tensor


def _motorcycle() -> np.ndarray:
    from skimage import data

    return data.stereo_motorcycle()[0]


def _loader(name: str) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        from skimage import data

        return getattr(data, name)()

    return load


# Colour photographs that ship inside the scikit-image wheel (no pooch download): name -> loader.
PHOTOS: dict[str, Callable[[], np.ndarray]] = {
    "astronaut": _loader("astronaut"),
    "chelsea": _loader("chelsea"),
    "coffee": _loader("coffee"),
    "rocket": _loader("rocket"),
    "hubble_deep_field": _loader("hubble_deep_field"),
    "immunohistochemistry": _loader("immunohistochemistry"),
    "retina": _loader("retina"),
    "motorcycle": _motorcycle,
}

# Fixed seed of the validation crops: the val set must not change with the training seed.
VAL_SEED = 20240601
# Fixed seed of the labelled validation crops (of the training photos; see the module docstring).
LABELLED_VAL_SEED = 20240602


def check_photo_names(train_photos: Sequence[str], val_photos: Sequence[str]) -> None:
    """Raise ``ValueError`` for unknown photo names, empty lists, or photos used for both training and validation."""
    for key, names in (("data.train_photos", train_photos), ("data.val_photos", val_photos)):
        if len(names) == 0:
            raise ValueError(f"{key} is empty: list at least one of {sorted(PHOTOS)}.")
        unknown = [name for name in names if name not in PHOTOS]
        if unknown:
            raise ValueError(f"{key} has unknown photos {unknown}: choose from {sorted(PHOTOS)}.")
    shared = sorted(set(train_photos) & set(val_photos))
    if shared:
        raise ValueError(f"data.val_photos {shared} are also in data.train_photos: keep validation photos held out.")


@functools.lru_cache(maxsize=None)
def _photo(name: str) -> Image.Image:
    return Image.fromarray(np.ascontiguousarray(PHOTOS[name]()[..., :3])).convert("RGB")


def load_photos(names: Sequence[str]) -> list[Image.Image]:
    """The named bundled photos as RGB PIL images (decoded once per process; treat them as read-only)."""
    return [_photo(name) for name in names]


def random_resized_crop(photo: Image.Image, size: int, scale: tuple[float, float], rng: np.random.Generator,
                        hflip: bool) -> torch.Tensor:
    """A random square of side ``u x short side`` (u ~ U(scale)), resized to ``size``; uint8 ``3 size size``."""
    short = min(photo.size)
    side = int(round(short * rng.uniform(scale[0], scale[1])))
    side = int(np.clip(side, 1, short))
    left = int(rng.integers(0, photo.width - side + 1))
    top = int(rng.integers(0, photo.height - side + 1))
    image = photo.resize((size, size), Image.BILINEAR, box=(left, top, left + side, top + side))
    flip = bool(rng.integers(0, 2))
    if hflip and flip:
        image = image.transpose(Image.FLIP_LEFT_RIGHT)
    return to_uint8_tensor(image)


class SampleTrain:
    """Training crops of the bundled photos: ``epoch_crops`` items per epoch, the crop drawn from the given rng."""

    def __init__(self, photos: Sequence[str], image_size: int, epoch_crops: int, crop_scale: tuple[float, float],
                 hflip: bool):
        self.names = list(photos)
        self.photos = load_photos(self.names)
        self.image_size = image_size
        self.epoch_crops = epoch_crops
        self.crop_scale = crop_scale
        self.hflip = hflip

    def __len__(self) -> int:
        return self.epoch_crops

    def train_item(self, index: int, rng: np.random.Generator) -> tuple[torch.Tensor, int]:
        """The crop for one slot of the epoch and its label (the photo's index); photo and place come from ``rng``."""
        label = int(rng.integers(len(self.photos)))
        return random_resized_crop(self.photos[label], self.image_size, self.crop_scale, rng, self.hflip), label

    def describe(self, index: int) -> str:
        return f"sample crop {index}"


class SampleVal:
    """A fixed set of ``val_crops`` crops of ``photos`` (same crop distribution, fixed seed, no flip); crop ``i``
    comes from photo ``i % len(photos)``, which is its label.

    The unlabelled val set is the held-out photos with :data:`VAL_SEED`; the labelled one the training photos with
    :data:`LABELLED_VAL_SEED`."""

    def __init__(self, photos: Sequence[str], image_size: int, val_crops: int, crop_scale: tuple[float, float],
                 seed: int = VAL_SEED):
        self.seed = seed
        self.names = list(photos)
        self.photos = load_photos(self.names)
        self.image_size = image_size
        self.val_crops = val_crops
        self.crop_scale = crop_scale

    def __len__(self) -> int:
        return self.val_crops

    def val_item(self, index: int) -> tuple[torch.Tensor, int]:
        label, image = self.val_photo_crop(index)
        return image, label

    def val_photo_crop(self, index: int, size: int | None = None) -> tuple[int, torch.Tensor]:
        """(label, uint8 ``3 size size`` crop) of item ``index``; ``size`` defaults to ``image_size``."""
        rng = sample_rng(self.seed, index)
        label = index % len(self.photos)
        return label, random_resized_crop(self.photos[label], size or self.image_size, self.crop_scale, rng,
                                          hflip=False)

    def describe(self, index: int) -> str:
        return f"sample val crop {index}"
