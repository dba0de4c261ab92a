"""openmagvit2: train and evaluate MAGVIT-2-style visual tokenizers (lookup-free quantization) at scale.

`from openmagvit2 import Tokenizer, VideoTokenizer, ARModel, LFQ` is the public entry point. Importing the package
itself stays light (no torch import) so that command-line tools and config validation start fast; the names load on
first use.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["LFQ", "ARModel", "Tokenizer", "VideoTokenizer", "__version__"]

if TYPE_CHECKING:
    from openmagvit2.generation import ARModel
    from openmagvit2.models import LFQ, Tokenizer, VideoTokenizer


def __getattr__(name: str) -> Any:
    """Import `Tokenizer`, `VideoTokenizer`, `LFQ` and `ARModel` lazily (PEP 562)."""
    if name in ("Tokenizer", "VideoTokenizer", "LFQ"):
        from openmagvit2 import models

        return getattr(models, name)
    if name == "ARModel":
        from openmagvit2 import generation

        return generation.ARModel
    raise AttributeError(f"module 'openmagvit2' has no attribute {name!r}")
