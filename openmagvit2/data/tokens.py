"""``data=tokens``: the token shards written by ``python -m openmagvit2.tokenize``, for the Stage II generator.

Shard format (WebDataset tar, one per chunk of images, ``<split>-NNNNNN.tar``): one sample per stored *variant* of
an image (centre crop, its mirror, or one of ten crops), key ``<image id, 9 digits>_<variant, 2 digits>``, fields
``tokens.npy`` (int32 ``n``: the ``grid_size^2`` token indices in raster order, ``codebook_bits`` bits each, packed
as the index's ``bit_order`` says) and ``cls`` (the class index as text). Next to them, ``<split>.json`` (the index)
names the tokenizer and its sha256, the grid, the crops, and the samples per shard; and the same samples as two
arrays, ``<split>.tokens.npy`` (int32 ``S n``) and ``<split>.rows.npy`` (int64 ``S 3``: image id, variant, label),
sorted by (image, variant).

Why arrays: the data is tiny next to the images (ImageNet: 1.28M x 256 x 4 B = 1.3 GB; ten crops 13 GB), and random
access into arrays makes the epoch a pure function of (seed, epoch): exact resume needs only (epoch, position), with
no stream replay and no workers. The loaders memory-map the two ``.npy`` files (instant start, and the page cache
is shared by the ranks of a node instead of one copy per rank); without them (older exports, or shards copied
without the arrays) every rank reads the tar shards into memory instead.

Training: each epoch is a permutation of the *images* drawn from (seed, epoch), dealt round-robin to the ranks
(the remainder dropped, as the image loaders do); each image contributes one of its stored variants, drawn from
(seed, epoch, image) (one array of draws per epoch, indexed by the image), so an image is seen once per epoch and
ten-crop data does not make an epoch ten times longer. Validation: every stored sample once, ordered, contiguous
blocks per rank.
"""

from __future__ import annotations

import io
import json
import os
import tarfile
from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np
import torch

from .loaders import ResumableLoader, SkipPolicy, Skips, val_subset
from .transforms import Stream, sample_rng

TOKEN_INDEX_FORMAT = "openmagvit2-tokens"
TOKEN_INDEX_VERSION = 1
# First keys of this source's sample_rng streams (distinct from the image loaders' Stream values).
TOKEN_ORDER = 21  # the permutation of an epoch's images, from (seed, epoch)
TOKEN_VARIANT = 22  # the stored variant each image contributes to an epoch, from (seed, epoch)[image]


def sample_key(image: int, variant: int) -> str:
    """The WebDataset key of one stored variant: ``000000042_03``."""
    return f"{image:09d}_{variant:02d}"


def _npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def encode_token_shard(rows: Sequence[tuple[int, int, int, np.ndarray]], stream) -> None:
    """Write ``(image id, variant, label, int32 tokens n)`` rows as a WebDataset tar into the open binary ``stream``."""
    import webdataset as wds

    writer = wds.TarWriter(stream, encoder=False, mtime=0)
    for image, variant, label, tokens in rows:
        writer.write({"__key__": sample_key(image, variant), "tokens.npy": _npy_bytes(np.asarray(tokens, np.int32)),
                      "cls": str(int(label)).encode("ascii")})
    writer.close()


