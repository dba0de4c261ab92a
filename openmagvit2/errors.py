"""The one error type for a config value a user can fix (train.py, eval.py and the launcher print it as one line)."""
from __future__ import annotations


class ConfigError(ValueError):
    """A config value a user can fix; the message names the key, the bad value and what is allowed."""
