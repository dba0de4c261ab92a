"""What every metric sees for one batch, and the tiny interface each metric implements."""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field

import torch

from openmagvit2.eval.images import to_uint8


@dataclass
class EvalBatch:
    """One batch of originals and their reconstructions, with the token indices the quantizer chose.

    images, reconstructions: `b 3 h w` float in [-1, 1] (reconstructions already clamped);
    indices: integer token ids of any shape (`b h' w'`); uint8 views are computed once and shared by the metrics.
    """

    images: torch.Tensor
    reconstructions: torch.Tensor
    indices: torch.Tensor
    uint8_mode: str = "round"
    _uint8: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)

    @property
    def images_uint8(self) -> torch.Tensor:
        if "images" not in self._uint8:
            self._uint8["images"] = to_uint8(self.images, self.uint8_mode)
        return self._uint8["images"]

    @property
    def reconstructions_uint8(self) -> torch.Tensor:
        if "reconstructions" not in self._uint8:
            self._uint8["reconstructions"] = to_uint8(self.reconstructions, self.uint8_mode)
        return self._uint8["reconstructions"]


class Metric(ABC):
    """Accumulates sums over batches; `state()` lists the tensors that are summed across ranks before `compute()`.

    Keeping every metric as sums makes the distributed reduction one `all_reduce(SUM)` per tensor, and counts each
    image exactly once whatever the number of ranks.
    """

    @abstractmethod
    def update(self, batch: EvalBatch) -> None:
        """Add one batch to the running sums."""

    @abstractmethod
    def state(self) -> list[torch.Tensor]:
        """The running sums, reduced in place with SUM across ranks."""

    @abstractmethod
    def compute(self) -> dict[str, float]:
        """Final values from the (reduced) sums."""
