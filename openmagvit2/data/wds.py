"""``data=imagenet_wds`` and ``data=video_wds``: streaming WebDataset tar shards (as written by ``python -m
openmagvit2.data.make_shards`` and ``make_video_shards``).

The stream below knows shards, readers, shuffling and resume; what one sample becomes is a :class:`SampleDecoder`
passed in: :class:`ImageDecoder` (``decode_image`` + the image transforms) for image shards,
``video_clips.ClipDecoder`` (``decode_clip`` + the clip resize and crop) for video shards. Workers ship uint8
(``b 3 h w`` images, ``b 3 t h w`` clips); the main process maps to [-1, 1].

Training stream: one ``wds.DataPipeline`` per rank and loader worker ("reader"):

1. Shard order: a permutation of all shards drawn from (seed, epoch) (``data.shard_shuffle``).
2. Balanced split (custom stage): with R ranks and W workers there are R x W reader slots. With the index's
   per-shard counts, the epoch's sequence of samples (shards in that order) is cut into R x W equal runs and slot
   ``rank * W + reader`` reads run number ``slot`` (starting and ending mid-shard where needed), so each sample is
   seen once per epoch and every rank gets the same number of batches without resampling. Without counts, whole
   shards are dealt round-robin (``order[slot::R*W]``). Tar reading is webdataset's ``tarfile_samples``.
3. ``wds.shuffle`` with a buffer of ``data.shuffle_buffer`` *encoded* samples, driven by a ``random.Random`` seeded
   from (seed, epoch, rank, reader), drained at the end of the run. A reader left short (unusable samples,
   rounding) re-reads its run in a new order for the few samples it still owes.
4. Replay (custom stage, resume only): ``islice`` past the samples already consumed, before any decoding.
5. The decoder's ``train`` (robust decode, see ``decode.py``; resize short side, random crop (+ flip); for clips a
   random start first), its randomness from (seed, epoch, rank, reader, sample number). Unusable samples (an
   ``UnusableImageError``: corrupt, too large, a video too short, ...) are passed over and reported with the next
   batch.
6. ``wds.batched(batch_size, partial=False)`` inside the worker, and ``.with_epoch(n)`` for this reader's share of
   the epoch's batches.

webdataset's ``split_by_node``/``split_by_worker`` are not used for training: they read the rank from the
environment and the slot from the worker id, while after a resume worker ``p`` plays reader
``(p + position) % W`` (see ``_TrainStream``), and the mid-shard balanced split has no webdataset equivalent.

Epochs have a fixed size: ``epoch_size = total // (world_size * batch_size)`` batches on every rank (``total`` from
the shards' index JSON or ``data.epoch_samples``), so DDP ranks always stay in step.

Resume guarantee: every batch carries the number of encoded samples its reader has pulled from its stream. The
state dict stores that offset per reader, and a resumed reader replays its stream up to the offset *without
decoding* (reading tar bytes only) and then continues. With the same seed, world size, ``num_workers``, batch size
and shards, the resumed run sees exactly the batches of an uninterrupted one; the cost is re-reading (not decoding)
the part of the epoch already consumed. If those settings changed, each reader skips the same *fraction* of its
stream instead (approximate: a few samples may repeat or be missed) and a warning says so.

Validation stream: shards are dealt to ranks in contiguous blocks and to workers by ``wds.split_by_worker``, read in
order, no shuffle, the decoder's ``val`` (centre crops); every sample is seen exactly once across ranks.
``max_images`` keeps the first samples of every shard (spread evenly over the shards), so an in-training evaluation
reads only shard prefixes. Two options serve the video reference protocol: ``crop_seed`` (seeded random crops per
(shard, position, copy) instead of the centre) and ``copies`` (extra copies of given samples, decoded again each).
"""

from __future__ import annotations

import functools
import itertools
import random
from dataclasses import dataclass
from typing import ClassVar, Iterable, Iterator, Mapping, Protocol

