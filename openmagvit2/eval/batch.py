"""What every metric sees for one batch, and the tiny interface each metric implements."""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field

import torch
from einops import rearrange

from openmagvit2.eval.images import to_uint8


@dataclass
class EvalBatch:
    """One batch of originals and their reconstructions, with the token indices the quantizer chose.

    images, reconstructions: `b 3 h w` float in [-1, 1] (reconstructions already clamped). For clips (`from_clips`)
    these hold every frame, `(b t) 3 h w`, so per-image metrics (PSNR, SSIM, LPIPS) are per-frame means, and
    `frames_per_clip` is t; the `*clips*` views give `b 3 t h w` back (FVD). indices: integer token ids of any shape
    (`b h' w'`, `b t' h' w'`); uint8 views are computed once and shared by the metrics.
    """

    images: torch.Tensor
    reconstructions: torch.Tensor
    indices: torch.Tensor
    uint8_mode: str = "round"
    frames_per_clip: int | None = None
    _uint8: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)

    @classmethod
    def from_clips(cls, clips: torch.Tensor, reconstructions: torch.Tensor, indices: torch.Tensor,
                   uint8_mode: str = "round") -> EvalBatch:
        """Clips and their reconstructions `b 3 t h w` -> a batch of their frames that remembers t."""
        if clips.ndim != 5 or reconstructions.shape != clips.shape:
            raise ValueError(f"from_clips expects clips and reconstructions of one shape (b, 3, t, h, w), got "
                             f"{tuple(clips.shape)} and {tuple(reconstructions.shape)}.")
        frames, reconstructed = (rearrange(x, "b c t h w -> (b t) c h w") for x in (clips, reconstructions))
        return cls(frames, reconstructed, indices, uint8_mode, frames_per_clip=clips.shape[2])

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

    @property
    def clips_uint8(self) -> torch.Tensor:
        """The original clips `b 3 t h w` as uint8 (a view of `images_uint8`)."""
        return self._as_clips(self.images_uint8)

    @property
    def reconstructed_clips_uint8(self) -> torch.Tensor:
        """The reconstructed clips `b 3 t h w` as uint8 (a view of `reconstructions_uint8`)."""
        return self._as_clips(self.reconstructions_uint8)

    def _as_clips(self, frames: torch.Tensor) -> torch.Tensor:
        if self.frames_per_clip is None:
            raise ValueError("this batch holds images, not clips: video metrics (rfvd) need clips `b 3 t H W`; "
                             "use rfid for images.")
        return rearrange(frames, "(b t) c h w -> b c t h w", t=self.frames_per_clip)


class Metric(ABC):
    """Accumulates sums over batches; `state()` lists the tensors that are summed across ranks before `compute()`.

    Keeping every metric as sums makes the distributed reduction one `all_reduce(SUM)` per tensor, and counts each
    image (or clip) exactly once whatever the number of ranks.
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
