"""Convert an image folder (``<split>/<synset>/*.JPEG`` or any folder of images) into WebDataset tar shards.

    python -m openmagvit2.data.make_shards --src imagenet/train --out shards/imagenet [--shard-size 1000] [--workers 8]

writes ``<out>/<prefix>-000000.tar`` ... (``prefix`` defaults to the source folder's name, e.g. ``train``) and the
index ``<out>/<prefix>.json`` (class names, count per shard, total). Each sample holds the file's original encoded
bytes under its extension (``.jpg`` for ``.JPEG``), the class index as text (``.cls``; absent for images outside a
class folder) and the source path relative to ``--src`` (``.path``).

Every file is decode-checked while it is packed (by the worker processes; JPEGs at 1/8 scale, which still reads all
their data): a file that does not decode is skipped, counted and named in the index (``skipped_corrupt``,
``skipped``) and in the closing summary; ``--no-check`` packs every file as it is. Images above PIL's size threshold
are packed unchecked: the training loader's ``data.max_pixels`` decides about them.

Samples are shuffled once with ``--seed`` (so each shard mixes classes and a small streaming shuffle buffer
suffices); ``--no-shuffle`` keeps the sorted order. Every shard is written to a temporary file and renamed when
complete, so an interrupted conversion leaves only whole shards, and re-running the same command skips them. A
``<prefix>.plan.json`` fingerprint refuses to resume over shards made from different inputs or settings.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import multiprocessing
import os
import sys
import tarfile
import time
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import webdataset as wds

from ..io.atomic import atomic_write
from .decode import DEFAULT_MAX_PIXELS, CorruptImageError, ImageLimits, ImageTooLargeError, decode_image
from .folder import UNLABELED, FolderListing, scan_image_folder

INDEX_FORMAT = "openmagvit2-shards"
INDEX_VERSION = 1
EXTENSION_ALIASES = {"jpeg": "jpg", "jfif": "jpg", "tiff": "tif"}
# The index names at most this many skipped files (the count is always exact).
MAX_LISTED_SKIPS = 1000
# Skipped when the shard was written by an earlier, interrupted run of the same conversion (reason not kept).
EARLIER_RUN = "skipped when this shard was written (an earlier run)"


@dataclass(frozen=True)
class ShardTask:
    """One shard to write: its file name and the (global sample number, relative path, label) rows it holds."""

    name: str
    rows: list[tuple[int, str, int]]


def write_json_atomic(path: str, payload: dict) -> None:
    """Write JSON to ``path`` via a temporary file and a rename, so readers never see half a file."""
    with atomic_write(path, text=True) as handle:
        json.dump(payload, handle, indent=1)
        handle.write("\n")


def field_for(path: str) -> str:
    """The WebDataset field (extension) an image is stored under: ``a.JPEG`` -> ``jpg``."""
    extension = os.path.splitext(path)[1].lstrip(".").lower()
    return EXTENSION_ALIASES.get(extension, extension)


def plan_shards(listing: FolderListing, prefix: str, shard_size: int, shuffle: bool, seed: int) -> list[ShardTask]:
    """Assign samples to shards: a seeded permutation (or the sorted order) cut into ``shard_size`` chunks."""
    count = len(listing)
    order = np.random.default_rng(seed).permutation(count) if shuffle else np.arange(count)
    tasks = []
    for shard, start in enumerate(range(0, count, shard_size)):
        rows = [(int(n), listing.paths[i], listing.labels[i])
                for n, i in zip(range(start, start + shard_size), order[start : start + shard_size])]
        tasks.append(ShardTask(name=f"{prefix}-{shard:06d}.tar", rows=rows))
    return tasks


def fingerprint(listing: FolderListing, tasks: Sequence[ShardTask], check: bool) -> str:
    """A hash of the classes, the check setting and every shard's content plan: equal plans give identical shards."""
    digest = hashlib.sha256(json.dumps([listing.classes, check]).encode())
    for task in tasks:
        digest.update(json.dumps([task.name, task.rows]).encode())
    return digest.hexdigest()


def corruption(data: bytes) -> str | None:
    """Why ``data`` does not decode (None if it does): the training decoder, JPEGs at 1/8 scale (libjpeg still
    reads every byte, so truncation is caught); images above PIL's threshold are not decoded here."""
    try:
        decode_image(data, draft_size=1, limits=ImageLimits(DEFAULT_MAX_PIXELS, math.inf))
    except ImageTooLargeError:
        return None
    except CorruptImageError as error:
        return str(error)
    return None