import numpy as np
import torch
import webdataset as wds
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from .decode import ImageLimits, UnusableImageError, decode_image
from .loaders import (MAX_CONSECUTIVE_SKIPS, CountedValPass, DataError, ResumableLoader, SkipPolicy, Skips,
                      collate_val, describe_counts)
from .shards import image_bytes, iter_shard, read_segments, sample_label, sample_name
from .transforms import Stream, sample_rng, train_transform, val_transform

NUMBER = "__number__"  # sample field added by the stream: 1-based count of encoded samples this reader has pulled
SHARD, POSITION = "__shard__", "__position__"  # val sample fields added by the stream: shard number, place in it


class SampleDecoder(Protocol):
    """What one encoded shard sample becomes: a uint8 tensor (an image ``3 h w``, a clip ``3 t h w``).

    Both methods raise an ``UnusableImageError`` for a sample to skip (counted under its ``counter``). ``converter``
    is the command that writes these shards, named in the errors that ask for new ones."""

    converter: ClassVar[str]

    def train(self, sample: dict, rng: np.random.Generator) -> torch.Tensor:
        """The training item, every random choice drawn from ``rng``."""

    def val(self, sample: dict, rng: np.random.Generator | None = None) -> torch.Tensor:
        """The evaluation item: deterministic (centre) without ``rng``, seeded random crops with it."""


@dataclass(frozen=True)
class ImageDecoder:
    """Image shards: ``decode_image`` and the image transforms (uint8 ``3 size size``); ``draft``: training only."""

    size: int
    hflip: bool = False
    draft: bool = False
    limits: ImageLimits = ImageLimits()
    converter: ClassVar[str] = "make_shards"

    def train(self, sample: dict, rng: np.random.Generator) -> torch.Tensor:
        image = decode_image(image_bytes(sample), self.size if self.draft else None, self.limits)
        return train_transform(image, self.size, rng, self.hflip)

    def val(self, sample: dict, rng: np.random.Generator | None = None) -> torch.Tensor:
        image = decode_image(image_bytes(sample), limits=self.limits)
        return val_transform(image, self.size) if rng is None else train_transform(image, self.size, rng, False)


def _reader_slot() -> tuple[int, int]:
    info = get_worker_info()
    return (0, 1) if info is None else (info.id, info.num_workers)


def reader_segments(urls: list[str], counts: list[int] | None, order: np.ndarray, slot: int,
                    slots: int) -> list[tuple[str, int, int | None]]:
    """The (shard, first sample, end sample) pieces reader ``slot`` of ``slots`` reads, shards taken in ``order``.

    With per-shard counts the sequence is cut into ``slots`` equal runs of samples, so every reader holds as many
    samples as it must deliver and each sample is seen once per epoch (up to a batch of slack per reader). Without
    counts, whole shards are dealt round-robin.
    """
    if counts is None:
        return [(urls[i], 0, None) for i in order[slot::slots]]
    starts = np.concatenate([[0], np.cumsum([counts[i] for i in order])]).astype(np.int64)
    low, high = slot * int(starts[-1]) // slots, (slot + 1) * int(starts[-1]) // slots
    segments = []
    for position, shard in enumerate(order):
        begin, end = max(low, int(starts[position])), min(high, int(starts[position + 1]))
        if begin < end:
            segments.append((urls[shard], begin - int(starts[position]), end - int(starts[position])))
    return segments


def _collate_train(samples: list[dict]) -> tuple[torch.Tensor, dict]:
    skips = Skips()
    for sample in samples:
        skips.merge(sample["skips"])
    meta = {"pulled": samples[-1][NUMBER], "skips": skips,
            "missing_label": sum(0 if sample["label"] >= 0 else 1 for sample in samples),
            "labels": torch.tensor([sample["label"] for sample in samples], dtype=torch.int64)}
    return torch.stack([sample["item"] for sample in samples]), meta


