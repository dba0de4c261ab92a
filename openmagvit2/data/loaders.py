"""The loader contract: one resumable training-loader base (map-style and shard loaders), the map-style loaders, and
the counted val pass.

A *train source* is anything with ``__len__``, ``train_item(index, rng) -> (uint8 3 h w, label)`` (raising an
:class:`UnusableImageError` for a file it cannot use; label -1 = unlabeled) and ``describe(index) -> str``; a *val
source* has ``__len__``, ``val_item(index) -> (uint8 3 h w, label)`` and ``describe``. The loaders here turn them into
the batches the trainer and eval code consume: float images, or ``(images, labels int64)`` with ``labels=True``.

Determinism (map-style): the order of an epoch is a permutation drawn from (seed, epoch); the crop of each sample from
(seed, epoch, sample index). Workers only execute; they hold no randomness. So the batches are a function of
(seed, epoch, position) alone, independent of ``num_workers`` and of restarts: resuming from ``state_dict()``
continues with exactly the batches an uninterrupted run would have seen.

Unusable samples (corrupt, missing, too large, extreme aspect ratio) are replaced (map-style) or passed over (shards)
and counted per kind. Every ``SkipPolicy.window`` samples read, the share skipped is compared with
``data.max_skip_rate``; above it the run stops with :class:`DataError`: that is files disappearing or a broken data
set, not a few bad files.
"""

from __future__ import annotations

import abc
import logging
from dataclasses import dataclass, field
from typing import Iterable, Iterator, Protocol, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from .decode import UnusableImageError
from .transforms import Stream, sample_rng, to_model_range

log = logging.getLogger(__name__)

# The stats() counters of unusable samples, by the error's ``counter`` (see decode.py; ``skipped_short``: a video with
# fewer frames than a clip, video_clips.py).
SKIP_COUNTERS = ("skipped_corrupt", "missing_files", "skipped_too_large", "skipped_aspect", "skipped_short")
# At most this many skipped files are named in the log per epoch; the counts are always exact.
MAX_LOGGED_SKIPS = 20
# A backstop, not the policy (that is SkipPolicy, checked in the main process per batch): a worker that meets this
# many unusable samples in a row raises instead of looping forever on a data set where (nearly) everything fails,
# because the main process never receives a batch to check. One value for both loaders: a whole bad shard (1000
# samples) read in order must not trip it before the rate check does.
MAX_CONSECUTIVE_SKIPS = 1000


class DataError(RuntimeError):
    """The data went bad during the run (files disappearing, too many unusable samples): a one-line message."""


@dataclass(frozen=True)
class SkipPolicy:
    """Stop when more than ``max_skip_rate`` of the samples read in a window of ``window`` samples were unusable."""

    max_skip_rate: float = 0.01
    window: int = 2000


@dataclass
class Skips:
    """Unusable samples met while filling one batch: exact counts per counter, the first few messages."""

    counts: dict[str, int] = field(default_factory=dict)
    messages: list[tuple[str, str]] = field(default_factory=list)

    def add(self, error: UnusableImageError, where: str) -> None:
        self.counts[error.counter] = self.counts.get(error.counter, 0) + 1
        if len(self.messages) < MAX_LOGGED_SKIPS:
            self.messages.append((error.counter, f"{where}: {error}"))

    def merge(self, other: Skips) -> None:
        for counter, count in other.counts.items():
            self.counts[counter] = self.counts.get(counter, 0) + count
        self.messages.extend(other.messages[: MAX_LOGGED_SKIPS - len(self.messages)])

    @property
    def total(self) -> int:
        return sum(self.counts.values())


def describe_counts(counts: dict[str, int]) -> str:
    """``{"missing_files": 3, "skipped_corrupt": 1}`` -> ``"3 missing_files, 1 skipped_corrupt"``."""
    return ", ".join(f"{counts[key]} {key}" for key in SKIP_COUNTERS if counts.get(key)) or "none"


