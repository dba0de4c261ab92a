"""Training checkpoints: everything needed for an exact resume, written atomically, the last k kept.

Layout: `<run_dir>/checkpoints/step_XXXXXXXX.pt`, a `torch.save`d dict with `format="openmagvit2"`, and beside it
`step_XXXXXXXX.pt.sha256`, its SHA-256 recorded at save time. The same file is readable by
`Tokenizer.from_checkpoint` (keys `tokenizer_hparams`, `generator`, `generator_ema`).

Resuming (`load_latest_good`) takes the newest checkpoint that verifies and moves damaged ones aside; interrupted
saves leave temporary files that `remove_stale_temp_files` deletes at start-up.
"""
from __future__ import annotations

import errno
import hashlib
import logging
import os
import random
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch

from openmagvit2.io.atomic import atomic_write
from openmagvit2.io.checksum import file_sha256
from openmagvit2.io.safe_load import CorruptCheckpointError, read_checkpoint
from openmagvit2.models.loading import FORMAT  # one format tag: the tokenizer loaders read these files too

VERSION = 2  # 2: per-rank data states, the EMA counter under "ema", the W&B run id
_NAME = re.compile(r"^step_(\d{8,})\.pt$")
# Files an interrupted `save_atomically` leaves behind: `.step_XXXXXXXX.pt.<random>.tmp` (and the same for sidecars).
_TEMP_NAME = re.compile(r"^\.step_\d{8,}\.pt(\.sha256)?\.[^.]+\.tmp$")
CHECKSUM_SUFFIX = ".sha256"
# Free space wanted before a save, as a multiple of the newest checkpoint's size.
SPACE_MARGIN = 1.1

logger = logging.getLogger(__name__)


class DiskFullError(OSError):
    """A checkpoint could not be written for lack of space; the previous checkpoints are intact."""


def checkpoint_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / "checkpoints"


def checkpoint_path(run_dir: str | Path, step: int) -> Path:
    return checkpoint_dir(run_dir) / f"step_{step:08d}.pt"


def checksum_path(path: str | Path) -> Path:
    """The sidecar `step_XXXXXXXX.pt.sha256` holding the checkpoint's SHA-256 (`sha256sum -c` reads it)."""
    path = Path(path)
    return path.with_name(path.name + CHECKSUM_SUFFIX)


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """Checkpoints of a run, oldest first (by step, not by mtime, so copies between file systems are safe)."""
    return _checkpoints_in(checkpoint_dir(run_dir))


def _checkpoints_in(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _NAME.match(p.name))]
    return [p for _, p in sorted(found)]


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    checkpoints = list_checkpoints(run_dir)
    return checkpoints[-1] if checkpoints else None


class _HashingWriter:
    """A write-only file wrapper that hashes the bytes on their way to disk and keeps the OSError torch swallows.

    torch's zip writer writes strictly sequentially (it checks every offset), so the running hash is the hash of the
    file; when a write fails torch reports only `unexpected pos ...`, so the real error is kept here.
    """

    def __init__(self, handle: IO[bytes]) -> None:
        self.handle, self.digest, self.error = handle, hashlib.sha256(), None

    def write(self, data: bytes) -> int:
        try:
            written = self.handle.write(data)
        except OSError as error:
            self.error = error
            raise
        self.digest.update(data)
        return written

    def flush(self) -> None:
        self.handle.flush()


def _is_disk_full(error: BaseException, writer: _HashingWriter | None) -> bool:
    for candidate in (error, writer.error if writer else None):
        if isinstance(candidate, OSError) and candidate.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
    # What torch raises when its writer hits a full disk: "[enforce fail at inline_container.cc:...] unexpected pos".
    return isinstance(error, RuntimeError) and ("unexpected pos" in str(error) or "file write failed" in str(error))


def _megabytes(size: int) -> str:
    return f"{size / 2**20:.1f} MB"


def _free_bytes(folder: Path) -> int:
    return shutil.disk_usage(folder).free


