"""rFID: Frechet distance between Inception features of the originals and of their reconstructions, via clean-fid.

Feature networks and pre-processing are clean-fid's own (`cleanfid.resize.build_resizer`, `InceptionV3W`,
`cleanfid.features.feature_extractor`), and the distance is `cleanfid.fid.frechet_distance`. Two modes:

- `clean` (default): 8-bit images (as if saved to PNG) resized to 299x299 by clean-fid's PIL bicubic float resizer,
  then the TorchScript Inception. This is the resizing-artefact-free FID of Parmar et al. (2022).
- `legacy_pytorch`: the pytorch-fid network and its bilinear resize (align_corners=False) on the unquantised [0, 255]
  floats, which is what the published Open-MAGVIT2 numbers used; compare with the paper only in this mode.

Each set keeps streaming float64 sums of its features (`openmagvit2.eval.frechet`, shared with rFVD): one all-reduce
across ranks, and the same mean/covariance as clean-fid's `fid_from_feats` to float64 precision.
"""
from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange

from openmagvit2 import weights
from openmagvit2.eval.batch import EvalBatch
from openmagvit2.eval.frechet import FrechetMetric
from openmagvit2.eval.images import to_pixels, to_uint8

FID_MODES = ("clean", "legacy_pytorch")
INCEPTION_SIZE = 299
INCEPTION_FEATURES = 2048  # pool3 features of both Inception variants
WEIGHTS_FOR_MODE = {"clean": "inception_clean", "legacy_pytorch": "inception_legacy"}

# Maps `b 3 299 299` float pixels in [0, 255] to `b d` features.
FeatureExtractor = Callable[[torch.Tensor], torch.Tensor]


def check_mode(mode: str) -> None:
    if mode not in FID_MODES:
        raise ValueError(f"fid_mode must be one of {FID_MODES}, got {mode!r}.")


@lru_cache(maxsize=None)
def build_inception(mode: str, device: str) -> FeatureExtractor:
    """clean-fid's Inception for `mode` on `device` (cached: the trainer evaluates repeatedly); weights must exist."""
    check_mode(mode)
    from cleanfid.features import feature_extractor
    from cleanfid.inception_torchscript import InceptionV3W

    path = weights.locate(WEIGHTS_FOR_MODE[mode])
    if mode == "clean":
        # clean-fid's own loader hard-codes /tmp; the same class pointed at wherever the file actually is.
        model = InceptionV3W(str(path.parent), download=False, resize_inside=False).to(device).eval()
        return lambda pixels: model(pixels)
    # pytorch-fid weights load through torch.hub's cache, where weights.locate() just found them.
    return feature_extractor(name="pytorch_inception", device=torch.device(device), use_dataparallel=False)


@lru_cache(maxsize=1)
def _resize_pool() -> ThreadPoolExecutor:
    # PIL releases the GIL while resizing, so threads scale with cores.
    return ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1), thread_name_prefix="cleanfid-resize")


def prepare_for_inception(images: torch.Tensor, mode: str, uint8_mode: str = "round") -> torch.Tensor:
    """`b 3 h w` in [-1, 1] -> `b 3 299 299` float pixels in [0, 255] on the same device, as clean-fid prepares them."""
    check_mode(mode)
    if mode == "legacy_pytorch":
        # cleanfid.resize.make_resizer("PyTorch", False, "bilinear", (299, 299)), batched on the device.
        resized = F.interpolate(to_pixels(images), size=(INCEPTION_SIZE, INCEPTION_SIZE), mode="bilinear",
                                align_corners=False)
        return resized.clamp(0.0, 255.0)
    from cleanfid.resize import build_resizer

    resize = build_resizer("clean")  # PIL bicubic on float32 channels, per image, on the CPU
    pixels = rearrange(to_uint8(images, uint8_mode), "b c h w -> b h w c").cpu().numpy()
    resized = list(_resize_pool().map(resize, pixels))
    stacked = torch.from_numpy(np.stack(resized).astype(np.float32))
    return rearrange(stacked, "b h w c -> b c h w").to(images.device, non_blocking=True)


class FID(FrechetMetric):
    """rFID between the originals and the reconstructions (see the module docstring for the two modes)."""

    name = "rfid"

    def __init__(self, device: torch.device, mode: str = "clean", uint8_mode: str = "round",
                 extractor: FeatureExtractor | None = None, feature_dim: int = INCEPTION_FEATURES) -> None:
        check_mode(mode)
        super().__init__(feature_dim, device)
        self.mode, self.uint8_mode = mode, uint8_mode
        self.extractor = extractor if extractor is not None else build_inception(mode, str(device))

    def features(self, batch: EvalBatch, reconstructed: bool) -> torch.Tensor:
        images = batch.reconstructions if reconstructed else batch.images
        return self.extractor(prepare_for_inception(images, self.mode, self.uint8_mode)).float()
