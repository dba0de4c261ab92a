"""Exact-resume train loader and ordered val loader for map-style sources (``sample``, ``imagenet_folder``).

A *train source* is anything with ``__len__``, ``train_item(index, rng) -> uint8 3 h w`` (raising
:class:`CorruptImageError` for a broken file) and ``describe(index) -> str``; a *val source* has ``__len__``,
``val_item(index)`` and ``describe``. The loaders here turn them into the batches the trainer and eval code consume.

Determinism: the order of an epoch is a permutation drawn from (seed, epoch); the crop of each sample from
(seed, epoch, sample index). Workers only execute; they hold no randomness. So the batches are a function of
(seed, epoch, position) alone, independent of ``num_workers`` and of restarts: resuming from ``state_dict()``
continues with exactly the batches an uninterrupted run would have seen.
"""

from __future__ import annotations

import logging
from typing import Iterable, Iterator, Protocol, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from .decode import CorruptImageError
from .transforms import sample_rng, to_model_range

log = logging.getLogger(__name__)

# Distinct first keys keep the random streams of shuffling, cropping and replacement independent.
STREAM_SHUFFLE = 1
STREAM_CROP = 2
STREAM_REPLACE = 3

# A corrupt image is replaced by another, deterministically chosen one; this many failures in a row means the
# data set itself is broken, which is reported instead of looping forever.
MAX_CONSECUTIVE_FAILURES = 50
# At most this many file names are logged per epoch; the count is always exact.
MAX_LOGGED_FAILURES = 20


class TrainSource(Protocol):
    def __len__(self) -> int: ...

    def train_item(self, index: int, rng: np.random.Generator) -> torch.Tensor: ...

    def describe(self, index: int) -> str: ...


class ValSource(Protocol):
    def __len__(self) -> int: ...

    def val_item(self, index: int) -> torch.Tensor: ...

    def describe(self, index: int) -> str: ...


class _TrainItems(Dataset):
    """Worker-side view: ``dataset[(epoch, index)]`` -> (uint8 ``3 h w``, replaced count, failure messages)."""

    def __init__(self, source: TrainSource, seed: int):
        self.source = source
        self.seed = seed

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, key: tuple[int, int]) -> tuple[torch.Tensor, int, list[str]]:
        epoch, index = key
        failures: list[str] = []
        current = index
        for attempt in range(MAX_CONSECUTIVE_FAILURES):
            rng = sample_rng(self.seed, STREAM_CROP, epoch, index, attempt)
            try:
                return self.source.train_item(current, rng), attempt, failures
            except CorruptImageError as error:
                failures.append(f"{self.source.describe(current)}: {error}")
                # Deterministic substitute: the same (seed, epoch, index) always falls back to the same image.
                current = int(sample_rng(self.seed, STREAM_REPLACE, epoch, index, attempt).integers(len(self.source)))
        raise RuntimeError(
            f"{MAX_CONSECUTIVE_FAILURES} images in a row failed to decode (last: {failures[-1]}); "
            "the data set looks broken: check the files under the configured data directory."
        )


def _collate_train(items: list[tuple[torch.Tensor, int, list[str]]]) -> tuple[torch.Tensor, int, list[str]]:
    images = torch.stack([item[0] for item in items])
    replaced = sum(item[1] for item in items)
    failures = [message for item in items for message in item[2]]
    return images, replaced, failures