class _TrainStream(IterableDataset):
    """Worker side of one epoch of the training stream: (uint8 ``b 3 h w`` or ``b 3 t h w``, meta) for this reader's
    batches."""

    def __init__(self, urls: list[str], counts: list[int] | None, *, decoder: SampleDecoder, shuffle_buffer: int,
                 shard_shuffle: bool, seed: int, rank: int, world_size: int, num_readers: int, batch_size: int,
                 epoch: int, start_batch: int, epoch_size: int, offsets: list[int]):
        self.urls = urls
        self.counts = counts
        self.decoder = decoder
        self.buffer_size = max(1, shuffle_buffer)
        self.shard_shuffle = shard_shuffle
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.num_readers = num_readers
        self.batch_size = batch_size
        self.epoch = epoch
        self.start_batch = start_batch
        self.epoch_size = epoch_size
        self.offsets = offsets

    def reader_segments(self, reader: int) -> list[tuple[str, int, int | None]]:
        """This epoch's (shard, first sample, end sample) pieces for this rank's ``reader``."""
        order = (sample_rng(self.seed, Stream.SHARD_ORDER, self.epoch).permutation(len(self.urls))
                 if self.shard_shuffle else np.arange(len(self.urls)))
        return reader_segments(self.urls, self.counts, order, self.rank * self.num_readers + reader,
                               self.world_size * self.num_readers)

    def encoded_samples(self, reader: int) -> Iterator[dict]:
        """Endless, numbered stream of encoded samples for ``reader`` (a pure function of seed/epoch/rank/reader).

        Round 0 reads the reader's segments once through the shuffle buffer (drained at the end); later rounds,
        only reached when unusable samples or rounding leave the reader short, re-read them in a new order.
        """
        segments = self.reader_segments(reader)
        seed = int(sample_rng(self.seed, Stream.SHUFFLE_BUFFER, self.epoch, self.rank, reader).integers(1 << 62))
        shuffle = wds.shuffle(self.buffer_size, initial=self.buffer_size, rng=random.Random(seed))
        number = 0
        for round_index in itertools.count():
            if round_index > 0:
                permutation = sample_rng(self.seed, Stream.SHARD_ORDER, self.epoch, self.rank, reader, round_index)
                segments = [segments[i] for i in permutation.permutation(len(segments))]
            first = number
            for sample in shuffle(read_segments(segments)):
                number += 1
                yield {**sample, NUMBER: number}
            if number == first:
                raise DataError(f"data loader reader {reader} of rank {self.rank} has no samples to read: use fewer "
                                "data.num_workers or more data.")

    def decoded(self, reader: int, samples: Iterable[dict]) -> Iterator[dict]:
        """The decoder's training items; unusable samples are dropped and reported (exact counts) with the next usable
        one."""
        skips, consecutive = Skips(), 0
        for sample in samples:
            rng = sample_rng(self.seed, Stream.STREAM_CROP, self.epoch, self.rank, reader, sample[NUMBER])
            try:
                item = self.decoder.train(sample, rng)
            except UnusableImageError as error:
                skips.add(error, sample_name(sample))
                consecutive += 1
                if consecutive >= MAX_CONSECUTIVE_SKIPS:
                    raise DataError(f"{consecutive} samples in a row were unusable ({describe_counts(skips.counts)}; "
                                    f"last: {sample_name(sample)}: {error}): the shards look broken; re-create "
                                    f"them with {self.decoder.converter}.") from error
                continue
            consecutive = 0
            yield {"item": item, NUMBER: sample[NUMBER], "label": sample_label(sample), "skips": skips}
            skips = Skips()

    def __iter__(self) -> Iterator[tuple[torch.Tensor, dict]]:
        worker, workers = _reader_slot()
        if workers != self.num_readers:
            raise RuntimeError(f"expected {self.num_readers} readers, got {workers} workers")
        # Batch k of the epoch belongs to reader k % num_readers; the DataLoader asks worker 0 first, so after
        # ``start_batch`` batches physical worker p plays reader (p + start_batch) % num_readers.
        reader = (worker + self.start_batch) % self.num_readers
        batches = range(self.start_batch + worker, self.epoch_size, self.num_readers)
        if len(batches) == 0:
            return
        pipeline = wds.DataPipeline(
            functools.partial(self.encoded_samples, reader),
            lambda samples: itertools.islice(samples, self.offsets[reader], None),  # resume: read, do not decode
            functools.partial(self.decoded, reader),
            wds.batched(self.batch_size, collation_fn=_collate_train, partial=False),
        ).with_epoch(len(batches))
        for batch, (images, meta) in zip(batches, pipeline):
            yield images, {**meta, "batch": batch, "reader": reader}