@dataclass
class ShardResult:
    """What one shard holds: its name, sample count, unlabeled count, and the (path, reason) rows it skipped."""

    name: str
    count: int
    unlabeled: int
    skipped: list[tuple[str, str]]


def write_shard(task: ShardTask, src: str, out: str, check: bool = True,
                why_broken: Callable[[bytes], str | None] | None = None) -> ShardResult:
    """Write one shard atomically, skipping files that do not decode when ``check`` (``why_broken``: the check,
    images by default; the video converter passes its own)."""
    final = os.path.join(out, task.name)
    unlabeled, skipped = 0, []
    with atomic_write(final) as stream:  # a whole shard or nothing, with the umask's permissions
        writer = wds.TarWriter(stream, encoder=False, mtime=0)
        for number, relative, label in task.rows:
            try:
                with open(os.path.join(src, relative), "rb") as handle:
                    data = handle.read()
            except OSError as error:
                raise OSError(f"cannot read {os.path.join(src, relative)}: {error}; fix its permissions or remove it "
                              "and re-run (finished shards are kept).") from error
            reason = (why_broken or corruption)(data) if check else None
            if reason is not None:
                skipped.append((relative, reason))
                continue
            sample = {"__key__": f"{number:09d}", field_for(relative): data, "path": relative.encode("utf-8")}
            if label == UNLABELED:
                unlabeled += 1
            else:
                sample["cls"] = str(label).encode("ascii")
            writer.write(sample)
        writer.close()
    return ShardResult(task.name, len(task.rows) - len(skipped), unlabeled, skipped)


def written_shard(task: ShardTask, out: str) -> ShardResult:
    """The result of a shard an earlier run wrote: its sample keys (tar headers only) against the plan."""
    with tarfile.open(os.path.join(out, task.name)) as archive:
        keys = {name.split(".", 1)[0] for name in archive.getnames()}
    kept = [(relative, label) for number, relative, label in task.rows if f"{number:09d}" in keys]
    skipped = [(relative, EARLIER_RUN) for number, relative, _ in task.rows if f"{number:09d}" not in keys]
    return ShardResult(task.name, len(kept), sum(1 for _, label in kept if label == UNLABELED), skipped)


def _write_shard_star(arguments: tuple[ShardTask, str, str, bool]) -> ShardResult:
    return write_shard(*arguments)


