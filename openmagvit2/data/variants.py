"""The ordered, labelled image pass ``python -m openmagvit2.tokenize`` encodes: chunks of images, each image once,
cut into its stored variants.

Variants, as users of LlamaGen's ``extract_codes_c2i.py`` expect:

- ``crops=1``: the centre crop (resize the short side to ``size``, centre ``size`` crop: the val preprocessing);
  ``flip=true`` adds its mirror image as variant 1.
- ``crops=10``: resize the short side to ``int(1.1 * size)``, take the centre square of that side, then
  torchvision's ``TenCrop(size)``: variants 0..4 are the top-left, top-right, bottom-left, bottom-right and centre
  crops, 5..9 the same crops of the mirrored image (so ``flip`` adds nothing and is refused with it).

A *chunk* is the unit of work and of output (one token shard): ``chunk_size`` consecutive images of a map-style
source (``sample``, ``imagenet_folder``), or one input shard of ``imagenet_wds``. Image ids are dense: the position
in the source's ordered listing (folders), crop number (sample), or the global sample number over the shards in
order (from the index's counts).
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np
import torch
from PIL import Image
from torch.utils.data import IterableDataset, get_worker_info

from openmagvit2.config import DataConfig, FolderDataConfig, SampleDataConfig, WdsDataConfig

from .decode import ImageLimits, UnusableImageError, decode_image
from .folder import scan_image_folder
from .sample import LABELLED_VAL_SEED, SampleVal
from .shards import default_index_path, expand_shards, image_bytes, iter_shard, read_index, sample_label, sample_name
from .transforms import center_crop_box, crop, resize_short_side, to_uint8_tensor

CROPS = (1, 10)
TEN_CROP_RANGE = 1.1  # LlamaGen's crop_range: ten crops of size s come from the centre 1.1 s square
# Fixed seed of the sample source's tokenized training crops (of data.train_photos; labels = the photo).
SAMPLE_TOKENS_SEED = 20240603


def variants_per_image(crops: int, flip: bool) -> int:
    return 10 if crops == 10 else (2 if flip else 1)


def check_variants(crops: int, flip: bool) -> None:
    """Refuse settings that are not a LlamaGen augmentation (``ValueError``, one line)."""
    if crops not in CROPS:
        raise ValueError(f"crops={crops} is invalid: expected 1 (centre crop) or 10 (ten-crop).")
    if crops == 10 and flip:
        raise ValueError("crops=10 already holds the mirrored crops (variants 5..9): use flip=false with it.")


def base_size(size: int, crops: int) -> int:
    """Side of the square the variants are cut from."""
    return int(size * TEN_CROP_RANGE) if crops == 10 else size


def image_variants(image: Image.Image, size: int, crops: int, flip: bool) -> torch.Tensor:
    """An RGB image -> its stored variants, uint8 ``v 3 size size`` (see the module docstring for the order)."""
    side = base_size(size, crops)
    image = resize_short_side(image, side)
    image = crop(image, *center_crop_box(image.width, image.height, side), side)
    if crops == 1:
        views = [image, image.transpose(Image.FLIP_LEFT_RIGHT)] if flip else [image]
    else:
        far = side - size
        boxes = [(0, 0), (far, 0), (0, far), (far, far), center_crop_box(side, side, size)]
        mirrored = image.transpose(Image.FLIP_LEFT_RIGHT)
        views = [crop(view, left, top, size) for view in (image, mirrored) for left, top in boxes]
    return torch.stack([to_uint8_tensor(view) for view in views])


@dataclass(frozen=True)
class Chunk:
    """One token shard's worth of images: its number, the expected image count and how to list them."""

    number: int
    num_images: int
    entries: Callable[[], Iterator[tuple[int, int, Callable[[], Image.Image], str]]]  # (id, label, load, name)


@dataclass(frozen=True)
class ImagePass:
    """The chunks of a split, its class names, and where it came from (named in the index)."""

    chunks: list[Chunk]
    classes: list[str]
    source: str


def _folder_entries(listing, limits: ImageLimits, start: int, stop: int):
    for index in range(start, stop):
        path = os.path.join(listing.root, listing.paths[index])
        yield index, listing.labels[index], functools.partial(decode_image, path, None, limits), path


def _sample_entries(source: SampleVal, side: int, start: int, stop: int):
    def load(index: int) -> Image.Image:
        _, crop_tensor = source.val_photo_crop(index, side)
        return Image.fromarray(crop_tensor.permute(1, 2, 0).numpy())

    for index in range(start, stop):
        yield index, index % len(source.photos), functools.partial(load, index), f"sample crop {index}"