class ResumableLoader(abc.ABC):
    """Epoch, position and skip bookkeeping shared by the training loaders; iterate for float ``b 3 h w`` in [-1, 1]
    (or ``(images, labels b int64)`` when a subclass delivers labels).

    A subclass yields ``(batch, Skips)`` for the rest of the current epoch from :meth:`_rest_of_epoch` (from
    ``self.epoch`` and ``self.position``), where ``batch`` is uint8 images or an ``(images, labels)`` tuple, and may
    extend :meth:`state_dict` / :meth:`_restore_stream`, and :meth:`_output` (the model-range conversion). The base
    counts, logs and checks the skips, advances the position and the epoch, and saves and restores it all. Iterate
    one iterator at a time: the position lives in the loader.
    """

    # Settings that must match the checkpoint's for an exact resume (a subclass may add its own).
    exact_keys: tuple[str, ...] = ("seed", "world_size", "batch_size")

    def __init__(self, *, name: str, where: str, batch_size: int, rank: int, world_size: int, seed: int,
                 epoch_size: int, policy: SkipPolicy, pin_memory: bool):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside 0..{world_size - 1}: pass the process rank and world size.")
        self.name = name
        self.where = where  # the data.* key and path named in errors, e.g. "data.train_dir='/data/train'"
        self.batch_size = batch_size
        self.rank = rank
        self.world_size = world_size
        self.seed = seed
        self.epoch_size = epoch_size
        self.policy = policy
        self.pin_memory = pin_memory
        self.epoch = 0
        self.position = 0
        self.counters = dict.fromkeys((*SKIP_COUNTERS, "skipped_epoch"), 0)
        self._window_samples = 0
        self._window_skipped = 0
        self._logged_epoch = 0

    def __len__(self) -> int:
        return self.epoch_size

    @abc.abstractmethod
    def _rest_of_epoch(self) -> Iterable[tuple[torch.Tensor, Skips]]:
        """This epoch's remaining batches from `self.position` on, each with the skips met while making it."""

    def _output(self, images: torch.Tensor) -> torch.Tensor:
        """What the trainer receives for a uint8 batch: float ``b 3 h w`` in [-1, 1]."""
        return to_model_range(images, self.pin_memory)

    def __iter__(self) -> Iterator[torch.Tensor | tuple[torch.Tensor, torch.Tensor]]:
        while True:
            for batch, skips in self._rest_of_epoch():
                images, labels = batch if isinstance(batch, tuple) else (batch, None)
                self._record(skips, len(images))
                self.position += 1
                yield self._output(images) if labels is None else (self._output(images), labels)
            self._end_epoch()

    def _record(self, skips: Skips, delivered: int) -> None:
        for counter, count in skips.counts.items():
            self.counters[counter] += count
        self.counters["skipped_epoch"] += skips.total
        for counter, message in skips.messages:
            if self._logged_epoch < MAX_LOGGED_SKIPS:
                log.warning("data=%s rank %d: skipped (%s): %s", self.name, self.rank, counter, message)
                if self._logged_epoch == MAX_LOGGED_SKIPS - 1:
                    log.warning("data=%s rank %d: further skipped files this epoch are counted, not named; a "
                                "summary follows every %d samples read and at the end of the epoch", self.name,
                                self.rank, self.policy.window)
            self._logged_epoch += 1
        self._window_samples += delivered + skips.total
        self._window_skipped += skips.total
        if self._window_samples >= self.policy.window:
            self._check_window()

    def _check_window(self) -> None:
        read, skipped = self._window_samples, self._window_skipped
        self._window_samples = self._window_skipped = 0
        if skipped > self.policy.max_skip_rate * read:
            counts = {key: self.counters[key] for key in SKIP_COUNTERS}
            raise DataError(
                f"{self.where}: {skipped} of the last {read} samples read on rank {self.rank} were unusable "
                f"({skipped / read:.1%}, run totals: {describe_counts(counts)}), above data.max_skip_rate="
                f"{self.policy.max_skip_rate:g}: files are disappearing or the data is broken; fix the data, or "
                "raise data.max_skip_rate if it is known to be this dirty.")
        if skipped and self._logged_epoch > MAX_LOGGED_SKIPS:
            log.warning("data=%s rank %d: %d of the last %d samples read were skipped (epoch %d so far: %d; run: %s)",
                        self.name, self.rank, skipped, read, self.epoch, self.counters["skipped_epoch"],
                        describe_counts(self.counters))

    def _end_epoch(self) -> None:
        level = logging.WARNING if self.counters["skipped_epoch"] else logging.INFO
        log.log(level, "data=%s rank %d: epoch %d done, %d batches, %d unusable samples skipped (run totals: %s)",
                self.name, self.rank, self.epoch, self.epoch_size, self.counters["skipped_epoch"],
                describe_counts(self.counters))
        self.epoch += 1
        self.position = 0
        self.counters["skipped_epoch"] = 0
        self._logged_epoch = 0

    def state_dict(self) -> dict:
        """Data position to resume from: epoch, batches consumed in it, the skip counters and the settings."""
        return {"source": self.name, "epoch": self.epoch, "position": self.position,
                **{key: getattr(self, key) for key in self.exact_keys}, **self.counters,
                "window_samples": self._window_samples, "window_skipped": self._window_skipped}

    def load_state_dict(self, state: dict) -> None:
        """Continue at ``state``'s position; the next batch is the one an uninterrupted run would see next.

        Exactness needs the same :attr:`exact_keys` settings; with others the epoch position is kept but the batches
        differ (a warning says so).
        """
        self.epoch = int(state["epoch"])
        self.position = int(state["position"])
        for key in self.counters:
            self.counters[key] = int(state.get(key, 0))
        self._window_samples = int(state.get("window_samples", 0))
        self._window_skipped = int(state.get("window_skipped", 0))
        if self.position >= self.epoch_size:
            self.epoch, self.position = self.epoch + 1, 0
            self._restore_stream(state, exact=True)
            return
        changed = [key for key in self.exact_keys if state.get(key) != getattr(self, key)]
        if changed:
            log.warning("data=%s: %s changed since the checkpoint: resuming epoch %d at batch %d approximately (the "
                        "epoch position is kept, the batches will not match an uninterrupted run).", self.name,
                        ", ".join(changed), self.epoch, self.position)
        self._restore_stream(state, exact=not changed)

    def _restore_stream(self, state: dict, exact: bool) -> None:
        """Hook for a subclass's own stream position (the shard readers' offsets)."""

    def stats(self) -> dict:
        """Counters for logging: epoch, batch within it, unusable samples skipped by kind and in this epoch."""
        return {"epoch": self.epoch, "batch_in_epoch": self.position, **self.counters}


