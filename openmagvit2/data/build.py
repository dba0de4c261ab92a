"""Factories the trainer and eval code call: the train and val loaders of the chosen data source.

``data.name`` picks the source: ``sample`` (bundled photos), ``imagenet_folder`` (ImageFolder layout on disk) or
``imagenet_wds`` (WebDataset shards). Their keys, defaults and checks are the dataclasses in ``openmagvit2/config.py``
(one per source); ``docs/data.md`` describes the guarantees.
"""

from __future__ import annotations

import os
from typing import Any, Mapping

from openmagvit2.config import (ConfigError, DataConfig, FolderDataConfig, SampleDataConfig,
                                WdsDataConfig, data_config)
from .folder import FolderTrain, FolderVal, scan_image_folder
from .loaders import MapStyleTrainLoader, MapStyleValLoader
from .sample import SampleTrain, SampleVal
from .shards import expand_shards, read_index
from .wds import WdsTrainLoader, WdsValLoader

def _wds_counts(data_cfg: WdsDataConfig, urls: list[str]) -> tuple[list[int] | None, int]:
    """Per-shard sample counts from the index (None without a usable index) and the samples per epoch."""
    explicit = data_cfg.epoch_samples
    index_path = data_cfg.index_path
    counts = None
    if index_path is not None and os.path.isfile(index_path):
        listed = {shard["name"]: int(shard["count"]) for shard in read_index(index_path)["shards"]}
        names = [os.path.basename(url) for url in urls]
        unknown = [name for name in names if name not in listed]
        if not unknown:
            counts = [listed[name] for name in names]
        elif explicit is None:
            raise ValueError(f"data.shards: shard {unknown[0]!r} is not listed in the index {index_path!r}: point "
                             "data.shards_index at the matching index or set data.epoch_samples.")
    total = int(explicit) if explicit is not None else sum(counts)
    return counts, total


def build_train_loader(data_cfg: DataConfig | Mapping[str, Any], batch_size: int, rank: int, world_size: int,
                       seed: int) -> MapStyleTrainLoader | WdsTrainLoader:
    """The endless training loader of ``data.name`` for this rank: iterate for float ``b 3 H W`` batches in [-1, 1].

    ``data_cfg`` is the typed ``data`` group (a composed node or a dict is checked first). The object has
    ``epoch_size`` (batches per epoch, equal on every rank), ``state_dict()``, ``load_state_dict()`` and ``stats()``.
    """
    data = data_config(data_cfg)
    if isinstance(data, SampleDataConfig):
        source = SampleTrain(list(data.train_photos), data.image_size, data.epoch_crops,
                             tuple(float(v) for v in data.crop_scale), data.hflip)
        return MapStyleTrainLoader(source, batch_size, rank, world_size, seed, data.num_workers, data.name)
    if isinstance(data, FolderDataConfig):
        listing = scan_image_folder(str(data.train_dir), "data.train_dir")
        source = FolderTrain(listing, data.image_size, data.hflip, data.jpeg_draft)
        return MapStyleTrainLoader(source, batch_size, rank, world_size, seed, data.num_workers, data.name)
    urls = expand_shards(data.shards)
    counts, total = _wds_counts(data, urls)
    return WdsTrainLoader(urls, counts=counts, total_samples=total, image_size=data.image_size, hflip=data.hflip,
                          draft=data.jpeg_draft, shuffle_buffer=data.shuffle_buffer,
                          shard_shuffle=data.shard_shuffle, batch_size=batch_size,
                          rank=rank, world_size=world_size, seed=seed, num_workers=data.num_workers)


def build_val_loader(data_cfg: DataConfig | Mapping[str, Any], batch_size: int, rank: int, world_size: int,
                     max_images: int | None = None) -> MapStyleValLoader | WdsValLoader:
    """The ordered validation loader (centre crops, float ``b 3 H W``): one pass, each image once across ranks.

    ``max_images`` picks a fixed subset (the same on every call). The object has ``stats()`` with the skip count.
    """
    data = data_config(data_cfg)
    if isinstance(data, SampleDataConfig):
        source = SampleVal(list(data.val_photos), data.image_size, data.val_crops,
                           tuple(float(v) for v in data.crop_scale))
        return MapStyleValLoader(source, batch_size, rank, world_size, data.num_workers, max_images, data.name)
    if isinstance(data, FolderDataConfig):
        if data.val_dir is None:
            raise ConfigError("data.val_dir is not set: pass data.val_dir=/path/to/images.")
        listing = scan_image_folder(str(data.val_dir), "data.val_dir")
        return MapStyleValLoader(FolderVal(listing, data.image_size), batch_size, rank, world_size, data.num_workers,
                                 max_images, data.name)
    if data.val_shards is None:
        raise ConfigError("data.val_shards is not set: pass data.val_shards='/path/val-{000000..000049}.tar'.")
    return WdsValLoader(expand_shards(data.val_shards), image_size=data.image_size, batch_size=batch_size,
                        rank=rank, world_size=world_size, num_workers=data.num_workers, max_images=max_images)