def _wds_entries(url: str, offset: int, limits: ImageLimits):
    for position, sample in enumerate(iter_shard(url)):
        yield (offset + position, sample_label(sample),
               functools.partial(lambda s: decode_image(image_bytes(s), None, limits), sample), sample_name(sample))


def image_pass(data: DataConfig, split: str, chunk_size: int, size: int, crops: int) -> ImagePass:
    """The ordered labelled pass over ``split`` ("train" or "val") of ``data``, cut into chunks."""
    def ranges(total: int, make) -> list[Chunk]:
        return [Chunk(number, min(chunk_size, total - start), functools.partial(make, start, min(total,
                                                                                          start + chunk_size)))
                for number, start in enumerate(range(0, total, chunk_size))]

    if isinstance(data, SampleDataConfig):
        seed = SAMPLE_TOKENS_SEED if split == "train" else LABELLED_VAL_SEED
        total = data.epoch_crops if split == "train" else data.val_crops
        source = SampleVal(list(data.train_photos), size, total, tuple(float(v) for v in data.crop_scale), seed)
        side = base_size(size, crops)
        return ImagePass(ranges(total, functools.partial(_sample_entries, source, side)), list(data.train_photos),
                         f"sample {split}: crops of {list(data.train_photos)} (seed {seed})")
    limits = ImageLimits(data.max_pixels, float(data.max_aspect_ratio))
    if isinstance(data, FolderDataConfig):
        key = "data.train_dir" if split == "train" else "data.val_dir"
        folder = data.train_dir if split == "train" else data.val_dir
        if folder is None:
            raise ValueError(f"{key} is null: there is no {split} split to tokenize.")
        listing = scan_image_folder(str(folder), key)
        listing.require_labels(key)
        return ImagePass(ranges(len(listing), functools.partial(_folder_entries, listing, limits)),
                         list(listing.classes), os.path.abspath(str(folder)))
    assert isinstance(data, WdsDataConfig)
    spec = data.shards if split == "train" else data.val_shards
    if spec is None:
        raise ValueError(f"data.val_shards is null: there is no {split} split to tokenize.")
    urls = expand_shards(spec)
    index_path = data.index_path if split == "train" else default_index_path(spec)
    if index_path is None or not os.path.isfile(index_path):
        raise ValueError(f"no shard index at {index_path!r}: tokenizing shards needs the per-shard counts that "
                         "make_shards writes (set data.shards_index).")
    index = read_index(index_path)
    listed = {shard["name"]: shard for shard in index["shards"]}
    missing = [url for url in urls if os.path.basename(url) not in listed]
    if missing:
        raise ValueError(f"shard {missing[0]!r} is not listed in the index {index_path!r}: point data.shards_index "
                         "at the matching index.")
    unlabeled = sum(int(listed[os.path.basename(url)].get("unlabeled", 0)) for url in urls)
    if unlabeled:
        raise ValueError(f"{unlabeled} samples of {spec!r} have no label (.cls): make the shards from class folders "
                         "to tokenize them for class-conditional training.")
    counts = [int(listed[os.path.basename(url)]["count"]) for url in urls]
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    chunks = [Chunk(number, counts[number], functools.partial(_wds_entries, url, int(offsets[number]), limits))
              for number, url in enumerate(urls)]
    return ImagePass(chunks, list(index.get("classes", [])), str(spec))


class ChunkImages(IterableDataset):
    """Worker side of one chunk: ``(image id, label, uint8 v 3 s s variants or None, name, reason)`` per image.

    Worker ``w`` of ``W`` takes the images at positions ``w, w + W, ...`` (order is restored when the shard is
    written); an unusable image comes back with ``None`` and the reason, to be counted.
    """

    def __init__(self, chunk: Chunk, size: int, crops: int, flip: bool):
        self.chunk, self.size, self.crops, self.flip = chunk, size, crops, flip

    def __iter__(self):
        info = get_worker_info()
        worker, workers = (0, 1) if info is None else (info.id, info.num_workers)
        for position, (image_id, label, load, name) in enumerate(self.chunk.entries()):
            if position % workers != worker:
                continue
            try:
                variants = image_variants(load(), self.size, self.crops, self.flip)
            except UnusableImageError as error:
                yield image_id, label, None, name, f"{error.counter}: {error}"
                continue
            yield image_id, label, variants, name, ""
