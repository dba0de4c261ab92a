"""Factories the trainer and eval code call: the train and val loaders of the chosen data source.

``data.name`` picks the source: ``sample`` (bundled photos), ``imagenet_folder`` (ImageFolder layout on disk),
``imagenet_wds`` (WebDataset image shards), ``video_wds`` (WebDataset video shards, clips ``b 3 t h w`` for the video
tokenizer), or ``tokens`` (token shards written by ``python -m openmagvit2.tokenize``, for the Stage II generator).
Their keys, defaults and checks are the dataclasses in ``openmagvit2/config.py`` (one per source); ``docs/data.md``
describes the guarantees.
"""

from __future__ import annotations

import os
from typing import Any, Mapping

from openmagvit2.config import (DataConfig, FileDataConfig, FolderDataConfig, SampleDataConfig, ShardDataConfig,
                                TokenDataConfig, VideoWdsDataConfig, data_config)
from .decode import ImageLimits
from .folder import FolderTrain, FolderVal, scan_image_folder
from .loaders import MapStyleTrainLoader, MapStyleValLoader, SkipPolicy
from .sample import LABELLED_VAL_SEED, SampleTrain, SampleVal
from .shards import default_index_path, expand_shards, read_index
from .tokens import TokenTrainLoader, TokenValLoader, read_token_split
from .video_clips import REFERENCE_PAD_TO, REFERENCE_SEED, ClipDecoder, reference_copies
from .wds import ImageDecoder, SampleDecoder, WdsTrainLoader, WdsValLoader

VAL_KEYS = {"sample": "val_photos", "imagenet_folder": "val_dir", "imagenet_wds": "val_shards",
            "video_wds": "val_shards", "tokens": "val_index"}
# Evaluation protocols of build_val_loader: "centre" (every source), "reference" (video: evaluation_video.py's).
VAL_PROTOCOLS = ("centre", "reference")


class NoValidationSetError(ValueError):
    """``build_val_loader`` on a config whose validation set is null (``data.val_dir=null``)."""


def _index_counts(index_path: str | None, urls: list[str]) -> tuple[list[int] | None, str | None]:
    """Per-shard sample counts from the index (None without a usable one) and the first shard it does not list."""
    if index_path is None or not os.path.isfile(index_path):
        return None, None
    listed = {shard["name"]: int(shard["count"]) for shard in read_index(index_path)["shards"]}
    names = [os.path.basename(url) for url in urls]
    unknown = [name for name in names if name not in listed]
    return (None, unknown[0]) if unknown else ([listed[name] for name in names], None)


def _wds_counts(data_cfg: ShardDataConfig, urls: list[str]) -> tuple[list[int] | None, int]:
    """Per-shard sample counts from the index (None without a usable index) and the samples per epoch."""
    explicit = data_cfg.epoch_samples
    counts, unknown = _index_counts(data_cfg.index_path, urls)
    if unknown is not None and explicit is None:
        raise ValueError(f"data.shards: shard {unknown!r} is not listed in the index {data_cfg.index_path!r}: point "
                         "data.shards_index at the matching index or set data.epoch_samples.")
    total = int(explicit) if explicit is not None else sum(counts)
    return counts, total


def _decoder(data: ShardDataConfig) -> SampleDecoder:
    """What one shard sample becomes: a clip (video shards) or an image."""
    if isinstance(data, VideoWdsDataConfig):
        return ClipDecoder(data.frames, data.image_size, data.hflip, _image_limits(data))
    return ImageDecoder(data.image_size, data.hflip, data.jpeg_draft, _image_limits(data))


def has_validation_set(data_cfg: DataConfig | Mapping[str, Any]) -> bool:
    """False when the config's validation set is null (``data.val_dir=null``: "no validation set")."""
    data = data_config(data_cfg)
    return getattr(data, VAL_KEYS[data.name]) is not None


def _image_limits(data: FileDataConfig) -> ImageLimits:
    """``data.max_pixels`` and ``data.max_aspect_ratio`` (checked from the header, before decoding; for videos, from
    the stream's frame size)."""
    return ImageLimits(data.max_pixels, float(data.max_aspect_ratio))


