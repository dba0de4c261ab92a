"""Reading WebDataset shards: shard patterns, the index written by make_shards, tar iteration, shuffle buffer.

The I/O half of ``data=imagenet_wds`` (the loaders are in ``wds.py``). Opening goes through webdataset's ``gopen``,
so local paths, ``file:``, ``pipe:`` and ``s3://``/``http(s)://`` URLs all work; tar members are grouped into
samples by webdataset (``000000001.jpg`` + ``000000001.cls`` -> one sample with fields ``jpg`` and ``cls``).
"""

from __future__ import annotations

import json
import os
import random
import re
import tarfile
from typing import Iterator, Sequence

import webdataset as wds
from webdataset.shardlists import expand_urls
from webdataset.tariterators import group_by_keys, tar_file_iterator

from .decode import CorruptImageError

IMAGE_FIELDS = ("jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff", "ppm", "pgm", "pbm", "jfif", "img")


class ShardError(RuntimeError):
    """A shard that cannot be opened or read as a tar file."""


def is_remote(url: str) -> bool:
    """True for URLs webdataset opens through a pipe or a network client (``pipe:``, ``s3://``, ``http://``, ...)."""
    return bool(re.match(r"^[a-z][a-z0-9+]*:", url)) and not url.startswith("file:")


def expand_shards(spec: str | Sequence[str]) -> list[str]:
    """Shard URLs from a brace pattern (``/d/train-{000000..001281}.tar``) or a list of them."""
    specs = [spec] if isinstance(spec, str) else list(spec)
    urls: list[str] = []
    for item in specs:
        urls.extend(expand_urls(str(item)))
    return urls


def missing_local_shards(urls: Sequence[str]) -> list[str]:
    """Local shard paths that do not exist (remote URLs cannot be checked up front and are never listed)."""
    return [url for url in urls if not is_remote(url) and not os.path.isfile(url.removeprefix("file:"))]


def default_index_path(spec: str | Sequence[str]) -> str | None:
    """Where ``make_shards`` put the index of these shards: ``<dir>/<prefix>.json`` for ``<dir>/<prefix>-{..}.tar``."""
    first = spec if isinstance(spec, str) else (spec[0] if len(spec) else "")
    if not first:
        return None
    directory, name = os.path.split(str(first))
    prefix = re.split(r"[{]|-?\d{4,}\.tar$", name)[0].rstrip("-_.")
    return os.path.join(directory, f"{prefix}.json") if prefix else None


def read_index(path: str) -> dict:
    """The JSON index written by ``make_shards`` (class names, counts per shard, total)."""
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def iter_shard(url: str) -> Iterator[dict]:
    """Samples of one shard in stored order: dicts with ``__key__``, ``__url__`` and one bytes entry per field.

    Raises :class:`ShardError` naming the shard when it cannot be opened or is not a readable tar.
    """
    try:
        stream = wds.gopen(url, "rb")
    except Exception as error:  # webdataset raises many types (OSError, ValueError, subprocess errors)
        raise ShardError(f"cannot open shard {url}: {error}") from error
    try:
        files = ({**entry, "__url__": url} for entry in tar_file_iterator(stream))
        yield from group_by_keys(files)
    except (tarfile.TarError, OSError, EOFError, ValueError) as error:
        raise ShardError(f"shard {url} is not a readable tar file ({error}); re-create it with make_shards.") from error
    finally:
        stream.close()


def image_bytes(sample: dict) -> bytes:
    """The encoded image of a sample (first known image field); :class:`CorruptImageError` when there is none."""
    for field in IMAGE_FIELDS:
        if field in sample:
            return sample[field]
    fields = sorted(key for key in sample if not key.startswith("__"))
    raise CorruptImageError(f"sample has no image field (fields: {fields})")


def has_label(sample: dict) -> bool:
    return "cls" in sample


def sample_name(sample: dict) -> str:
    return f"{sample.get('__url__', '?')}:{sample.get('__key__', '?')}"


def read_segments(segments: Sequence[tuple[str, int, int | None]]) -> Iterator[dict]:
    """Samples ``start <= n < stop`` of each (shard, start, stop) segment, in order."""
    for url, start, stop in segments:
        for number, sample in enumerate(iter_shard(url)):
            if stop is not None and number >= stop:
                break
            if number >= start:
                yield sample


def shuffle_buffer(samples: Iterator[dict], size: int, rng: random.Random) -> Iterator[dict]:
    """Streaming shuffle: keep ``size`` samples, emit a random one per new sample, drain randomly at the end."""
    buffer: list[dict] = []
    for sample in samples:
        if len(buffer) < size:
            buffer.append(sample)
            continue
        slot = rng.randrange(size)
        buffer[slot], sample = sample, buffer[slot]
        yield sample
    rng.shuffle(buffer)
    yield from buffer
