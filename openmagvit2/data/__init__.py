"""Data sources and loaders: bundled sample photos, ImageNet folders, WebDataset image and video shards (and their
converters), and the token shards of the Stage II generator (written by ``python -m openmagvit2.tokenize``).

Public API (see ``docs/architecture.md``, ``docs/data.md``):

- :func:`build_train_loader` -> endless, exactly resumable training batches ``b 3 H W`` in [-1, 1]
  (``data=video_wds``: clips ``b 3 T H W``); with ``labels=True`` ``(images, labels b int64)``; ``data=tokens``:
  ``(indices b n int64, labels b int64)``.
- :func:`build_val_loader` -> one ordered pass over the validation set, every image once across ranks (same
  ``labels`` switch).
- :func:`has_validation_set` -> False for ``data.val_dir=null`` ("no validation set").
- :class:`DataError`: raised by a training loader mid-run when the data goes bad (files disappearing, too many
  unusable samples); a one-line message.
"""

from .build import NoValidationSetError, build_train_loader, build_val_loader, has_validation_set
from .decode import CorruptImageError, UnusableImageError, decode_image
from .loaders import DataError
from .tokens import TokenTrainLoader, TokenValLoader, read_token_split

__all__ = ["build_train_loader", "build_val_loader", "has_validation_set", "decode_image",
           "CorruptImageError", "UnusableImageError", "DataError", "NoValidationSetError", "TokenTrainLoader",
           "TokenValLoader", "read_token_split"]
