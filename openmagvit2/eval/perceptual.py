"""LPIPS (AlexNet and VGG trunks, `lpips` package v0.1) averaged per image, on the [-1, 1] tensors as published."""
from __future__ import annotations

import warnings
from functools import lru_cache

import torch
from torch import nn

from openmagvit2 import weights
from openmagvit2.eval.batch import EvalBatch, Metric

LPIPS_NETS = {"lpips_alex": "alex", "lpips_vgg": "vgg"}


@lru_cache(maxsize=None)
def build_lpips(metric_name: str, device: str) -> nn.Module:
    """The frozen `lpips.LPIPS` network for `lpips_alex` / `lpips_vgg` (cached; trunk weights must be present)."""
    if metric_name not in LPIPS_NETS:
        raise ValueError(f"LPIPS metric must be one of {sorted(LPIPS_NETS)}, got {metric_name!r}.")
    weights.require([metric_name])
    import lpips

    with warnings.catch_warnings():
        # lpips passes torchvision's deprecated `pretrained=True`; the weights it loads are the ones checked above.
        warnings.simplefilter("ignore", UserWarning)
        model = lpips.LPIPS(net=LPIPS_NETS[metric_name], verbose=False)
    return model.to(device).eval().requires_grad_(False)


class LPIPS(Metric):
    """Mean LPIPS distance between each original and its reconstruction."""

    def __init__(self, metric_name: str, device: torch.device, network: nn.Module | None = None) -> None:
        self.name = metric_name
        self.network = network if network is not None else build_lpips(metric_name, str(device))
        self.total = torch.zeros((), dtype=torch.float64, device=device)
        self.count = torch.zeros((), dtype=torch.float64, device=device)

    @torch.no_grad()
    def update(self, batch: EvalBatch) -> None:
        distances = self.network(batch.reconstructions.float(), batch.images.float())  # b 1 1 1
        self.total += distances.double().sum()
        self.count += batch.images.shape[0]

    def state(self) -> list[torch.Tensor]:
        return [self.total, self.count]

    def compute(self) -> dict[str, float]:
        return {self.name: (self.total / self.count).item()}
