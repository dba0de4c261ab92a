"""The `loss.*` config group's typed schema, `LossConfig`, lives with the other groups in `openmagvit2/config.py`."""
from openmagvit2.config import LossConfig

__all__ = ["LossConfig"]