class TrainSource(Protocol):
    def __len__(self) -> int: ...

    def train_item(self, index: int, rng: np.random.Generator) -> tuple[torch.Tensor, int]: ...

    def describe(self, index: int) -> str: ...


class ValSource(Protocol):
    def __len__(self) -> int: ...

    def val_item(self, index: int) -> tuple[torch.Tensor, int]: ...

    def describe(self, index: int) -> str: ...


class _TrainItems(Dataset):
    """Worker-side view: ``dataset[(epoch, index)]`` -> ((uint8 ``3 h w``, label), the unusable files replaced on the
    way)."""

    def __init__(self, source: TrainSource, seed: int):
        self.source = source
        self.seed = seed

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, key: tuple[int, int]) -> tuple[tuple[torch.Tensor, int], Skips]:
        epoch, index = key
        skips = Skips()
        current = index
        for attempt in range(MAX_CONSECUTIVE_SKIPS):
            rng = sample_rng(self.seed, Stream.CROP, epoch, index, attempt)
            try:
                return self.source.train_item(current, rng), skips
            except UnusableImageError as error:
                skips.add(error, self.source.describe(current))
                # Deterministic substitute: the same (seed, epoch, index) always falls back to the same image.
                replacement = sample_rng(self.seed, Stream.REPLACEMENT, epoch, index, attempt)
                current = int(replacement.integers(len(self.source)))
        raise DataError(f"{MAX_CONSECUTIVE_SKIPS} files in a row were unusable ({describe_counts(skips.counts)}; "
                        f"last: {skips.messages[-1][1]}): check the files under the configured data directory.")


