"""rFID: Frechet distance between Inception features of the originals and of their reconstructions, via clean-fid.

Feature networks and pre-processing are clean-fid's own (`cleanfid.resize.build_resizer`, `InceptionV3W`,
`cleanfid.features.feature_extractor`), and the distance is `cleanfid.fid.frechet_distance`. Two modes:

- `clean` (default): 8-bit images (as if saved to PNG) resized to 299x299 by clean-fid's PIL bicubic float resizer,
  then the TorchScript Inception. This is the resizing-artefact-free FID of Parmar et al. (2022).
- `legacy_pytorch`: the pytorch-fid network and its bilinear resize (align_corners=False) on the unquantised [0, 255]
  floats, which is what the published Open-MAGVIT2 numbers used; compare with the paper only in this mode.

Instead of keeping all N x 2048 features, each set keeps streaming sums (count, sum, sum of outer products) in
float64: the reduction across ranks is one all-reduce, and mean/covariance equal `np.mean` / `np.cov` of the stacked
features (`fid_from_feats`) to float64 precision.
"""
from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange

from openmagvit2 import weights
from openmagvit2.eval.batch import EvalBatch, Metric
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


class FeatureStatistics:
    """Streaming count, sum and sum of outer products of `b d` features, in float64."""

    def __init__(self, feature_dim: int, device: torch.device) -> None:
        self.count = torch.zeros((), dtype=torch.float64, device=device)
        self.total = torch.zeros(feature_dim, dtype=torch.float64, device=device)
        self.outer = torch.zeros(feature_dim, feature_dim, dtype=torch.float64, device=device)

    def update(self, features: torch.Tensor) -> None:
        features = features.detach().reshape(features.shape[0], -1).double()
        if features.shape[1] != self.total.numel():
            raise ValueError(f"the feature extractor returned {features.shape[1]} features per image, expected "
                             f"{self.total.numel()}; pass feature_dim matching the extractor.")
        self.count += features.shape[0]
        self.total += features.sum(dim=0)
        self.outer += features.T @ features

    def mean_and_covariance(self) -> tuple[np.ndarray, np.ndarray]:
        """`np.mean(feats, 0)` and `np.cov(feats, rowvar=False)` (unbiased) of everything seen."""
        if self.count.item() < 2:
            raise ValueError("FID needs at least 2 images; evaluate on more images (max_images) or drop rfid.")
        n = self.count.item()
        mean = self.total / n
        covariance = (self.outer - n * torch.outer(mean, mean)) / (n - 1)
        return mean.cpu().numpy(), covariance.cpu().numpy()


class FID(Metric):
    """rFID between the originals and the reconstructions (see the module docstring for the two modes)."""

    def __init__(self, device: torch.device, mode: str = "clean", uint8_mode: str = "round",
                 extractor: FeatureExtractor | None = None, feature_dim: int = INCEPTION_FEATURES) -> None:
        check_mode(mode)
        self.mode, self.uint8_mode = mode, uint8_mode
        self.extractor = extractor if extractor is not None else build_inception(mode, str(device))
        self.real = FeatureStatistics(feature_dim, device)
        self.fake = FeatureStatistics(feature_dim, device)

    def _features(self, images: torch.Tensor) -> torch.Tensor:
        return self.extractor(prepare_for_inception(images, self.mode, self.uint8_mode)).float()

    @torch.no_grad()
    def update(self, batch: EvalBatch) -> None:
        self.real.update(self._features(batch.images))
        self.fake.update(self._features(batch.reconstructions))

    def state(self) -> list[torch.Tensor]:
        return [self.real.count, self.real.total, self.real.outer, self.fake.count, self.fake.total, self.fake.outer]

    def compute(self) -> dict[str, float]:
        from cleanfid.fid import frechet_distance

        mean_real, cov_real = self.real.mean_and_covariance()
        mean_fake, cov_fake = self.fake.mean_and_covariance()
        with warnings.catch_warnings():
            # clean-fid passes scipy's deprecated `disp` argument to sqrtm; nothing a user can act on
            warnings.simplefilter("ignore", DeprecationWarning)
            distance = frechet_distance(mean_real, cov_real, mean_fake, cov_fake)
        return {"rfid": float(distance)}
