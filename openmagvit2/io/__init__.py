"""File input and output shared by every loader and writer: safe checkpoint reading and atomic writes."""
from openmagvit2.io.atomic import atomic_write, default_file_mode
from openmagvit2.io.safe_load import (CorruptCheckpointError, ForeignGlobal, ForeignObject, UnsafeCheckpointError,
                                      read_checkpoint, read_checkpoint_bytes)

__all__ = ["CorruptCheckpointError", "ForeignGlobal", "ForeignObject", "UnsafeCheckpointError", "atomic_write",
           "default_file_mode", "read_checkpoint", "read_checkpoint_bytes"]
