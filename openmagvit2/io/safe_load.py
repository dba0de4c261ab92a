"""Reading checkpoints without running code from them. Every loader in the project goes through `read_checkpoint`.

1. `torch.load(weights_only=True)`: torch's own allowlist (tensors, dtypes, plain containers). Our checkpoints and
   plain state dicts load here.
2. Released Lightning `.ckpt` files also pickle objects of classes we do not have (hyper-parameters, callbacks,
   `argparse.Namespace`). Those files are read by `restricted_pickle.RestrictedUnpickler`: it resolves only the
   globals torch's safe loader allows, and every other global becomes an inert `ForeignGlobal`. "Calling" one
   (REDUCE, NEWOBJ, INST) gives a `ForeignObject` that records the name, the arguments and any state; nothing the
   file names is imported or called, so a `__reduce__` that returns `os.system` has no effect.

A file that needs more (a foreign object where a tensor must be rebuilt, a TorchScript archive, a global from `os`,
`subprocess`, `builtins.eval`...) raises `UnsafeCheckpointError`; a file that is not a readable checkpoint at all
(empty, truncated, garbage) raises `CorruptCheckpointError`. Both messages are one line naming the file.
"""
from __future__ import annotations

import io
import os
import pickle
import re
import tarfile
import warnings
import zipfile
from pathlib import Path
from typing import Any

import torch

from openmagvit2.io.restricted_pickle import ForeignGlobal, ForeignObject, Refusal, RestrictedPickleModule

__all__ = ["CheckpointError", "CorruptCheckpointError", "ForeignGlobal", "ForeignObject", "UnsafeCheckpointError",
           "read_checkpoint", "read_checkpoint_bytes"]


class CheckpointError(ValueError):
    """A checkpoint file cannot be used; the message is one line naming the file and what to do."""


class UnsafeCheckpointError(CheckpointError):
    """The file needs something the restricted reader will not do (run code, rebuild a foreign tensor type)."""


class CorruptCheckpointError(CheckpointError):
    """The file is empty, truncated, bit-flipped or not a torch checkpoint at all."""


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    text = f"{type(error).__name__}: {text.splitlines()[0]}" if text else type(error).__name__
    return text if len(text) <= 160 else text[:157] + "..."


def _is_torchscript(source: Path | bytes) -> bool:
    handle = io.BytesIO(source) if isinstance(source, bytes) else open(source, "rb")
    with handle:
        if not zipfile.is_zipfile(handle):
            return False
        handle.seek(0)
        with zipfile.ZipFile(handle) as archive:
            return any(name.endswith("/constants.pkl") or name == "constants.pkl" for name in archive.namelist())


def _is_tar(path: Path) -> bool:
    try:
        return tarfile.is_tarfile(path)
    except OSError:
        return False


def _restricted_load(source: Path | bytes, map_location: Any) -> Any:
    # weights_only=False is what makes torch.load use `pickle_module`; that module's unpickler resolves nothing
    # outside the allowlist and never calls a foreign global, so no code from the file runs (see the module doc).
    stream = io.BytesIO(source) if isinstance(source, bytes) else source
    return torch.load(stream, map_location=map_location, pickle_module=RestrictedPickleModule, weights_only=False)


def read_checkpoint(path: str | Path, map_location: str | torch.device = "cpu", allow_foreign: bool = True,
                    what: str = "checkpoint") -> Any:
    """Load a torch file without running code from it (see the module docstring).

    `allow_foreign=False` accepts only what `torch.load(weights_only=True)` accepts and refuses the rest.
    Raises `FileNotFoundError`, `CorruptCheckpointError` or `UnsafeCheckpointError`, each with a one-line message.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no {what} at {path}.")
    if path.stat().st_size == 0:
        raise CorruptCheckpointError(f"{what} {path} is empty (0 bytes): an interrupted copy or a full disk; "
                                     "use another checkpoint.")
    return _read(path, f"{what} {path}", map_location, allow_foreign)


def read_checkpoint_bytes(blob: bytes, source: str, map_location: str | torch.device = "cpu",
                          allow_foreign: bool = False) -> Any:
    """`read_checkpoint` for bytes from `torch.save` to a buffer (e.g. objects gathered from other ranks)."""
    return _read(blob, source, map_location, allow_foreign)


def _read(source: Path | bytes, label: str, map_location: Any, allow_foreign: bool) -> Any:
    stream = io.BytesIO(source) if isinstance(source, bytes) else source
    try:
        torchscript = _is_torchscript(source)
    except (OSError, zipfile.BadZipFile, ValueError, EOFError):
        torchscript = False  # not a readable zip: torch.load below says what is wrong with it
    if torchscript:
        raise UnsafeCheckpointError(f"refusing {label}: it is a TorchScript archive (code), not a checkpoint.")
    if not isinstance(source, bytes) and _is_tar(source):
        raise UnsafeCheckpointError(f"refusing {label}: it is a tar-format file from torch < 0.4, whose reader "
                                    "extracts archive members to disk; re-save it with a recent torch.")
    try:
        with warnings.catch_warnings():  # plain pickles (protocol > 2) make torch warn; the result is what matters
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            return torch.load(stream, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        refusal = error  # foreign globals (or garbage, which the restricted reader reports as corrupt below)
    except Exception as error:  # noqa: BLE001 - torch raises RuntimeError/EOFError/ValueError/... for damaged files
        raise CorruptCheckpointError(f"{label} is damaged or not a torch file ({_first_line(error)}); "
                                     "use another checkpoint.") from None
    if os.environ.get("TORCH_FORCE_WEIGHTS_ONLY_LOAD", "0").lower() in ("1", "y", "yes", "true"):
        allow_foreign = False  # torch would refuse the restricted reader's pickle_module anyway
    if not allow_foreign:
        named = re.search(r"GLOBAL (\S+)", str(refusal))
        detail = f"it names {named.group(1)}" if named else f"torch's safe loader: {_first_line(refusal)}"
        raise UnsafeCheckpointError(f"refusing {label}: it holds Python objects besides tensors ({detail}).")
    try:
        return _restricted_load(source, map_location)
    except Refusal as error:
        raise UnsafeCheckpointError(f"refusing {label}: {error}; nothing from it was run.") from None
    except Exception as error:  # noqa: BLE001 - anything else means the bytes are not a well-formed checkpoint
        raise CorruptCheckpointError(f"{label} is damaged or not a torch file ({_first_line(error)}); "
                                     "use another checkpoint.") from None
