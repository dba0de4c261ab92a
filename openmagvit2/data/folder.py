"""``data=imagenet_folder``: images on disk in the ImageFolder layout (``<split>/<synset>/*.JPEG``).

Class folders are the sorted sub-directories (class index = position, as torchvision's ``ImageFolder``); images
directly inside the split folder are accepted too, without a label (a flat val folder, "any folder of images").
Training: resize the short side to ``data.image_size`` (bilinear, antialiased), random crop, optional flip.
Validation: resize short side, centre crop.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch

from .decode import ImageLimits, decode_image
from .transforms import train_transform, val_transform

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm",
                              ".pbm", ".jfif"})
UNLABELED = -1


def is_image_file(name: str) -> bool:
    """True for names with a known image extension (case-insensitive: ImageNet uses ``.JPEG``)."""
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


@dataclass(frozen=True)
class FolderListing:
    """A scanned image folder: sorted relative ``paths``, their ``labels`` (-1 = unlabeled) and the ``classes``."""

    root: str
    paths: list[str]
    labels: list[int]
    classes: list[str]

    def __len__(self) -> int:
        return len(self.paths)

    def require_labels(self, key: str) -> None:
        """Refuse (``ValueError``, one line naming ``key``) a folder with images outside class folders."""
        unlabeled = sum(1 for label in self.labels if label == UNLABELED)
        if unlabeled:
            first = next(path for path, label in zip(self.paths, self.labels) if label == UNLABELED)
            raise ValueError(f"{key}={self.root!r} has {unlabeled} images outside class folders (e.g. {first!r}), "
                             "which have no label: move them into <class>/ sub-folders to train with labels.")


def _images_below(directory: str) -> list[str]:
    found = []
    for current, subdirs, files in os.walk(directory, followlinks=True):
        subdirs.sort()
        found.extend(os.path.join(current, name) for name in sorted(files) if is_image_file(name))
    return found


def has_images(root: str) -> bool:
    """True as soon as one image is found under ``root`` (a cheap check: it stops at the first image)."""
    for _, subdirs, files in os.walk(root, followlinks=True):
        subdirs.sort()
        if any(is_image_file(name) for name in files):
            return True
    return False


def scan_image_folder(root: str, key: str = "data.train_dir") -> FolderListing:
    """List the images of ``root``: each sub-directory is a class (searched recursively), loose images are unlabeled.

    Raises ``ValueError`` naming ``key`` when the folder is missing or holds no images.
    """
    if not os.path.isdir(root):
        raise ValueError(f"{key}={root!r} is not a directory: point it at a folder of images (e.g. imagenet/train).")
    entries = sorted(os.scandir(root), key=lambda entry: entry.name)
    classes = [entry.name for entry in entries if entry.is_dir(follow_symlinks=True)]
    paths: list[str] = []
    labels: list[int] = []
    for entry in entries:
        if entry.is_file(follow_symlinks=True) and is_image_file(entry.name):
            paths.append(entry.name)
            labels.append(UNLABELED)
    for label, name in enumerate(classes):
        for path in _images_below(os.path.join(root, name)):
            paths.append(os.path.relpath(path, root))
            labels.append(label)
    if not paths:
        raise ValueError(f"{key}={root!r} holds no images ({', '.join(sorted(IMAGE_EXTENSIONS))}): check the path.")
    return FolderListing(root=root, paths=paths, labels=labels, classes=classes)


class FolderTrain:
    """Training view of a folder: ``train_item`` decodes, resizes the short side, random-crops, optionally flips."""

    def __init__(self, listing: FolderListing, image_size: int, hflip: bool, jpeg_draft: bool,
                 limits: ImageLimits = ImageLimits()):
        self.listing = listing
        self.image_size = image_size
        self.hflip = hflip
        self.draft_size = image_size if jpeg_draft else None
        self.limits = limits

    def __len__(self) -> int:
        return len(self.listing)

    def train_item(self, index: int, rng: np.random.Generator) -> tuple[torch.Tensor, int]:
        image = decode_image(os.path.join(self.listing.root, self.listing.paths[index]), self.draft_size, self.limits)
        return train_transform(image, self.image_size, rng, self.hflip), self.listing.labels[index]

    def describe(self, index: int) -> str:
        return os.path.join(self.listing.root, self.listing.paths[index])


class FolderVal:
    """Validation view of a folder: full-resolution decode, resize short side, centre crop (the published protocol)."""

    def __init__(self, listing: FolderListing, image_size: int, limits: ImageLimits = ImageLimits()):
        self.listing = listing
        self.image_size = image_size
        self.limits = limits

    def __len__(self) -> int:
        return len(self.listing)

    def val_item(self, index: int) -> tuple[torch.Tensor, int]:
        image = decode_image(os.path.join(self.listing.root, self.listing.paths[index]), limits=self.limits)
        return val_transform(image, self.image_size), self.listing.labels[index]

    def describe(self, index: int) -> str:
        return os.path.join(self.listing.root, self.listing.paths[index])
