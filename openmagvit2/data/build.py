"""Factories the trainer and eval code call: validate the data config, build train and val loaders.

``data.name`` picks the source: ``sample`` (bundled photos), ``imagenet_folder`` (ImageFolder layout on disk) or
``imagenet_wds`` (WebDataset shards). See ``conf/data/*.yaml`` for every key and ``docs/data.md`` for the guarantees.
"""

from __future__ import annotations

import os
from typing import Any, Mapping

from .decode import DEFAULT_MAX_ASPECT_RATIO, DEFAULT_MAX_PIXELS, ImageLimits
from .folder import FolderTrain, FolderVal, has_images, scan_image_folder
from .loaders import MapStyleTrainLoader, MapStyleValLoader, SkipPolicy
from .sample import SampleTrain, SampleVal, check_photo_names
from .shards import default_index_path, expand_shards, missing_local_shards, read_index
from .wds import WdsTrainLoader, WdsValLoader

SOURCES = ("sample", "imagenet_folder", "imagenet_wds")
VAL_KEYS = {"sample": "val_photos", "imagenet_folder": "val_dir", "imagenet_wds": "val_shards"}


class NoValidationSetError(ValueError):
    """``build_val_loader`` on a config whose validation set is null (``data.val_dir=null``)."""


def _get(cfg: Any, key: str, default: Any = None) -> Any:
    if isinstance(cfg, Mapping) or hasattr(cfg, "get"):
        value = cfg.get(key, default)
    else:
        value = getattr(cfg, key, default)
    return default if value is None else value


def _require_int(cfg: Any, key: str, minimum: int) -> int:
    value = _get(cfg, key)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"data.{key}={value!r} is invalid: it must be an integer >= {minimum}.")
    return value


def _check_dir(cfg: Any, key: str, required: bool) -> None:
    path = _get(cfg, key)
    if path is None:
        if required:
            raise ValueError(f"data.{key} is not set: pass data.{key}=/path/to/images.")
        return
    if not os.path.isdir(str(path)):
        raise ValueError(f"data.{key}={str(path)!r} does not exist or is not a directory: set data.{key} "
                         "(or data.root) to your image folder.")
    if not has_images(str(path)):
        raise ValueError(f"data.{key}={str(path)!r} holds no images: point data.{key} at a folder of images "
                         "(<class>/*.JPEG or loose images).")


def _check_shards(cfg: Any, key: str, required: bool) -> None:
    spec = _get(cfg, key)
    if spec is None:
        if required:
            raise ValueError(f"data.{key} is not set: pass data.{key}='/path/train-{{000000..001281}}.tar'.")
        return
    try:
        urls = expand_shards(spec)
    except ValueError as error:
        raise ValueError(f"data.{key}={spec!r} is not a valid shard pattern ({error}).") from error
    if not urls:
        raise ValueError(f"data.{key}={spec!r} names no shards: use a pattern like /path/train-{{000000..001281}}.tar.")
    missing = missing_local_shards(urls)
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise ValueError(f"data.{key}: shard {missing[0]!r}{more} does not exist: create the shards with "
                         "`python -m openmagvit2.data.make_shards` or fix the path.")


def _index_path(cfg: Any) -> str | None:
    explicit = _get(cfg, "shards_index")
    return str(explicit) if explicit is not None else default_index_path(_get(cfg, "shards"))


def validate_data_config(data_cfg: Any) -> None:
    """Check ``data.*`` before anything expensive starts; raise ``ValueError`` with one sentence naming the key."""
    name = _get(data_cfg, "name")
    if name not in SOURCES:
        raise ValueError(f"data.name={name!r} is unknown: choose data={'|'.join(SOURCES)}.")
    _require_int(data_cfg, "image_size", 8)
    _require_int(data_cfg, "num_workers", 0)
    if not isinstance(_get(data_cfg, "hflip", False), bool):
        raise ValueError(f"data.hflip={_get(data_cfg, 'hflip')!r} must be true or false.")
    if name == "sample":
        check_photo_names(list(_get(data_cfg, "train_photos", [])), list(_get(data_cfg, "val_photos", [])))
        _require_int(data_cfg, "epoch_crops", 1)
        _require_int(data_cfg, "val_crops", 1)
        low, high = (float(v) for v in _get(data_cfg, "crop_scale", (0.25, 0.75)))
        if not 0.0 < low <= high <= 1.0:
            raise ValueError(f"data.crop_scale=[{low}, {high}] is invalid: it needs 0 < low <= high <= 1.")
    elif name == "imagenet_folder":
        _check_dir(data_cfg, "train_dir", required=True)
        _check_dir(data_cfg, "val_dir", required=False)
    else:
        _check_shards(data_cfg, "shards", required=True)
        _check_shards(data_cfg, "val_shards", required=False)
        _require_int(data_cfg, "shuffle_buffer", 1)
        if _get(data_cfg, "epoch_samples") is None:
            index = _index_path(data_cfg)
            if index is None or not os.path.isfile(index):
                raise ValueError(f"data.shards_index: no shard index at {index!r} (make_shards writes one next to the "
                                 "shards): set data.shards_index to it or data.epoch_samples to the sample count.")
        else:
            _require_int(data_cfg, "epoch_samples", 1)
    if name != "sample":  # the bundled photos are never skipped
        _image_limits(data_cfg)
        _skip_policy(data_cfg)


def _wds_counts(data_cfg: Any, urls: list[str]) -> tuple[list[int] | None, int]:
    """Per-shard sample counts from the index (None without a usable index) and the samples per epoch."""
    explicit = _get(data_cfg, "epoch_samples")
    index_path = _index_path(data_cfg)
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


