"""Reading WebDataset shards: shard patterns, the index written by make_shards, tar iteration by segments.

The I/O half of ``data=imagenet_wds`` (the loaders are in ``wds.py``). Opening goes through webdataset's ``gopen``,
so local paths, ``file:``, ``pipe:`` and ``s3://``/``http(s)://`` URLs all work; tar members are grouped into
samples by webdataset (``000000001.jpg`` + ``000000001.cls`` -> one sample with fields ``jpg`` and ``cls``).
"""

from __future__ import annotations

import itertools
import json
import os
import re
from typing import Callable, Iterator, Sequence

import webdataset as wds
from webdataset.shardlists import expand_urls

from .decode import CorruptImageError

IMAGE_FIELDS = ("jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff", "ppm", "pgm", "pbm", "jfif", "img")


class ShardError(RuntimeError):
    """A shard that cannot be opened or read as a tar file."""

    def __str__(self) -> str:  # webdataset appends the stream and URL to ``args`` on the way out
        return str(self.args[0]) if self.args else ""


def is_remote(url: str) -> bool:
    """True for URLs webdataset opens through a pipe or a network client (``pipe:``, ``s3://``, ``http://``, ...)."""
    return bool(re.match(r"^[a-z][a-z0-9+]*:", url)) and not url.startswith("file:")


def expand_shards(spec: str | Sequence[str]) -> list[str]:
    """Shard URLs from an index JSON written by ``make_shards`` (``/d/train.json``: exactly the shards it lists, no
    pattern to get right), a brace pattern (``/d/train-{000000..001281}.tar``), or a list of them."""
    specs = [spec] if isinstance(spec, str) else list(spec)
    urls: list[str] = []
    for item in specs:
        item = str(item)
        if item.endswith(".json") and not is_remote(item):
            directory = os.path.dirname(item)
            urls.extend(os.path.join(directory, shard["name"]) for shard in read_index(item)["shards"])
        else:
            urls.extend(expand_urls(item))
    return urls


def missing_local_shards(urls: Sequence[str]) -> list[str]:
    """Local shard paths that do not exist (remote URLs cannot be checked up front and are never listed)."""
    return [url for url in urls if not is_remote(url) and not os.path.isfile(url.removeprefix("file:"))]


def default_index_path(spec: str | Sequence[str]) -> str | None:
    """Where ``make_shards`` put the index of these shards: ``<dir>/<prefix>.json`` for ``<dir>/<prefix>-{..}.tar``
    (an index given as the spec is its own index)."""
    first = spec if isinstance(spec, str) else (spec[0] if len(spec) else "")
    if not first:
        return None
    if str(first).endswith(".json"):
        return str(first)
    directory, name = os.path.split(str(first))
    prefix = re.split(r"[{]|-?\d{4,}\.tar$", name)[0].rstrip("-_.")
    return os.path.join(directory, f"{prefix}.json") if prefix else None


def read_index(path: str) -> dict:
    """The JSON index written by ``make_shards`` (class names, counts per shard, total)."""
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def _raise_shard_error(url: str) -> Callable[[Exception], bool]:
    """A webdataset exception handler that turns any error while reading ``url`` into one :class:`ShardError`."""

    def handler(error: Exception) -> bool:
        if isinstance(error, ShardError):  # webdataset's outer stages hand an inner stage's error on again
            raise error
        detail = error.strerror if isinstance(error, OSError) and error.strerror else (error.args or ("",))[0]
        raise ShardError(f"cannot read shard {url} ({type(error).__name__}: {detail}): check the path, or "
                         "re-create it with make_shards.") from error

    return handler


def iter_shard(url: str) -> Iterator[dict]:
    """Samples of one shard in stored order: dicts with ``__key__``, ``__url__`` and one bytes entry per field.

    webdataset's ``tarfile_samples`` opens (``gopen``), reads and groups the members; a shard that cannot be opened
    or is not a readable tar raises :class:`ShardError` naming it (a bad shard is a broken data set, not a sample to
    skip: skipping it would silently shrink the epoch).
    """
    return wds.tarfile_samples([{"url": url}], handler=_raise_shard_error(url))


def encoded_bytes(sample: dict, fields: Sequence[str], kind: str) -> bytes:
    """The encoded payload of a sample: its first field among `fields` (the image or video extensions);
    :class:`CorruptImageError` naming the sample's fields when it has none."""
    for field in fields:
        if field in sample:
            return sample[field]
    present = sorted(key for key in sample if not key.startswith("__"))
    raise CorruptImageError(f"sample has no {kind} field (fields: {present})")


def image_bytes(sample: dict) -> bytes:
    """The encoded image of a sample (first known image field)."""
    return encoded_bytes(sample, IMAGE_FIELDS, "image")


def has_label(sample: dict) -> bool:
    return "cls" in sample


def sample_label(sample: dict) -> int:
    """The class index stored in a sample's ``.cls`` field; -1 when it has none (unlabeled)."""
    return int(sample["cls"]) if "cls" in sample else -1


def sample_name(sample: dict) -> str:
    return f"{sample.get('__url__', '?')}:{sample.get('__key__', '?')}"


def read_segments(segments: Sequence[tuple[str, int, int | None]]) -> Iterator[dict]:
    """Samples ``start <= n < stop`` of each (shard, start, stop) segment, in order."""
    for url, start, stop in segments:
        yield from itertools.islice(iter_shard(url), start, stop)