def _require_labelled_shards(index_path: str | None, key: str, spec: Any) -> None:
    """Refuse shards whose index counts unlabeled samples (images that were outside class folders)."""
    if index_path is None or not os.path.isfile(index_path):
        return  # no index: a sample without .cls stops the run when it is read
    unlabeled = int(read_index(index_path).get("unlabeled", 0))
    if unlabeled:
        raise ValueError(f"data.{key}={str(spec)!r}: {unlabeled} samples have no label (the index {index_path!r} "
                         "counts them): make the shards from class folders to train with labels.")


def build_train_loader(data_cfg: DataConfig | Mapping[str, Any], batch_size: int, rank: int, world_size: int,
                       seed: int, pin_memory: bool = False, labels: bool = False
                       ) -> MapStyleTrainLoader | WdsTrainLoader | TokenTrainLoader:
    """The endless training loader of ``data.name`` for this rank: iterate for float ``b 3 H W`` batches in [-1, 1]
    (``data=video_wds``: clips ``b 3 T H W``, ``T = data.frames`` consecutive frames).

    ``labels=True``: each batch is ``(images b 3 H W float, labels b int64)``: the sorted class-folder index
    (``imagenet_folder``; loose images are refused), the ``.cls`` field (``imagenet_wds``, ``video_wds``), or the index
    of the photo in ``data.train_photos`` (``sample``). ``data=tokens`` always yields ``(indices b n int64, labels b
    int64)``. ``data_cfg`` is the typed ``data`` group (a composed node or a dict is checked first). The object has
    ``epoch_size`` (batches per epoch, equal on every rank, also ``len()``), ``state_dict()``, ``load_state_dict()``
    and ``stats()``. ``pin_memory=True`` (CUDA runs) returns page-locked batches for ``.to(device,
    non_blocking=True)``. Raises ``DataError`` mid-run when more than ``data.max_skip_rate`` of the samples read are
    unusable (missing or broken files).
    """
    data = data_config(data_cfg)
    common = dict(batch_size=batch_size, rank=rank, world_size=world_size, seed=seed, pin_memory=pin_memory)
    if isinstance(data, TokenDataConfig):
        return TokenTrainLoader(read_token_split(data.train_index, "data.train_index"), **common)
    if isinstance(data, SampleDataConfig):  # the bundled photos are never skipped
        source = SampleTrain(list(data.train_photos), data.image_size, data.epoch_crops,
                             tuple(float(v) for v in data.crop_scale), data.hflip)
        return MapStyleTrainLoader(source, num_workers=data.num_workers, name=data.name, where="data=sample",
                                   policy=SkipPolicy(), labels=labels, **common)
    policy = SkipPolicy(float(data.max_skip_rate), data.skip_window)
    if isinstance(data, FolderDataConfig):
        listing = scan_image_folder(str(data.train_dir), "data.train_dir")
        if labels:
            listing.require_labels("data.train_dir")
        source = FolderTrain(listing, data.image_size, data.hflip, data.jpeg_draft, _image_limits(data))
        return MapStyleTrainLoader(source, num_workers=data.num_workers, name=data.name,
                                   where=f"data.train_dir={str(data.train_dir)!r}", policy=policy, labels=labels,
                                   **common)
    urls = expand_shards(data.shards)
    if labels:
        _require_labelled_shards(data.index_path, "shards", data.shards)
    counts, total = _wds_counts(data, urls)
    return WdsTrainLoader(urls, decoder=_decoder(data), counts=counts, total_samples=total,
                          shuffle_buffer=data.shuffle_buffer, shard_shuffle=data.shard_shuffle,
                          num_workers=data.num_workers, name=data.name, where=f"data.shards={str(data.shards)!r}",
                          policy=policy, labels=labels, **common)