def has_validation_set(data_cfg: Any) -> bool:
    """False when the config's validation set is null (``data.val_dir=null``: "no validation set")."""
    return _get(data_cfg, VAL_KEYS.get(_get(data_cfg, "name"), "val_dir")) is not None


def _image_limits(data_cfg: Any) -> ImageLimits:
    """``data.max_pixels`` and ``data.max_aspect_ratio`` (checked from the header, before decoding)."""
    limits = ImageLimits(int(_get(data_cfg, "max_pixels", DEFAULT_MAX_PIXELS)),
                         float(_get(data_cfg, "max_aspect_ratio", DEFAULT_MAX_ASPECT_RATIO)))
    if limits.max_pixels < 1 or limits.max_aspect_ratio < 1:
        raise ValueError(f"data.max_pixels={limits.max_pixels} and data.max_aspect_ratio={limits.max_aspect_ratio} "
                         "must be at least 1.")
    return limits


def _skip_policy(data_cfg: Any) -> SkipPolicy:
    """``data.max_skip_rate`` over windows of ``data.skip_window`` samples read."""
    policy = SkipPolicy(float(_get(data_cfg, "max_skip_rate", 0.01)), int(_get(data_cfg, "skip_window", 2000)))
    if not 0.0 <= policy.max_skip_rate <= 1.0 or policy.window < 1:
        raise ValueError(f"data.max_skip_rate={policy.max_skip_rate} must be in [0, 1] and data.skip_window="
                         f"{policy.window} at least 1.")
    return policy


def build_train_loader(data_cfg: Any, batch_size: int, rank: int, world_size: int, seed: int,
                       pin_memory: bool = False) -> MapStyleTrainLoader | WdsTrainLoader:
    """The endless training loader of ``data.name`` for this rank: iterate for float ``b 3 H W`` batches in [-1, 1].

    The object has ``epoch_size`` (batches per epoch, equal on every rank, also ``len()``), ``state_dict()``,
    ``load_state_dict()`` and ``stats()``. ``pin_memory=True`` (CUDA runs) returns page-locked batches for
    ``.to(device, non_blocking=True)``. Raises ``DataError`` mid-run when more than ``data.max_skip_rate`` of the
    samples read are unusable (missing or broken files).
    """
    validate_data_config(data_cfg)
    name = _get(data_cfg, "name")
    size = int(_get(data_cfg, "image_size"))
    hflip = bool(_get(data_cfg, "hflip", False))
    workers = int(_get(data_cfg, "num_workers", 0))
    common = dict(batch_size=batch_size, rank=rank, world_size=world_size, seed=seed, policy=_skip_policy(data_cfg),
                  pin_memory=pin_memory)
    if name == "sample":
        source = SampleTrain(list(_get(data_cfg, "train_photos")), size, int(_get(data_cfg, "epoch_crops")),
                             tuple(float(v) for v in _get(data_cfg, "crop_scale", (0.25, 0.75))), hflip)
        return MapStyleTrainLoader(source, num_workers=workers, name=name, where="data=sample", **common)
    if name == "imagenet_folder":
        train_dir = str(_get(data_cfg, "train_dir"))
        listing = scan_image_folder(train_dir, "data.train_dir")
        source = FolderTrain(listing, size, hflip, bool(_get(data_cfg, "jpeg_draft", False)), _image_limits(data_cfg))
        return MapStyleTrainLoader(source, num_workers=workers, name=name, where=f"data.train_dir={train_dir!r}",
                                   **common)
    urls = expand_shards(_get(data_cfg, "shards"))
    counts, total = _wds_counts(data_cfg, urls)
    return WdsTrainLoader(urls, counts=counts, total_samples=total, image_size=size, hflip=hflip,
                          draft=bool(_get(data_cfg, "jpeg_draft", False)), limits=_image_limits(data_cfg),
                          shuffle_buffer=int(_get(data_cfg, "shuffle_buffer", 1000)),
                          shard_shuffle=bool(_get(data_cfg, "shard_shuffle", True)), num_workers=workers,
                          where=f"data.shards={str(_get(data_cfg, 'shards'))!r}", **common)


def build_val_loader(data_cfg: Any, batch_size: int, rank: int, world_size: int, max_images: int | None = None,
                     pin_memory: bool = False) -> MapStyleValLoader | WdsValLoader:
    """The ordered validation loader (centre crops, float ``b 3 H W``): one pass, each image once across ranks.

    ``max_images`` picks a fixed subset (the same on every call). The object has ``stats()`` with the skip counts.
    Raises :class:`NoValidationSetError` when the config has none (check :func:`has_validation_set` first).
    """
    validate_data_config(data_cfg)
    name = _get(data_cfg, "name")
    if not has_validation_set(data_cfg):
        key = VAL_KEYS[name]
        raise NoValidationSetError(f"data.{key} is null, so data={name} has no validation set: set data.{key} to "
                                   "one to evaluate.")
    size = int(_get(data_cfg, "image_size"))
    common = dict(batch_size=batch_size, rank=rank, world_size=world_size, max_images=max_images,
                  num_workers=int(_get(data_cfg, "num_workers", 0)), pin_memory=pin_memory)
    if name == "sample":
        source = SampleVal(list(_get(data_cfg, "val_photos")), size, int(_get(data_cfg, "val_crops")),
                           tuple(float(v) for v in _get(data_cfg, "crop_scale", (0.25, 0.75))))
        return MapStyleValLoader(source, name=name, **common)
    if name == "imagenet_folder":
        listing = scan_image_folder(str(_get(data_cfg, "val_dir")), "data.val_dir")
        return MapStyleValLoader(FolderVal(listing, size, _image_limits(data_cfg)), name=name, **common)
    return WdsValLoader(expand_shards(_get(data_cfg, "val_shards")), image_size=size, limits=_image_limits(data_cfg),
                        **common)
