"""``data=imagenet_wds``: streaming WebDataset tar shards (as written by ``python -m openmagvit2.data.make_shards``).

Training stream, per rank and per loader worker ("reader"):

1. Shard order: a permutation of all shards drawn from (seed, epoch) (``data.shard_shuffle``).
2. Splitting: with R ranks and W workers there are R x W reader slots. With the index's per-shard counts, the
   epoch's sequence of samples (shards in that order) is cut into R x W equal runs and slot ``rank * W + reader``
   reads run number ``slot`` (starting and ending mid-shard where needed), so each sample is seen once per epoch.
   Without counts, whole shards are dealt round-robin (``order[slot::R*W]``).
3. A shuffle buffer of ``data.shuffle_buffer`` *encoded* samples, driven by a generator seeded from
   (seed, epoch, rank, reader), drained at the end of the run. A reader left short (corrupt samples, rounding)
   re-reads its run in a new order for the few samples it still owes.
4. Decode (robustly, see ``decode.py``), resize short side, random crop (+ flip), crop randomness from
   (seed, epoch, rank, reader, sample number), batching inside the worker.

Epochs have a fixed size: ``epoch_size = total // (world_size * batch_size)`` batches on every rank (``total`` from
the shards' index JSON or ``data.epoch_samples``), so DDP ranks always stay in step. Corrupt samples are skipped
(the next one takes their place) and counted.

Resume guarantee: every batch carries the number of encoded samples its reader has pulled from its stream. The
state dict stores that offset per reader, and a resumed reader replays its stream up to the offset *without
decoding* (reading tar bytes only) and then continues. With the same seed, world size, ``num_workers`` and batch
size, the resumed run sees exactly the batches of an uninterrupted one; the cost is re-reading (not decoding) the
part of the epoch already consumed. If those settings changed, each reader skips the same *fraction* of its stream
instead (approximate: a few samples may repeat or be missed) and a warning says so.

Validation stream: shards are dealt to ranks in contiguous blocks and to workers round-robin, read in order, no
shuffle, centre crops; every image is seen exactly once across ranks. ``max_images`` keeps the first samples of
every shard (spread evenly over the shards), so an in-training evaluation reads only shard prefixes.
"""

from __future__ import annotations

import logging
import random
from typing import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from .decode import CorruptImageError, decode_image
from .loaders import MAX_LOGGED_FAILURES, CountedValPass
from .shards import has_label, image_bytes, iter_shard, read_segments, sample_name, shuffle_buffer
from .transforms import sample_rng, to_model_range, train_transform, val_transform

log = logging.getLogger(__name__)

STREAM_SHARDS = 11
STREAM_BUFFER = 12
STREAM_CROP = 13
MAX_CONSECUTIVE_FAILURES = 1000


def _reader_slot() -> tuple[int, int]:
    info = get_worker_info()
    return (0, 1) if info is None else (info.id, info.num_workers)


