"""Frechet distance between Gaussians fitted to two feature sets, from streaming sums (shared by rFID and rFVD).

Instead of keeping all N x d features, each set keeps streaming sums (count, sum, sum of outer products) in float64:
the reduction across ranks is one all-reduce, and mean/covariance equal `np.mean` / `np.cov` (unbiased) of the
stacked features to float64 precision. The distance is clean-fid's `frechet_distance` (scipy `sqrtm`); the TF-GAN
form that FVD scripts use (`tr sqrt(S1^1/2 S2 S1^1/2)` by SVD) is the same quantity, since `S1 S2` and
`S1^1/2 S2 S1^1/2` have the same eigenvalues; the two agree to ~1e-5 relative even on rank-deficient covariances
(fewer samples than features).
"""
from __future__ import annotations

import warnings
from abc import abstractmethod

import numpy as np
import torch

from openmagvit2.eval.batch import EvalBatch, Metric


class FeatureStatistics:
    """Streaming count, sum and sum of outer products of `b d` features, in float64.

    `metric` and `samples` ("rfid", "images") only word the error messages.
    """

    def __init__(self, feature_dim: int, device: torch.device, metric: str = "rfid", samples: str = "images") -> None:
        self.metric, self.samples = metric, samples
        self.count = torch.zeros((), dtype=torch.float64, device=device)
        self.total = torch.zeros(feature_dim, dtype=torch.float64, device=device)
        self.outer = torch.zeros(feature_dim, feature_dim, dtype=torch.float64, device=device)

    def update(self, features: torch.Tensor) -> None:
        features = features.detach().reshape(features.shape[0], -1).double()
        if features.shape[1] != self.total.numel():
            raise ValueError(f"the feature extractor returned {features.shape[1]} features per sample, expected "
                             f"{self.total.numel()}; pass a feature_dim matching the extractor.")
        self.count += features.shape[0]
        self.total += features.sum(dim=0)
        self.outer += features.T @ features

    def mean_and_covariance(self) -> tuple[np.ndarray, np.ndarray]:
        """`np.mean(feats, 0)` and `np.cov(feats, rowvar=False)` (unbiased) of everything seen."""
        if self.count.item() < 2:
            raise ValueError(f"{self.metric} needs at least 2 {self.samples}; evaluate on more {self.samples} "
                             f"(max_images) or drop {self.metric}.")
        n = self.count.item()
        mean = self.total / n
        covariance = (self.outer - n * torch.outer(mean, mean)) / (n - 1)
        return mean.cpu().numpy(), covariance.cpu().numpy()

    def state(self) -> list[torch.Tensor]:
        """The three sums, for `Metric.state()` (all-reduced with SUM across ranks)."""
        return [self.count, self.total, self.outer]


def frechet_distance(real: FeatureStatistics, fake: FeatureStatistics) -> float:
    """`||m1 - m2||^2 + tr(S1 + S2 - 2 sqrt(S1 S2))` between the Gaussians of two feature sets (clean-fid's code)."""
    from cleanfid.fid import frechet_distance as distance

    mean_real, cov_real = real.mean_and_covariance()
    mean_fake, cov_fake = fake.mean_and_covariance()
    with warnings.catch_warnings():
        # clean-fid passes scipy's deprecated `disp` argument to sqrtm; nothing a user can act on
        warnings.simplefilter("ignore", DeprecationWarning)
        return float(distance(mean_real, cov_real, mean_fake, cov_fake))


class FrechetMetric(Metric):
    """A Frechet distance between the features of the originals and of their reconstructions (rFID, rFVD): two
    streaming feature sets; a subclass says what its features are."""

    name: str  # the result key, e.g. "rfid"
    samples: str = "images"  # what one feature vector describes (in error messages)

    def __init__(self, feature_dim: int, device: torch.device) -> None:
        self.real = FeatureStatistics(feature_dim, device, metric=self.name, samples=self.samples)
        self.fake = FeatureStatistics(feature_dim, device, metric=self.name, samples=self.samples)

    @abstractmethod
    def features(self, batch: EvalBatch, reconstructed: bool) -> torch.Tensor:
        """`n d` features of the batch's originals (or reconstructions)."""

    @torch.no_grad()
    def update(self, batch: EvalBatch) -> None:
        self.real.update(self.features(batch, reconstructed=False))
        self.fake.update(self.features(batch, reconstructed=True))

    def state(self) -> list[torch.Tensor]:
        return [*self.real.state(), *self.fake.state()]

    def compute(self) -> dict[str, float]:
        return {self.name: frechet_distance(self.real, self.fake)}