def _make_room(path: Path, needed: int, keep_last: int) -> None:
    """Before a save, delete checkpoints that `prune(keep_last)` would delete after it, oldest first, while the disk
    has less than `needed` bytes free. The newest checkpoint is never deleted before its successor exists."""
    if keep_last <= 0:
        return
    existing = [p for p in _checkpoints_in(path.parent) if p != path]
    removable = existing[: max(0, len(existing) - (keep_last - 1))][: max(0, len(existing) - 1)]
    for old in removable:
        if _free_bytes(path.parent) >= needed:
            return
        logger.warning("only %s free in %s: deleting %s before saving (train.keep_last=%d would delete it after)",
                       _megabytes(_free_bytes(path.parent)), path.parent, old.name, keep_last)
        _remove_checkpoint(old)


def save_atomically(state: dict[str, Any], path: Path, keep_last: int = 0) -> None:
    """Write to a temporary file in the same directory, fsync, then rename: a crash never leaves half a file.

    The SHA-256 of the bytes is computed while they are written and stored beside the file in
    `step_XXXXXXXX.pt.sha256` (a sidecar rather than inside the file: the digest covers every byte, including the
    pickle, and can be checked before anything is unpickled, or by hand with `sha256sum -c`). The sidecar is renamed
    into place before the checkpoint, so a checkpoint saved by this function always has one. The file gets the
    umask's permissions (`openmagvit2.io.atomic_write`).

    When the disk has less free space than the newest checkpoint's size (x1.1) and `keep_last` > 0, the checkpoints
    that `prune(keep_last)` would delete after this save are deleted first. A full disk raises `DiskFullError`, with
    the temporary file removed and the previous checkpoints untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    previous = [p for p in _checkpoints_in(path.parent) if p != path]
    needed = int(previous[-1].stat().st_size * SPACE_MARGIN) if previous else 0
    _make_room(path, needed, keep_last)
    writer = None
    try:
        with atomic_write(path) as handle:
            writer = _HashingWriter(handle)
            torch.save(state, writer)
            with atomic_write(checksum_path(path), text=True) as sidecar:
                sidecar.write(f"{writer.digest.hexdigest()}  {path.name}\n")
    except BaseException as error:
        checksum_path(path).unlink(missing_ok=True)  # the checkpoint was not renamed into place: no orphan sidecar
        if not isinstance(error, (OSError, RuntimeError)) or not _is_disk_full(error, writer):
            raise
        size = f"about {_megabytes(needed)}" if needed else "more"
        full = DiskFullError(f"could not save {path.name}: the disk holding {path.parent} is full "
                             f"({_megabytes(_free_bytes(path.parent))} free, the checkpoint needs {size}); free some "
                             f"space or lower train.keep_last, then resume: earlier checkpoints are intact and the "
                             f"partial file was removed.")
        full.errno = errno.ENOSPC
        raise full from None


def _remove_checkpoint(path: Path) -> None:
    path.unlink(missing_ok=True)
    checksum_path(path).unlink(missing_ok=True)


def prune(run_dir: str | Path, keep_last: int) -> None:
    """Delete all but the newest `keep_last` checkpoints and their checksums (keep_last <= 0 keeps everything)."""
    if keep_last <= 0:
        return
    for old in list_checkpoints(run_dir)[:-keep_last]:
        _remove_checkpoint(old)


def remove_stale_temp_files(run_dir: str | Path) -> int:
    """Delete what interrupted saves left in the run's checkpoint folder; returns the bytes freed.

    That is temporary files (`.step_XXXXXXXX.pt.<random>.tmp`) and checksum sidecars whose checkpoint was never
    renamed into place. Call it on rank 0 at start-up, before any save.
    """
    folder = checkpoint_dir(run_dir)
    if not folder.is_dir():
        return 0
    freed = 0
    for candidate in folder.iterdir():
        stale = _TEMP_NAME.match(candidate.name) or (
            candidate.name.endswith(CHECKSUM_SUFFIX) and _NAME.match(candidate.name[: -len(CHECKSUM_SUFFIX)])
            and not candidate.with_name(candidate.name[: -len(CHECKSUM_SUFFIX)]).exists())
        if stale and candidate.is_file():
            try:
                size = candidate.stat().st_size
                candidate.unlink()
            except FileNotFoundError:
                continue
            freed += size
    return freed


def verify_checksum(path: str | Path) -> bool:
    """Compare the file with its `.sha256` sidecar: True when it matches, False when there is no sidecar (files
    from older versions); `CorruptCheckpointError` naming the file when it differs."""
    path = Path(path)
    sidecar = checksum_path(path)
    try:
        recorded = sidecar.read_text().split()[0].lower()
    except FileNotFoundError:
        return False
    except (OSError, IndexError, UnicodeDecodeError):
        raise CorruptCheckpointError(f"checkpoint {path}: its checksum file {sidecar.name} is unreadable; "
                                     "use another checkpoint.") from None
    if file_sha256(path) != recorded:
        raise CorruptCheckpointError(f"checkpoint {path} is damaged: its SHA-256 differs from the one recorded when "
                                     f"it was saved ({sidecar.name}); use another checkpoint.")
    return True


def load(path: str | Path) -> dict[str, Any]:
    """Load one of our checkpoints on CPU, refusing files that are not ours with a clear message.

    The checksum is verified first when the file has one; empty, truncated, garbage and bit-flipped files raise
    `CorruptCheckpointError` naming the file. Nothing in the file is run (`openmagvit2.io.read_checkpoint`).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist; check train.resume or the run dir.")
    verify_checksum(path)
    state = read_checkpoint(path, map_location="cpu")
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ValueError(f"{path} is not an openmagvit2 training checkpoint (no format={FORMAT!r} field); "
                         "released .ckpt files load with Tokenizer.from_checkpoint, not train.resume.")
    return state


