"""Data sources and loaders: bundled sample photos, ImageNet folders, WebDataset shards (and their converter).

Public API (see ``docs/architecture.md``):

- :func:`build_train_loader` -> endless, exactly resumable training batches ``b 3 H W`` in [-1, 1].
- :func:`build_val_loader` -> one ordered pass over the validation set, every image once across ranks.
"""

from .build import build_train_loader, build_val_loader
from .decode import CorruptImageError, decode_image

__all__ = ["build_train_loader", "build_val_loader", "decode_image", "CorruptImageError"]