class _TrainStream(IterableDataset):
    """Worker side of the training stream; yields (uint8 ``b 3 h w``, meta) for its share of the epoch's batches."""

    def __init__(self, urls: list[str], counts: list[int] | None, *, image_size: int, hflip: bool, draft: bool,
                 shuffle_buffer: int, shard_shuffle: bool, seed: int, rank: int, world_size: int, num_readers: int,
                 batch_size: int, epoch: int, start_batch: int, epoch_size: int, offsets: list[int]):
        self.urls = urls
        self.counts = counts
        self.image_size = image_size
        self.hflip = hflip
        self.draft_size = image_size if draft else None
        self.buffer_size = shuffle_buffer
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
        """The (shard, first sample, end sample) pieces this rank's ``reader`` reads in this epoch.

        With per-shard counts (from the index) the epoch's shard sequence is cut into ``world_size x num_readers``
        equal runs of samples, so every reader holds as many samples as it must deliver and each sample is seen
        once per epoch (up to a batch of slack per reader). Without counts, whole shards are dealt round-robin.
        """
        count = len(self.urls)
        order = (sample_rng(self.seed, STREAM_SHARDS, self.epoch).permutation(count) if self.shard_shuffle
                 else np.arange(count))
        slots = self.world_size * self.num_readers
        slot = self.rank * self.num_readers + reader
        if self.counts is None:
            return [(self.urls[i], 0, None) for i in order[slot::slots]]
        sizes = np.array([self.counts[i] for i in order], dtype=np.int64)
        starts = np.concatenate([[0], np.cumsum(sizes)])
        low, high = slot * int(starts[-1]) // slots, (slot + 1) * int(starts[-1]) // slots
        segments = []
        for position, shard in enumerate(order):
            begin, end = max(low, int(starts[position])), min(high, int(starts[position + 1]))
            if begin < end:
                segments.append((self.urls[shard], begin - int(starts[position]), end - int(starts[position])))
        return segments

    def raw_samples(self, reader: int) -> Iterator[dict]:
        """Endless stream of encoded samples for ``reader`` (a pure function of seed/epoch/rank/reader).

        Round 0 reads the reader's segments once through the shuffle buffer (drained at the end); later rounds,
        only reached when corrupt samples or rounding leave the reader short, re-read them in a new order.
        """
        segments = self.reader_segments(reader)
        buffer_seed = int(sample_rng(self.seed, STREAM_BUFFER, self.epoch, self.rank, reader).integers(1 << 62))
        rng = random.Random(buffer_seed)
        for round_index in range(1 << 62):
            if round_index > 0:
                permutation = sample_rng(self.seed, STREAM_SHARDS, self.epoch, self.rank, reader, round_index)
                segments = [segments[i] for i in permutation.permutation(len(segments))]
            produced = 0
            for sample in shuffle_buffer(read_segments(segments), max(1, self.buffer_size), rng):
                produced += 1
                yield sample
            if produced == 0:
                raise RuntimeError(f"data loader reader {reader} of rank {self.rank} has no samples to read: use "
                                   "fewer data.num_workers or more data.")

    def __iter__(self) -> Iterator[tuple[torch.Tensor, dict]]:
        worker, workers = _reader_slot()
        if workers != self.num_readers:
            raise RuntimeError(f"expected {self.num_readers} readers, got {workers} workers")
        # Batch k of the epoch belongs to reader k % num_readers; the DataLoader asks worker 0 first, so after
        # ``start_batch`` batches physical worker p plays reader (p + start_batch) % num_readers.
        reader = (worker + self.start_batch) % self.num_readers
        first = self.start_batch + worker
        batches = range(first, self.epoch_size, self.num_readers)
        if len(batches) == 0:
            return
        stream = self.raw_samples(reader)
        pulled = 0
        for _ in range(self.offsets[reader]):  # fast-forward on resume: read, do not decode
            next(stream)
            pulled += 1
        for batch in batches:
            images: list[torch.Tensor] = []
            skipped, missing_label, failures, consecutive = 0, 0, [], 0
            while len(images) < self.batch_size:
                sample = next(stream)
                pulled += 1
                rng = sample_rng(self.seed, STREAM_CROP, self.epoch, self.rank, reader, pulled)
                try:
                    image = decode_image(image_bytes(sample), self.draft_size)
                except CorruptImageError as error:
                    skipped += 1
                    consecutive += 1
                    failures.append(f"{sample_name(sample)}: {error}")
                    if consecutive >= MAX_CONSECUTIVE_FAILURES:
                        raise RuntimeError(f"{consecutive} samples in a row failed to decode (last: {failures[-1]}); "
                                           "the shards look broken: re-create them with make_shards.") from error
                    continue
                consecutive = 0
                missing_label += 0 if has_label(sample) else 1
                images.append(train_transform(image, self.image_size, rng, self.hflip))
            meta = {"batch": batch, "reader": reader, "pulled": pulled, "skipped": skipped,
                    "missing_label": missing_label, "failures": failures[:MAX_LOGGED_FAILURES]}
            yield torch.stack(images), meta


def _identity(item):
    return item


