"""rFVD: Frechet distance between I3D embeddings of the original clips and of their reconstructions.

The protocol of Open-MAGVIT2's `evaluation_video.py` / `metrics/fvd.py` (VideoGPT's FVD code):

1. clips `b 3 t H W` in [-1, 1] -> uint8 (the batch's `uint8_mode`; the reference truncates, so pass
   `uint8_mode="truncate"` to reproduce its numbers);
2. every frame resized to 224x224, bilinear with align_corners=False, on the float uint8 values; then `2x/255 - 1`;
3. `InceptionI3d(400)` with VideoGPT's Kinetics-400 weights (`openmagvit2.eval.i3d`) -> 400 logits averaged over
   time per clip;
4. Frechet distance between all real and all reconstructed embeddings, unbiased covariances (no sub-sampling), from
   streaming float64 sums (`openmagvit2.eval.frechet`, shared with rFID).

Clips need at least 9 frames (the published protocol uses 17).
"""
from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from einops import rearrange

from openmagvit2.eval.batch import EvalBatch
from openmagvit2.eval.frechet import FrechetMetric
from openmagvit2.eval.i3d import I3D_FEATURES, I3D_SIZE, build_i3d

# Maps clips `b 3 t 224 224` in [-1, 1] to `b d` embeddings.
ClipFeatureExtractor = Callable[[torch.Tensor], torch.Tensor]


def prepare_for_i3d(clips_uint8: torch.Tensor) -> torch.Tensor:
    """uint8 clips `b 3 t h w` -> float clips `b 3 t 224 224` in [-1, 1] on the same device, as the reference does."""
    frames = rearrange(clips_uint8, "b c t h w -> (b t) c h w").float()
    resized = F.interpolate(frames, size=(I3D_SIZE, I3D_SIZE), mode="bilinear", align_corners=False)
    resized = resized.clamp(0.0, 255.0)  # bilinear weights summing to 1 + eps can step past 255 by float rounding
    return rearrange(2.0 * resized / 255.0 - 1.0, "(b t) c h w -> b c t h w", b=clips_uint8.shape[0])


class FVD(FrechetMetric):
    """rFVD between the original clips and their reconstructions (see the module docstring for the protocol)."""

    name, samples = "rfvd", "clips"

    def __init__(self, device: torch.device, extractor: ClipFeatureExtractor | None = None,
                 feature_dim: int = I3D_FEATURES) -> None:
        super().__init__(feature_dim, device)
        self.extractor = extractor if extractor is not None else build_i3d(str(device))

    def features(self, batch: EvalBatch, reconstructed: bool) -> torch.Tensor:
        clips = batch.reconstructed_clips_uint8 if reconstructed else batch.clips_uint8
        return self.extractor(prepare_for_i3d(clips)).float()
