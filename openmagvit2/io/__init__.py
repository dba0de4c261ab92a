"""File input and output shared by every loader and writer: safe checkpoint reading (`safe_load`, imports torch)
and atomic writes (`atomic`, standard library only, so that data tools stay light). Names load on first use."""
from __future__ import annotations

from typing import Any

_EXPORTS = {"atomic_write": "atomic", "default_file_mode": "atomic", "CheckpointError": "safe_load",
            "CorruptCheckpointError": "safe_load", "ForeignGlobal": "safe_load", "ForeignObject": "safe_load",
            "UnsafeCheckpointError": "safe_load", "read_checkpoint": "safe_load", "read_checkpoint_bytes": "safe_load"}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(f"openmagvit2.io.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'openmagvit2.io' has no attribute {name!r}")