@dataclass
class TokenRows:
    """Samples of token shards as arrays: ``tokens`` int32 ``S n``, ``images``/``variants``/``labels`` int64 ``S``."""

    tokens: np.ndarray
    images: np.ndarray
    variants: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.images)

    @staticmethod
    def concatenate(parts: Sequence[TokenRows], num_tokens: int) -> TokenRows:
        if not parts:
            empty = np.zeros(0, np.int64)
            return TokenRows(np.zeros((0, num_tokens), np.int32), empty, empty.copy(), empty.copy())
        return TokenRows(*(np.concatenate([getattr(p, name) for p in parts])
                           for name in ("tokens", "images", "variants", "labels")))

    def batch(self, picked: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """(indices ``b n`` int64, labels ``b`` int64) of rows ``picked`` (a copy, also out of a memory map)."""
        return (torch.from_numpy(np.asarray(self.tokens[picked], dtype=np.int64)),
                torch.from_numpy(np.asarray(self.labels[picked], dtype=np.int64)))

    def sorted(self) -> TokenRows:
        """Rows ordered by (image id, variant): an image's variants are contiguous."""
        order = np.lexsort((self.variants, self.images))
        return TokenRows(self.tokens[order], self.images[order], self.variants[order], self.labels[order])


def read_token_shard(path: str) -> TokenRows:
    """All samples of one token shard (stored order), read with ``tarfile`` (no per-sample pipeline: it is tiny)."""
    fields: dict[str, dict[str, bytes]] = {}
    try:
        with tarfile.open(path) as archive:
            for member in archive:
                if not member.isfile():
                    continue
                key, _, field = os.path.basename(member.name).partition(".")
                fields.setdefault(key, {})[field] = archive.extractfile(member).read()
    except (OSError, tarfile.TarError) as error:
        raise ValueError(f"cannot read token shard {path} ({type(error).__name__}: {error}): re-run "
                         "`python -m openmagvit2.tokenize` (it rewrites missing shards).") from error
    keys = sorted(fields)
    images = np.array([int(key.split("_")[0]) for key in keys], np.int64)
    variants = np.array([int(key.split("_")[1]) for key in keys], np.int64)
    labels = np.array([int(fields[key]["cls"]) for key in keys], np.int64)
    tokens = [np.load(io.BytesIO(fields[key]["tokens.npy"]), allow_pickle=False) for key in keys]
    width = tokens[0].shape[0] if tokens else 0
    return TokenRows(np.stack(tokens) if tokens else np.zeros((0, width), np.int32), images, variants, labels)


def read_token_index(path: str, key: str = "data.train_index") -> dict:
    """The index JSON of a tokenized split; ``ValueError`` (one line naming ``key``) when it is missing or foreign."""
    if not os.path.isfile(path):
        raise ValueError(f"{key}={path!r} does not exist: tokenize the data first (python -m openmagvit2.tokenize "
                         "ckpt=<tokenizer> data=<source> out=<dir>) and set data.root to <dir>.")
    try:
        with open(path, encoding="utf-8") as handle:
            index = json.load(handle)
    except (OSError, ValueError) as error:
        raise ValueError(f"{key}={path!r} is not readable JSON ({error}): re-run the tokenizer.") from None
    if not isinstance(index, dict) or index.get("format") != TOKEN_INDEX_FORMAT:
        raise ValueError(f"{key}={path!r} is not a token index (format {TOKEN_INDEX_FORMAT!r}): point it at the "
                         "<split>.json written by python -m openmagvit2.tokenize.")
    return index


@dataclass
class TokenSplit:
    """A tokenized split in memory: its index and its rows (sorted by image, then variant)."""

    path: str
    index: dict
    rows: TokenRows

    @property
    def grid_size(self) -> int:
        return int(self.index["grid_size"])

    @property
    def num_classes(self) -> int:
        return int(self.index["num_classes"])

    @property
    def codebook_bits(self) -> int:
        return int(self.index["tokenizer"]["codebook_bits"])


def array_names(split: str) -> tuple[str, str]:
    """File names of a split's memory-mappable arrays: (tokens ``S n`` int32, rows ``S 3`` int64)."""
    return f"{split}.tokens.npy", f"{split}.rows.npy"


def save_arrays(rows: TokenRows, folder: str, split: str) -> None:
    """Write the sorted rows of a split as its two ``.npy`` arrays (atomically)."""
    from openmagvit2.io.atomic import atomic_write

    tokens_name, rows_name = array_names(split)
    with atomic_write(os.path.join(folder, tokens_name)) as handle:
        np.save(handle, np.ascontiguousarray(rows.tokens, np.int32))
    with atomic_write(os.path.join(folder, rows_name)) as handle:
        np.save(handle, np.stack([rows.images, rows.variants, rows.labels], axis=1).astype(np.int64))


def _mapped_rows(index: dict, folder: str) -> TokenRows | None:
    """The split's arrays, memory-mapped, when the index names them and they hold its samples; else None."""
    names = index.get("arrays")
    if not names:
        return None
    paths = [os.path.join(folder, names["tokens"]), os.path.join(folder, names["rows"])]
    if not all(os.path.isfile(path) for path in paths):
        return None
    tokens, rows = (np.load(path, mmap_mode="r", allow_pickle=False) for path in paths)
    if len(tokens) != int(index["samples"]) or len(rows) != len(tokens):
        return None
    return TokenRows(tokens, np.asarray(rows[:, 0]), np.asarray(rows[:, 1]), np.asarray(rows[:, 2]))


def read_token_split(path: str, key: str = "data.train_index") -> TokenSplit:
    """Read the index at ``path`` and the samples: the memory-mapped arrays when present, else every shard it lists
    (next to it; the counts must match the index)."""
    index = read_token_index(path, key)
    folder = os.path.dirname(os.path.abspath(path))
    mapped = _mapped_rows(index, folder)
    if mapped is not None:
        return TokenSplit(path, index, mapped)
    num_tokens = int(index["grid_size"]) ** 2
    parts = []
    for shard in index["shards"]:
        shard_path = os.path.join(folder, shard["name"])
        if not os.path.isfile(shard_path):
            raise ValueError(f"{key}={path!r} lists {shard['name']}, which is missing next to it: re-run "
                             "`python -m openmagvit2.tokenize` with the same settings (it writes missing shards).")
        rows = read_token_shard(shard_path)
        if len(rows) != int(shard["samples"]) or (len(rows) and rows.tokens.shape[1] != num_tokens):
            raise ValueError(f"token shard {shard_path} holds {len(rows)} samples of {rows.tokens.shape[1:]} tokens, "
                             f"the index says {shard['samples']} of {num_tokens}: re-create it (delete it and re-run "
                             "the tokenizer).")
        parts.append(rows)
    return TokenSplit(path, index, TokenRows.concatenate(parts, num_tokens).sorted())


class _SplitInfo:
    """Attributes the trainer reads off a token loader: grid, classes, codebook bits, the index."""

    split: TokenSplit

    @property
    def grid_size(self) -> int:
        return self.split.grid_size

    @property
    def num_tokens(self) -> int:
        return self.split.grid_size ** 2

    @property
    def num_classes(self) -> int:
        return self.split.num_classes

    @property
    def codebook_bits(self) -> int:
        return self.split.codebook_bits

    @property
    def index(self) -> dict:
        return self.split.index


class TokenTrainLoader(_SplitInfo, ResumableLoader):
    """Endless ``(indices b n int64, labels b int64)`` batches; one stored variant per image per epoch (see module).

    ``epoch_size = (images // world_size) // batch_size`` on every rank; exactly resumable through the base's
    ``state_dict()`` (epoch, position), since a batch is a pure function of (seed, epoch, position, rank).
    """

    exact_keys = ("seed", "world_size", "batch_size", "num_images")

    def __init__(self, split: TokenSplit, *, batch_size: int, rank: int, world_size: int, seed: int,
                 pin_memory: bool = False):
        rows = split.rows
        self.image_ids, self.first_row, self.variant_counts = np.unique(rows.images, return_index=True,
                                                                        return_counts=True)
        self.num_images = len(self.image_ids)
        self.per_rank = self.num_images // world_size
        epoch_size = self.per_rank // batch_size
        if epoch_size == 0:
            raise ValueError(f"data=tokens has {self.num_images} images ({split.path}), fewer than world_size x "
                             f"batch_size = {world_size * batch_size}: tokenize more images or lower the batch size.")
        super().__init__(name="tokens", where=f"data.train_index={split.path!r}", batch_size=batch_size, rank=rank,
                         world_size=world_size, seed=seed, epoch_size=epoch_size, policy=SkipPolicy(),
                         pin_memory=pin_memory)
        self.split = split

    def epoch_rows(self, epoch: int) -> np.ndarray:
        """This rank's rows of ``epoch``, ``epoch_size x batch_size`` of them, in batch order."""
        order = sample_rng(self.seed, TOKEN_ORDER, epoch).permutation(self.num_images)
        variant = sample_rng(self.seed, TOKEN_VARIANT, epoch).integers(0, self.variant_counts)  # one per image
        mine = order[: self.per_rank * self.world_size][self.rank :: self.world_size][: self.epoch_size *
                                                                                       self.batch_size]
        return self.first_row[mine] + variant[mine]

    def _rest_of_epoch(self) -> Iterator[tuple[tuple[torch.Tensor, torch.Tensor], Skips]]:
        rows = self.epoch_rows(self.epoch)
        for batch in range(self.position, self.epoch_size):
            yield self.split.rows.batch(rows[batch * self.batch_size : (batch + 1) * self.batch_size]), Skips()

    def _output(self, indices: torch.Tensor) -> torch.Tensor:
        return indices.pin_memory() if self.pin_memory else indices


class TokenValLoader(_SplitInfo):
    """One ordered pass over every stored sample (``(indices b n int64, labels b int64)``), each once across ranks.

    Ranks get contiguous blocks; ``max_images`` keeps that many evenly spaced samples. The last batch may be smaller.
    """

    name = "tokens"

    def __init__(self, split: TokenSplit, *, batch_size: int, rank: int, world_size: int,
                 max_images: int | None = None):
        self.split = split
        self.batch_size = batch_size
        self.rows = np.array_split(val_subset(len(split.rows), max_images), world_size)[rank]
        self.num_images = len(self.rows)

    def __len__(self) -> int:
        return -(-self.num_images // self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for start in range(0, self.num_images, self.batch_size):
            yield self.split.rows.batch(self.rows[start : start + self.batch_size])

    def stats(self) -> dict:
        return {"images": self.num_images}