def _identity(item):
    return item


class WdsTrainLoader(ResumableLoader):
    """Iterates forever over float batches in [-1, 1] from WebDataset shards: ``b 3 h w`` images or ``b 3 t h w``
    clips, as ``decoder`` makes them (see the module docstring); ``name`` is the ``data=`` source, for the logs."""

    exact_keys = ("seed", "world_size", "batch_size", "num_readers", "num_shards")

    def __init__(self, urls: list[str], *, decoder: SampleDecoder, counts: list[int] | None, total_samples: int,
                 shuffle_buffer: int, shard_shuffle: bool, batch_size: int, rank: int, world_size: int, seed: int,
                 num_workers: int, name: str, where: str = "data.shards",
                 policy: SkipPolicy = SkipPolicy(), pin_memory: bool = False, labels: bool = False):
        self.num_readers = max(1, num_workers)
        slots = world_size * self.num_readers
        if counts is None and len(urls) < slots:
            raise ValueError(f"data.shards has {len(urls)} shards, fewer than world_size x num_workers = {slots} "
                             f"readers, and no index with per-shard counts: write smaller shards ({decoder.converter} "
                             "--shard-size), provide the index (data.shards_index), or lower data.num_workers.")
        if counts is not None and sum(counts) < slots:
            raise ValueError(f"the shards hold {sum(counts)} samples, fewer than world_size x num_workers = {slots} "
                             "readers: lower data.num_workers.")
        epoch_size = total_samples // (world_size * batch_size)
        if epoch_size == 0:
            raise ValueError(f"the shards hold {total_samples} samples, fewer than world_size x batch_size = "
                             f"{world_size * batch_size}: use more data or a smaller train.batch_size.")
        super().__init__(name=name, where=where, batch_size=batch_size, rank=rank, world_size=world_size,
                         seed=seed, epoch_size=epoch_size, policy=policy, pin_memory=pin_memory)
        self.urls = urls
        self.counts = counts
        self.num_shards = len(urls)
        self.num_workers = num_workers
        self.settings = dict(decoder=decoder, shuffle_buffer=shuffle_buffer, shard_shuffle=shard_shuffle)
        self.offsets = [0] * self.num_readers
        self.counters["missing_label"] = 0
        self.labels = labels

    def _rest_of_epoch(self) -> Iterator[tuple[torch.Tensor, Skips]]:
        stream = _TrainStream(self.urls, self.counts, seed=self.seed, rank=self.rank, world_size=self.world_size,
                              num_readers=self.num_readers, batch_size=self.batch_size, epoch=self.epoch,
                              start_batch=self.position, epoch_size=self.epoch_size, offsets=list(self.offsets),
                              **self.settings)
        # A new DataLoader (and new workers) per epoch: the stream carries (epoch, position, offsets) by value, which
        # persistent workers would not see change. Worker start-up is seconds against an epoch of about an hour.
        loader = DataLoader(stream, batch_size=None, num_workers=self.num_workers, collate_fn=_identity,
                            prefetch_factor=2 if self.num_workers > 0 else None)
        for images, meta in loader:
            if meta["batch"] != self.position:
                raise RuntimeError(f"data stream out of order: got batch {meta['batch']}, expected {self.position}")
            self.offsets[meta["reader"]] = meta["pulled"]
            self.counters["missing_label"] += meta["missing_label"]
            if self.labels and meta["missing_label"]:
                raise DataError(f"{self.where}: a sample without a label (.cls) on rank {self.rank} while training "
                                f"with labels: re-create the shards from class folders "
                                f"({self.settings['decoder'].converter}).")
            yield ((images, meta["labels"]) if self.labels else images), meta["skips"]
        self.offsets = [0] * self.num_readers

    def state_dict(self) -> dict:
        """The base's state plus the encoded samples pulled by each reader."""
        return {**super().state_dict(), "reader_offsets": list(self.offsets)}

    def _restore_stream(self, state: dict, exact: bool) -> None:
        if self.position == 0:
            self.offsets = [0] * self.num_readers
        elif exact:
            self.offsets = [int(offset) for offset in state["reader_offsets"]]
        else:  # each reader skips the same fraction of its stream: batches it delivered x batch size
            self.offsets = [len(range(reader, self.position, self.num_readers)) * self.batch_size
                            for reader in range(self.num_readers)]