def load_latest_good(run_dir: str | Path, log: Callable[[str], Any] | None = None, move_aside: bool = True
                     ) -> tuple[Path, dict[str, Any]] | None:
    """The newest checkpoint that loads and verifies, as (path, state); None when the run has none.

    Damaged ones are skipped, newest first; with `move_aside` (rank 0) each is renamed to `<name>.corrupt` (its
    sidecar to `<name>.sha256.corrupt`) and `log` gets one line naming it. Other ranks pass move_aside=False and
    reach the same choice: a file another rank has just moved aside is skipped as well.
    """
    for path in reversed(list_checkpoints(run_dir)):
        try:
            return path, load(path)
        except FileNotFoundError:
            continue
        except CorruptCheckpointError as error:
            if move_aside:
                aside = path.with_name(path.name + ".corrupt")
                os.replace(path, aside)
                if checksum_path(path).exists():
                    os.replace(checksum_path(path), aside.with_name(checksum_path(path).name + ".corrupt"))
                if log is not None:
                    log(f"{error} Moved it aside to {aside.name}; trying the previous checkpoint.")
    return None


def latest_verified(run_dir: str | Path) -> Path | None:
    """The newest checkpoint whose SHA-256 matches its sidecar (for "the last good checkpoint is ..." messages)."""
    for path in reversed(list_checkpoints(run_dir)):
        try:
            if verify_checksum(path):
                return path
        except (CorruptCheckpointError, FileNotFoundError):
            continue
    return None


def capture_rng_state() -> dict[str, Any]:
    """This process's RNG states (Python, NumPy, torch CPU and, when present, CUDA)."""
    # NumPy's key array is stored as a tensor so that checkpoints load with torch's weights-only reader.
    kind, keys, position, has_gauss, cached_gaussian = np.random.get_state()
    state = {"python": random.getstate(), "numpy": (kind, torch.from_numpy(keys.copy()), position, has_gauss,
                                                    cached_gaussian), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    kind, keys, position, has_gauss, cached_gaussian = state["numpy"]
    np.random.set_state((kind, keys.numpy(), position, has_gauss, cached_gaussian))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
