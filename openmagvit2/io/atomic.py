"""The one atomic writer: checkpoints, data shards and downloaded weights all go through `atomic_write`.

Write into a temporary file in the destination's folder (same file system, so the rename is atomic), flush and
fsync, give it the mode a plain `open()` would have (0o666 minus the umask; `mkstemp` creates 0600, which hid
checkpoints from the rest of a team), then rename over the destination. On any error the temporary file is removed
and the destination is untouched. Temporary names are `.<name>.<random>.tmp`, so that files left by a killed process
can be found (`stale_temp_files`).
"""
from __future__ import annotations

import os
import re
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

_UMASK_LOCK = threading.Lock()


def current_umask() -> int:
    """The process umask, read from /proc on Linux; elsewhere set-and-restored under a lock (os.umask has no getter)."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    with _UMASK_LOCK:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def default_file_mode() -> int:
    """The permissions `open(path, "w")` would give a new file: 0o666 & ~umask."""
    return 0o666 & ~current_umask()


def temp_name_pattern(name: str) -> re.Pattern[str]:
    """Temporary files `atomic_write` makes for a destination called `name`."""
    return re.compile(rf"^\.{re.escape(name)}\.[^.]+\.tmp$")


def fsync_directory(folder: Path) -> None:
    """Make a rename in `folder` durable (a no-op where directories cannot be opened)."""
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


@contextmanager
def atomic_write(path: str | Path, text: bool = False, encoding: str = "utf-8") -> Iterator[IO]:
    """Yield a file object open for writing; on a clean exit its content replaces `path` in one rename.

    The body may raise to abandon the write (e.g. after a failed checksum): the temporary file is removed.
    `handle.name` is the temporary path, for checks that read the written file back.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temp_path = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(descriptor)  # reopened by name, so that `handle.name` is the path
    try:
        with open(temp_path, "w" if text else "wb", **({"encoding": encoding} if text else {})) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temp_path, default_file_mode())
        os.replace(temp_path, path)
    except BaseException:
        Path(temp_path).unlink(missing_ok=True)
        raise
    fsync_directory(path.parent)