class _Progress:
    """A rich progress bar on a terminal, a plain line every ~5% otherwise (cluster job logs)."""

    def __init__(self, total_images: int, done_images: int, task: str = "writing shards", tag: str = "make_shards"):
        self.tag = tag
        self.total = total_images
        self.done = done_images
        self.started = time.monotonic()
        self.last_percent = -5
        self.bar = None
        if sys.stderr.isatty():
            from rich.progress import Progress

            self.bar = Progress(transient=False)
            self.bar.start()
            self.task = self.bar.add_task(task, total=total_images, completed=done_images)

    def advance(self, images: int) -> None:
        self.done += images
        if self.bar is not None:
            self.bar.update(self.task, completed=self.done)
            return
        percent = 100 * self.done // max(1, self.total)
        if percent >= self.last_percent + 5 or self.done == self.total:
            self.last_percent = percent
            rate = self.done / max(1e-9, time.monotonic() - self.started)
            print(f"[{self.tag}] {self.done}/{self.total} images ({percent}%), {rate:.0f} images/s", flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


SPLIT_NAMES = {"train", "val", "validation", "test"}  # folder names that are splits of a data set, not classes


def convert(src: str, out: str, prefix: str | None = None, shard_size: int = 1000, workers: int = 1,
            shuffle: bool = True, seed: int = 0, check: bool = True) -> dict:
    """Convert ``src`` into shards under ``out`` (resuming if possible) and return the index written next to them.

    ``check``: decode-check every file and skip (and count) the ones that do not decode.
    """
    if shard_size < 1:
        raise ValueError(f"--shard-size={shard_size} must be at least 1.")
    src = os.path.abspath(src)
    prefix = prefix or os.path.basename(src.rstrip(os.sep))
    listing = scan_image_folder(src, "--src")
    splits = sorted(SPLIT_NAMES & set(listing.classes))
    if len(splits) >= 2:  # a parent of the splits: its "classes" would be train and val
        raise ValueError(f"--src {src} holds the splits {', '.join(splits)}, which would become two classes: convert "
                         f"each split on its own (--src {os.path.join(src, splits[-1])}, then the others), as "
                         "`make shards SRC=...` does.")
    tasks = plan_shards(listing, prefix, shard_size, shuffle, seed)
    os.makedirs(out, exist_ok=True)
    plan_path = os.path.join(out, f"{prefix}.plan.json")
    plan = {"fingerprint": fingerprint(listing, tasks, check), "src": src, "shard_size": shard_size,
            "shuffle": shuffle, "seed": seed, "check": check, "shards": len(tasks)}
    if os.path.exists(plan_path):
        with open(plan_path, encoding="utf-8") as handle:
            previous = json.load(handle)
        if previous.get("fingerprint") != plan["fingerprint"]:
            raise ValueError(f"{out} holds '{prefix}' shards made from other inputs or settings ({plan_path}): "
                             "use a new --out or --prefix, or delete the old shards.")
    write_json_atomic(plan_path, plan)

    pending = [task for task in tasks if not os.path.exists(os.path.join(out, task.name))]
    done_images = sum(len(task.rows) for task in tasks) - sum(len(task.rows) for task in pending)
    if len(pending) < len(tasks):
        print(f"[make_shards] resuming: {len(tasks) - len(pending)} of {len(tasks)} shards already written", flush=True)
    progress = _Progress(len(listing), done_images)
    waiting = {task.name for task in pending}
    results = {task.name: written_shard(task, out) for task in tasks if task.name not in waiting}
    try:
        arguments = [(task, src, out, check) for task in pending]
        if workers > 1 and len(pending) > 1:
            with multiprocessing.get_context("fork").Pool(workers) as pool:
                for result in pool.imap_unordered(_write_shard_star, arguments):
                    results[result.name] = result
                    progress.advance(result.count + len(result.skipped))
        else:
            for argument in arguments:
                result = _write_shard_star(argument)
                results[result.name] = result
                progress.advance(result.count + len(result.skipped))
    finally:
        progress.close()

    ordered = [results[task.name] for task in tasks]
    skipped = [{"path": path, "reason": reason} for result in ordered for path, reason in result.skipped]
    index = {
        "format": INDEX_FORMAT,
        "version": INDEX_VERSION,
        "src": src,
        "prefix": prefix,
        "classes": listing.classes,
        "total": sum(result.count for result in ordered),
        "unlabeled": sum(result.unlabeled for result in ordered),
        "checked": check,
        "skipped_corrupt": len(skipped),
        "skipped": skipped[:MAX_LISTED_SKIPS],
        "shuffled": shuffle,
        "seed": seed,
        "shards": [{"name": result.name, "count": result.count, "unlabeled": result.unlabeled} for result in ordered],
    }
    index_path = os.path.join(out, f"{prefix}.json")
    write_json_atomic(index_path, index)
    for entry in skipped[:10]:
        print(f"[make_shards] skipped {entry['path']}: {entry['reason']}", file=sys.stderr, flush=True)
    more = f" (the first {MAX_LISTED_SKIPS} named in the index)" if len(skipped) > MAX_LISTED_SKIPS else ""
    print(f"[make_shards] {index['total']} images ({len(listing.classes)} classes) in {len(tasks)} shards: "
          f"{os.path.join(out, prefix)}-{{000000..{len(tasks) - 1:06d}}}.tar, index {index_path}; "
          f"{len(skipped)} files skipped as corrupt{more}" + ("" if check else " (not checked: --no-check)"),
          flush=True)
    return index


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m openmagvit2.data.make_shards", description=__doc__.split("\n")[0])
    parser.add_argument("--src", required=True, help="image folder: <src>/<class>/*.JPEG and/or loose images")
    parser.add_argument("--out", required=True, help="output folder for <prefix>-NNNNNN.tar and <prefix>.json")
    parser.add_argument("--prefix", default=None, help="shard name prefix (default: the name of --src, e.g. train)")
    parser.add_argument("--shard-size", type=int, default=1000, help="images per shard (default 1000)")
    parser.add_argument("--workers", type=int, default=max(1, min(8, os.cpu_count() or 1)),
                        help="shards written in parallel (default: min(8, CPUs))")
    parser.add_argument("--seed", type=int, default=0, help="seed of the one-off sample shuffle (default 0)")
    parser.add_argument("--no-shuffle", action="store_true", help="keep the sorted order instead of shuffling")
    parser.add_argument("--no-check", action="store_true",
                        help="pack every file as it is, without decode-checking it (the loaders skip broken ones)")
    args = parser.parse_args(argv)
    try:
        convert(args.src, args.out, args.prefix, args.shard_size, args.workers, not args.no_shuffle, args.seed,
                not args.no_check)
    except (ValueError, OSError) as error:
        print(f"make_shards: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