def _collate_train(items: list[tuple[tuple[torch.Tensor, int], Skips]]) -> tuple[tuple[torch.Tensor, torch.Tensor],
                                                                                  Skips]:
    skips = Skips()
    for _, item_skips in items:
        skips.merge(item_skips)
    images = torch.stack([image for (image, _), _ in items])
    return (images, torch.tensor([label for (_, label), _ in items], dtype=torch.int64)), skips


class MapStyleTrainLoader(ResumableLoader):
    """Map-style sources (``sample``, ``imagenet_folder``), epoch after epoch, resumable exactly.

    Each epoch is a permutation of the source drawn from (seed, epoch); its first
    ``world_size * (len // world_size)`` entries are dealt round-robin to the ranks (disjoint parts, equal sizes),
    and each rank's part is cut into ``epoch_size`` full batches (the remainder is dropped, like
    ``DistributedSampler(drop_last=True)``).
    """

    def __init__(self, source: TrainSource, *, batch_size: int, rank: int, world_size: int, seed: int,
                 num_workers: int, name: str, where: str, policy: SkipPolicy = SkipPolicy(),
                 pin_memory: bool = False, labels: bool = False):
        self.per_rank = len(source) // world_size
        epoch_size = self.per_rank // batch_size
        if epoch_size == 0:
            raise ValueError(f"data={name} has {len(source)} training images, fewer than world_size x batch_size = "
                             f"{world_size * batch_size}: use more images or a smaller train.batch_size.")
        super().__init__(name=name, where=where, batch_size=batch_size, rank=rank, world_size=world_size, seed=seed,
                         epoch_size=epoch_size, policy=policy, pin_memory=pin_memory)
        self.source = source
        self.num_workers = num_workers
        self.labels = labels

    def epoch_batches(self, epoch: int) -> list[list[tuple[int, int]]]:
        """This rank's batches of ``epoch`` as lists of ``(epoch, sample index)`` keys."""
        permutation = sample_rng(self.seed, Stream.EPOCH_ORDER, epoch).permutation(len(self.source))
        mine = permutation[: self.per_rank * self.world_size][self.rank :: self.world_size]
        mine = mine[: self.epoch_size * self.batch_size]
        return [[(epoch, int(i)) for i in mine[b * self.batch_size : (b + 1) * self.batch_size]]
                for b in range(self.epoch_size)]

    def _rest_of_epoch(self) -> Iterable[tuple[torch.Tensor | tuple[torch.Tensor, torch.Tensor], Skips]]:
        # A new DataLoader (and new workers) per epoch: its batch list is the epoch's. Worker start-up is seconds
        # against an epoch of minutes to hours, and persistent workers would buy nothing for this exactness.
        loader = DataLoader(_TrainItems(self.source, self.seed), batch_sampler=self.epoch_batches(self.epoch)[
            self.position :], num_workers=self.num_workers, collate_fn=_collate_train)
        for (images, labels), skips in loader:
            yield ((images, labels) if self.labels else images), skips


def val_subset(num_images: int, max_images: int | None) -> np.ndarray:
    """Indices of the fixed evaluation subset: all images, or ``max_images`` evenly spaced ones (across classes)."""
    if max_images is None or max_images >= num_images:
        return np.arange(num_images)
    if max_images <= 0:
        raise ValueError(f"max_images must be positive or None, got {max_images}.")
    return (np.arange(max_images) * num_images) // max_images