class MapStyleTrainLoader:
    """Iterates forever over float ``b 3 h w`` batches in [-1, 1], epoch after epoch, resumable exactly.

    Each epoch is a permutation of the source drawn from (seed, epoch); its first
    ``world_size * (len // world_size)`` entries are dealt round-robin to the ranks (disjoint parts, equal sizes),
    and each rank's part is cut into ``epoch_size`` full batches (the remainder is dropped, like
    ``DistributedSampler(drop_last=True)``). Iterate one iterator at a time: the position lives in the loader.
    """

    def __init__(self, source: TrainSource, batch_size: int, rank: int, world_size: int, seed: int,
                 num_workers: int, name: str):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside 0..{world_size - 1}: pass the process rank and world size.")
        self.source = source
        self.batch_size = batch_size
        self.rank = rank
        self.world_size = world_size
        self.seed = seed
        self.num_workers = num_workers
        self.name = name
        self.per_rank = len(source) // world_size
        self.epoch_size = self.per_rank // batch_size
        if self.epoch_size == 0:
            raise ValueError(
                f"data={name} has {len(source)} training images, fewer than world_size x batch_size = "
                f"{world_size * batch_size}: use more images or a smaller train.batch_size."
            )
        self.epoch = 0
        self.position = 0
        self._skipped_total = 0
        self._skipped_epoch = 0
        self._logged_epoch = 0

    def epoch_batches(self, epoch: int) -> list[list[tuple[int, int]]]:
        """This rank's batches of ``epoch`` as lists of ``(epoch, sample index)`` keys."""
        permutation = sample_rng(self.seed, STREAM_SHUFFLE, epoch).permutation(len(self.source))
        mine = permutation[: self.per_rank * self.world_size][self.rank :: self.world_size]
        mine = mine[: self.epoch_size * self.batch_size]
        return [
            [(epoch, int(i)) for i in mine[b * self.batch_size : (b + 1) * self.batch_size]]
            for b in range(self.epoch_size)
        ]

    def __len__(self) -> int:
        return self.epoch_size

    def __iter__(self) -> Iterator[torch.Tensor]:
        items = _TrainItems(self.source, self.seed)
        while True:
            remaining = self.epoch_batches(self.epoch)[self.position :]
            loader = DataLoader(
                items,
                batch_sampler=remaining,
                num_workers=self.num_workers,
                collate_fn=_collate_train,
            )
            for images, replaced, failures in loader:
                self._record_failures(replaced, failures)
                self.position += 1
                yield to_model_range(images)
            self._end_epoch()

    def _record_failures(self, replaced: int, failures: list[str]) -> None:
        self._skipped_total += replaced
        self._skipped_epoch += replaced
        for message in failures:
            if self._logged_epoch < MAX_LOGGED_FAILURES:
                log.warning("data=%s rank %d: skipped a corrupt image (replaced by another): %s",
                            self.name, self.rank, message)
            self._logged_epoch += 1

    def _end_epoch(self) -> None:
        log.info("data=%s rank %d: epoch %d done, %d batches, %d corrupt images skipped (and replaced)",
                 self.name, self.rank, self.epoch, self.epoch_size, self._skipped_epoch)
        self.epoch += 1
        self.position = 0
        self._skipped_epoch = 0
        self._logged_epoch = 0

    def state_dict(self) -> dict:
        """Data position to resume from: epoch, batches consumed in it, and the counters."""
        return {
            "source": self.name,
            "epoch": self.epoch,
            "position": self.position,
            "seed": self.seed,
            "world_size": self.world_size,
            "batch_size": self.batch_size,
            "skipped_corrupt": self._skipped_total,
            "skipped_corrupt_epoch": self._skipped_epoch,
        }

    def load_state_dict(self, state: dict) -> None:
        """Continue at ``state``'s position; the next batch is the one an uninterrupted run would see next.

        Exactness needs the same seed, world size and batch size; with others the position is kept but the batches
        differ (a warning says so).
        """
        changed = [key for key in ("seed", "world_size", "batch_size") if state.get(key) != getattr(self, key)]
        if changed:
            log.warning("data=%s: resuming with a different %s than the checkpoint: the epoch position is kept "
                        "but the batches will not match an uninterrupted run.", self.name, ", ".join(changed))
        self.epoch = int(state["epoch"])
        self.position = int(state["position"])
        if self.position >= self.epoch_size:
            self.epoch, self.position = self.epoch + 1, 0
        self._skipped_total = int(state.get("skipped_corrupt", 0))
        self._skipped_epoch = int(state.get("skipped_corrupt_epoch", 0))

    def stats(self) -> dict:
        """Counters for logging: current epoch and batch within it, corrupt images skipped (total and this epoch)."""
        return {
            "epoch": self.epoch,
            "batch_in_epoch": self.position,
            "skipped_corrupt": self._skipped_total,
            "skipped_corrupt_epoch": self._skipped_epoch,
        }


def val_subset(num_images: int, max_images: int | None) -> np.ndarray:
    """Indices of the fixed evaluation subset: all images, or ``max_images`` evenly spaced ones (across classes)."""
    if max_images is None or max_images >= num_images:
        return np.arange(num_images)
    if max_images <= 0:
        raise ValueError(f"max_images must be positive or None, got {max_images}.")
    return (np.arange(max_images) * num_images) // max_images


class _ValItems(Dataset):
    """Worker-side view of a val source: ``dataset[i]`` -> (uint8 ``3 h w`` or None if corrupt, message)."""

    def __init__(self, source: ValSource, indices: Sequence[int]):
        self.source = source
        self.indices = indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, position: int) -> tuple[torch.Tensor | None, str]:
        index = int(self.indices[position])
        try:
            return self.source.val_item(index), ""
        except CorruptImageError as error:
            return None, f"{self.source.describe(index)}: {error}"


def _collate_val(items: list[tuple[torch.Tensor | None, str]]) -> tuple[torch.Tensor | None, list[str]]:
    images = [image for image, _ in items if image is not None]
    failures = [message for image, message in items if image is None]
    return (torch.stack(images) if images else None), failures


class CountedValPass:
    """One pass over `(uint8 images or None, failure messages)` batches: yields model-range floats, logs and counts
    the corrupt images skipped. Shared by the folder/sample and the shard val loaders."""

    name: str
    _skipped = 0
    _yielded = 0

    def _counted(self, batches: Iterable[tuple[torch.Tensor | None, list[str]]]) -> Iterator[torch.Tensor]:
        self._skipped = self._yielded = 0
        for images, failures in batches:
            for message in failures:
                log.warning("data=%s: skipped a corrupt val image: %s", self.name, message)
            self._skipped += len(failures)
            if images is not None:
                self._yielded += len(images)
                yield to_model_range(images)

    def stats(self) -> dict:
        """``{"images": n yielded in the last pass, "skipped_corrupt": n skipped in it}`` for this rank."""
        return {"images": self._yielded, "skipped_corrupt": self._skipped}


class MapStyleValLoader(CountedValPass):
    """Iterates once over this rank's contiguous block of the fixed, ordered val subset (float ``b 3 h w``).

    Ranks get contiguous blocks (``np.array_split``), so across ranks every image is seen exactly once; the last
    batch may be smaller. Corrupt images are skipped and counted in ``stats()``.
    """

    def __init__(self, source: ValSource, batch_size: int, rank: int, world_size: int, num_workers: int,
                 max_images: int | None, name: str):
        self.source = source
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.name = name
        subset = val_subset(len(source), max_images)
        self.indices = np.array_split(subset, world_size)[rank]
        self.num_images = len(self.indices)

    def __len__(self) -> int:
        return -(-self.num_images // self.batch_size)

    def __iter__(self) -> Iterator[torch.Tensor]:
        loader = DataLoader(
            _ValItems(self.source, self.indices),
            batch_size=self.batch_size,
            shuffle=False,
            num_workers=self.num_workers,
            collate_fn=_collate_val,
        )
        yield from self._counted(loader)