def _val_samples(shards: Iterable[tuple[int, str, int | None]]) -> Iterator[dict]:
    for shard, url, quota in shards:
        for position, sample in enumerate(itertools.islice(iter_shard(url), quota)):
            yield {**sample, SHARD: shard, POSITION: position}


def _val_decoded(samples: Iterable[dict], decoder: SampleDecoder, crop_seed: int | None,
                 copies: Mapping[tuple[int, int], int]) -> Iterator[tuple[torch.Tensor | None, int, Skips]]:
    """The decoder's val items in order (each sample ``1 + copies`` times); unusable ones are reported with the next
    item (or a final item-less one)."""
    skips = Skips()
    for sample in samples:
        key = (sample[SHARD], sample[POSITION])
        for copy in range(1 + copies.get(key, 0)):
            rng = None if crop_seed is None else sample_rng(crop_seed, Stream.VAL_CROP, *key, copy)
            try:
                item = decoder.val(sample, rng)
            except UnusableImageError as error:
                skips.add(error, sample_name(sample))
                continue
            yield item, sample_label(sample), skips
            skips = Skips()
    if skips.total:
        yield None, -1, skips


class WdsValLoader(CountedValPass):
    """Iterates once over this rank's val shards (contiguous block of the ordered shard list): float ``b 3 h w``
    images or ``b 3 t h w`` clips, as ``decoder`` makes them.

    ``crop_seed``: seeded random crops, one per (shard, position, copy), instead of the centre; ``copies``: extra
    copies of ``(shard number, position)`` samples (both for the video reference protocol; see the module
    docstring)."""

    def __init__(self, urls: list[str], *, decoder: SampleDecoder, batch_size: int, rank: int, world_size: int,
                 num_workers: int, max_images: int | None, name: str, pin_memory: bool = False,
                 labels: bool = False, crop_seed: int | None = None,
                 copies: Mapping[tuple[int, int], int] | None = None):
        self.name = name
        self.labels = labels
        quotas: list[int | None] = [None] * len(urls)
        if max_images is not None:
            if max_images <= 0:
                raise ValueError(f"max_images must be positive or None, got {max_images}.")
            spread = (np.arange(len(urls) + 1) * max_images) // len(urls)
            quotas = [int(b - a) for a, b in zip(spread[:-1], spread[1:])]
        blocks = np.array_split(np.arange(len(urls)), world_size)[rank]
        self.shards = [(int(i), urls[i], quotas[i]) for i in blocks if quotas[i] != 0]
        self.decoder = decoder
        self.crop_seed = crop_seed
        mine = set(blocks.tolist())
        self.copies = {key: count for key, count in (copies or {}).items() if key[0] in mine}
        self.batch_size = batch_size
        self.pin_memory = pin_memory
        self.num_workers = min(num_workers, len(self.shards))

    def __iter__(self) -> Iterator[torch.Tensor]:
        if not self.shards:
            yield from self._counted([])
            return
        pipeline = wds.DataPipeline(
            functools.partial(iter, self.shards),  # (a list argument would be taken as a list of stages)
            wds.split_by_worker,
            _val_samples,
            functools.partial(_val_decoded, decoder=self.decoder, crop_seed=self.crop_seed, copies=self.copies),
            wds.batched(self.batch_size, collation_fn=collate_val, partial=True),
        )
        loader = DataLoader(pipeline, batch_size=None, num_workers=self.num_workers, collate_fn=_identity)
        yield from self._counted(loader)