class _ValItems(Dataset):
    """Worker-side view of a val source: ``dataset[i]`` -> (uint8 ``3 h w`` or None if unusable, label, its Skips)."""

    def __init__(self, source: ValSource, indices: Sequence[int]):
        self.source = source
        self.indices = indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, position: int) -> tuple[torch.Tensor | None, int, Skips]:
        index = int(self.indices[position])
        skips = Skips()
        try:
            return (*self.source.val_item(index), skips)
        except UnusableImageError as error:
            skips.add(error, self.source.describe(index))
            return None, -1, skips


ValBatch = tuple[torch.Tensor | None, torch.Tensor | None, Skips]


def collate_val(items: list[tuple[torch.Tensor | None, int, Skips]]) -> ValBatch:
    """(uint8 images or None, int64 labels or None, Skips) of the usable items, in order."""
    skips = Skips()
    for _, _, item_skips in items:
        skips.merge(item_skips)
    kept = [(image, label) for image, label, _ in items if image is not None]
    if not kept:
        return None, None, skips
    return (torch.stack([image for image, _ in kept]), torch.tensor([label for _, label in kept], dtype=torch.int64),
            skips)


class CountedValPass:
    """One pass over ``(uint8 images or None, labels or None, Skips)`` batches: yields model-range floats (or
    ``(images, labels int64)`` when ``labels`` is set), logs and counts the unusable images skipped (no cap: the pass
    reports its image count). Shared by the map-style and shard val loaders."""

    name: str
    pin_memory = False
    labels = False
    _counts: dict[str, int] = {}
    _yielded = 0

    def _counted(self, batches: Iterable[ValBatch]) -> Iterator[torch.Tensor | tuple[torch.Tensor, torch.Tensor]]:
        self._counts = dict.fromkeys(SKIP_COUNTERS, 0)
        self._yielded = 0
        for images, labels, skips in batches:
            for counter, message in skips.messages:
                log.warning("data=%s: skipped a val image (%s): %s", self.name, counter, message)
            for counter, count in skips.counts.items():
                self._counts[counter] += count
            if images is not None:
                if self.labels and bool((labels < 0).any()):
                    raise DataError(f"data={self.name}: a validation image has no label (an image outside class "
                                    "folders, or a sample without .cls): use a labelled validation set.")
                self._yielded += len(images)
                floats = to_model_range(images, self.pin_memory)
                yield (floats, labels) if self.labels else floats

    def stats(self) -> dict:
        """``{"images": n yielded in the last pass, <skip counter>: n skipped in it, ...}`` for this rank."""
        return {"images": self._yielded, **dict.fromkeys(SKIP_COUNTERS, 0), **self._counts}


class MapStyleValLoader(CountedValPass):
    """Iterates once over this rank's contiguous block of the fixed, ordered val subset (float ``b 3 h w``).

    Ranks get contiguous blocks (``np.array_split``), so across ranks every image is seen exactly once; the last
    batch may be smaller. Unusable images are skipped and counted in ``stats()``.
    """

    def __init__(self, source: ValSource, *, batch_size: int, rank: int, world_size: int, num_workers: int,
                 max_images: int | None, name: str, pin_memory: bool = False, labels: bool = False):
        self.source = source
        self.labels = labels
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.name = name
        self.pin_memory = pin_memory
        self.indices = np.array_split(val_subset(len(source), max_images), world_size)[rank]
        self.num_images = len(self.indices)

    def __len__(self) -> int:
        return -(-self.num_images // self.batch_size)

    def __iter__(self) -> Iterator[torch.Tensor]:
        loader = DataLoader(_ValItems(self.source, self.indices), batch_size=self.batch_size, shuffle=False,
                            num_workers=self.num_workers, collate_fn=collate_val)
        yield from self._counted(loader)