def build_val_loader(data_cfg: DataConfig | Mapping[str, Any], batch_size: int, rank: int, world_size: int,
                     max_images: int | None = None, pin_memory: bool = False, labels: bool = False,
                     protocol: str = "centre", pad_to: int = REFERENCE_PAD_TO
                     ) -> MapStyleValLoader | WdsValLoader | TokenValLoader:
    """The ordered validation loader (centre crops, float ``b 3 H W``; ``data=video_wds``: the centre ``data.frames``
    frames, clips ``b 3 T H W``): one pass, each image (clip) once across ranks.

    ``labels=True``: batches are ``(images, labels b int64)`` (see :func:`build_train_loader`); for ``data=sample``
    the labelled val set is ``data.val_crops`` held-out crops of the *training* photos (a fixed seed of its own),
    since the val photos are no class of the training ones. ``data=tokens`` always yields ``(indices, labels)``.
    ``max_images`` picks a fixed subset (the same on every call; for video, a number of clips). The object has
    ``stats()`` with the skip counts (``images``: the images or clips yielded).

    ``protocol="reference"`` (``data=video_wds`` only): Open-MAGVIT2's ``evaluation_video.py`` made reproducible:
    the centre frames with a *random* crop drawn from a fixed seed (``REFERENCE_SEED``, per shard, position and copy),
    and the clip list padded to ``pad_to`` clips (10,000 upstream) with duplicates drawn from that seed
    (:func:`~openmagvit2.data.video_clips.reference_copies`; needs the shards' index; no ``max_images``). Upstream
    reads the *train* split for this (REFERENCE-VIDEO §7): point ``data.val_shards`` at ``train.json`` to match it.
    Raises :class:`NoValidationSetError` when the config has none (check :func:`has_validation_set` first).
    """
    data = data_config(data_cfg)
    if protocol not in VAL_PROTOCOLS:
        raise ValueError(f"protocol={protocol!r} is unknown: use one of {', '.join(VAL_PROTOCOLS)}.")
    if protocol == "reference" and not isinstance(data, VideoWdsDataConfig):
        raise ValueError(f"protocol='reference' is the video evaluation protocol: use data=video_wds, not "
                         f"data={data.name}.")
    if not has_validation_set(data):
        key = VAL_KEYS[data.name]
        raise NoValidationSetError(f"data.{key} is null, so data={data.name} has no validation set: set data.{key} "
                                   "to one to evaluate.")
    if isinstance(data, TokenDataConfig):
        return TokenValLoader(read_token_split(data.val_index, "data.val_index"), batch_size=batch_size, rank=rank,
                              world_size=world_size, max_images=max_images)
    common = dict(batch_size=batch_size, rank=rank, world_size=world_size, max_images=max_images,
                  num_workers=data.num_workers, pin_memory=pin_memory, labels=labels)
    crop_scale = tuple(float(v) for v in data.crop_scale) if isinstance(data, SampleDataConfig) else None
    if isinstance(data, SampleDataConfig) and labels:
        source = SampleVal(list(data.train_photos), data.image_size, data.val_crops, crop_scale, LABELLED_VAL_SEED)
        return MapStyleValLoader(source, name=data.name, **common)
    if isinstance(data, SampleDataConfig):
        return MapStyleValLoader(SampleVal(list(data.val_photos), data.image_size, data.val_crops, crop_scale),
                                 name=data.name, **common)
    if isinstance(data, FolderDataConfig):
        listing = scan_image_folder(str(data.val_dir), "data.val_dir")
        if labels:
            listing.require_labels("data.val_dir")
        return MapStyleValLoader(FolderVal(listing, data.image_size, _image_limits(data)), name=data.name, **common)
    index_path = default_index_path(data.val_shards)
    if labels:
        _require_labelled_shards(index_path, "val_shards", data.val_shards)
    urls = expand_shards(data.val_shards)
    reference = {}
    if protocol == "reference":
        reference = dict(crop_seed=REFERENCE_SEED, copies=_reference_copies(index_path, urls, max_images, pad_to))
    return WdsValLoader(urls, decoder=_decoder(data), name=data.name, **reference, **common)


def _reference_copies(index_path: str | None, urls: list[str], max_images: int | None,
                      pad_to: int) -> dict[tuple[int, int], int]:
    """The reference protocol's duplicates (see :func:`build_val_loader`), after refusing what it cannot honour."""
    if max_images is not None:
        raise ValueError(f"max_images={max_images} does not combine with protocol='reference': pad_to={pad_to} sets "
                         "the number of clips; pass max_images=None.")
    if pad_to < 1:
        raise ValueError(f"pad_to={pad_to} must be at least 1 (the reference protocol evaluates 10000 clips).")
    counts, _ = _index_counts(index_path, urls)
    if counts is None:
        raise ValueError(f"protocol='reference' needs the per-shard counts of data.val_shards' index {index_path!r}: "
                         "give the index JSON make_video_shards wrote as data.val_shards.")
    return reference_copies(counts, pad_to, REFERENCE_SEED)