class WdsTrainLoader:
    """Iterates forever over float ``b 3 h w`` batches in [-1, 1] from WebDataset shards (see the module docstring)."""

    def __init__(self, urls: list[str], *, counts: list[int] | None, total_samples: int, image_size: int,
                 hflip: bool, draft: bool, shuffle_buffer: int, shard_shuffle: bool, batch_size: int, rank: int,
                 world_size: int, seed: int, num_workers: int):
        self.num_readers = max(1, num_workers)
        slots = world_size * self.num_readers
        if counts is None and len(urls) < slots:
            raise ValueError(f"data.shards has {len(urls)} shards, fewer than world_size x num_workers = {slots} "
                             "readers, and no index with per-shard counts: write smaller shards (make_shards "
                             "--shard-size), provide the index (data.shards_index), or lower data.num_workers.")
        if counts is not None and sum(counts) < slots:
            raise ValueError(f"the shards hold {sum(counts)} samples, fewer than world_size x num_workers = {slots} "
                             "readers: lower data.num_workers.")
        self.epoch_size = total_samples // (world_size * batch_size)
        if self.epoch_size == 0:
            raise ValueError(f"the shards hold {total_samples} samples, fewer than world_size x batch_size = "
                             f"{world_size * batch_size}: use more data or a smaller train.batch_size.")
        self.urls = urls
        self.counts = counts
        self.num_workers = num_workers
        self.batch_size = batch_size
        self.rank = rank
        self.world_size = world_size
        self.seed = seed
        self.settings = dict(image_size=image_size, hflip=hflip, draft=draft, shuffle_buffer=shuffle_buffer,
                             shard_shuffle=shard_shuffle)
        self.epoch = 0
        self.position = 0
        self.offsets = [0] * self.num_readers
        self._counters = {"skipped_corrupt": 0, "skipped_corrupt_epoch": 0, "missing_label": 0}
        self._logged_epoch = 0

    def __len__(self) -> int:
        return self.epoch_size

    def _stream(self) -> _TrainStream:
        return _TrainStream(self.urls, self.counts, seed=self.seed, rank=self.rank, world_size=self.world_size,
                            num_readers=self.num_readers, batch_size=self.batch_size, epoch=self.epoch,
                            start_batch=self.position, epoch_size=self.epoch_size, offsets=list(self.offsets),
                            **self.settings)

    def __iter__(self) -> Iterator[torch.Tensor]:
        while True:
            loader = DataLoader(self._stream(), batch_size=None, num_workers=self.num_workers,
                                collate_fn=_identity, prefetch_factor=2 if self.num_workers > 0 else None)
            for images, meta in loader:
                if meta["batch"] != self.position:
                    raise RuntimeError(f"data stream out of order: got batch {meta['batch']}, expected {self.position}")
                self.offsets[meta["reader"]] = meta["pulled"]
                self._record(meta)
                self.position += 1
                yield to_model_range(images)
            self._end_epoch()

    def _record(self, meta: dict) -> None:
        self._counters["skipped_corrupt"] += meta["skipped"]
        self._counters["skipped_corrupt_epoch"] += meta["skipped"]
        self._counters["missing_label"] += meta["missing_label"]
        for message in meta["failures"]:
            if self._logged_epoch < MAX_LOGGED_FAILURES:
                log.warning("data=imagenet_wds rank %d: skipped a corrupt sample: %s", self.rank, message)
            self._logged_epoch += 1

    def _end_epoch(self) -> None:
        log.info("data=imagenet_wds rank %d: epoch %d done, %d batches, %d corrupt samples skipped",
                 self.rank, self.epoch, self.epoch_size, self._counters["skipped_corrupt_epoch"])
        self.epoch += 1
        self.position = 0
        self.offsets = [0] * self.num_readers
        self._counters["skipped_corrupt_epoch"] = 0
        self._logged_epoch = 0

    def state_dict(self) -> dict:
        """Epoch, batches consumed in it, encoded samples pulled by each reader, the settings they depend on."""
        return {"source": "imagenet_wds", "epoch": self.epoch, "position": self.position,
                "reader_offsets": list(self.offsets), "num_readers": self.num_readers, "seed": self.seed,
                "world_size": self.world_size, "batch_size": self.batch_size, "num_shards": len(self.urls),
                **self._counters}

    def load_state_dict(self, state: dict) -> None:
        """Resume at ``state``: exact with unchanged settings, else an approximate skip (see the module docstring)."""
        self.epoch = int(state["epoch"])
        self.position = int(state["position"])
        for key in self._counters:
            self._counters[key] = int(state.get(key, 0))
        if self.position >= self.epoch_size:
            self.epoch, self.position, self.offsets = self.epoch + 1, 0, [0] * self.num_readers
            return
        same = all(state.get(key) == value for key, value in (
            ("num_readers", self.num_readers), ("seed", self.seed), ("world_size", self.world_size),
            ("batch_size", self.batch_size), ("num_shards", len(self.urls))))
        if same:
            self.offsets = [int(offset) for offset in state["reader_offsets"]]
            return
        log.warning("data=imagenet_wds: world size, num_workers, batch size, seed or shards changed since the "
                    "checkpoint: resuming epoch %d at batch %d approximately (each reader skips the same fraction "
                    "of its stream).", self.epoch, self.position)
        self.offsets = [len(range(reader, self.position, self.num_readers)) * self.batch_size
                        for reader in range(self.num_readers)]

    def stats(self) -> dict:
        """Counters for logging: epoch, batch in epoch, corrupt samples skipped, samples without a label."""
        return {"epoch": self.epoch, "batch_in_epoch": self.position, **self._counters}


class _ValStream(IterableDataset):
    """Worker side of the val stream: this worker's shards in order, centre crops, batches of ``batch_size``."""

    def __init__(self, urls: list[str], quotas: list[int | None], image_size: int, batch_size: int):
        self.urls = urls
        self.quotas = quotas
        self.image_size = image_size
        self.batch_size = batch_size

    def __iter__(self) -> Iterator[tuple[torch.Tensor | None, list[str]]]:
        worker, workers = _reader_slot()
        images: list[torch.Tensor] = []
        failures: list[str] = []
        for url, quota in list(zip(self.urls, self.quotas))[worker::workers]:
            for number, sample in enumerate(iter_shard(url)):
                if quota is not None and number >= quota:
                    break
                try:
                    images.append(val_transform(decode_image(image_bytes(sample)), self.image_size))
                except CorruptImageError as error:
                    failures.append(f"{sample_name(sample)}: {error}")
                if len(images) == self.batch_size:
                    yield torch.stack(images), failures
                    images, failures = [], []
        if images or failures:
            yield (torch.stack(images) if images else None), failures


class WdsValLoader(CountedValPass):
    """Iterates once over this rank's val shards (contiguous block of the ordered shard list); float ``b 3 h w``."""

    name = "imagenet_wds"

    def __init__(self, urls: list[str], *, image_size: int, batch_size: int, rank: int, world_size: int,
                 num_workers: int, max_images: int | None):
        quotas: list[int | None] = [None] * len(urls)
        if max_images is not None:
            if max_images <= 0:
                raise ValueError(f"max_images must be positive or None, got {max_images}.")
            spread = (np.arange(len(urls) + 1) * max_images) // len(urls)
            quotas = [int(b - a) for a, b in zip(spread[:-1], spread[1:])]
        blocks = np.array_split(np.arange(len(urls)), world_size)[rank]
        self.urls = [urls[i] for i in blocks if quotas[i] != 0]
        self.quotas = [quotas[i] for i in blocks if quotas[i] != 0]
        self.image_size = image_size
        self.batch_size = batch_size
        self.num_workers = min(num_workers, len(self.urls))

    def __iter__(self) -> Iterator[torch.Tensor]:
        if not self.urls:
            self._skipped = self._yielded = 0
            return
        loader = DataLoader(_ValStream(self.urls, self.quotas, self.image_size, self.batch_size), batch_size=None,
                            num_workers=self.num_workers, collate_fn=_identity)
        yield from self._counted(loader)
