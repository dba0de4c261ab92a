"""The LPIPS (VGG16) perceptual distance of the recipe, frozen.

The `lpips` package ships its calibrated linear heads; the VGG16 ImageNet backbone comes from torchvision through
torch.hub's cache and cannot be downloaded on an offline machine, so `build_perceptual_loss` checks for it first
(`openmagvit2.weights.require`) and fails with the file name and where to put it, before any download is tried.
"""
from __future__ import annotations

import warnings

from torch import nn


def build_perceptual_loss(pretrained_backbone: bool = True) -> nn.Module:
    """A frozen `lpips.LPIPS(net="vgg")`: `(b 3 h w, b 3 h w)` images in [-1, 1] -> `b 1 1 1` distances.

    `pretrained_backbone=False` keeps LPIPS's calibrated heads on a randomly initialised VGG16: a meaningless
    metric, only for tests and machines without the ImageNet weights.
    """
    # Imported here: lpips pulls in torchvision, which runs without a perceptual loss do not need.
    import lpips

    if pretrained_backbone:
        from openmagvit2.weights import require

        require(["lpips_vgg"])
    with warnings.catch_warnings():
        # torchvision deprecates the `pretrained=` argument that lpips still passes; nothing a user can act on.
        warnings.simplefilter("ignore", UserWarning)
        network = lpips.LPIPS(net="vgg", pnet_rand=not pretrained_backbone, verbose=False)
    return freeze(network)


def freeze(module: nn.Module) -> nn.Module:
    """Put `module` in eval mode and stop gradients to its parameters (inputs still get gradients)."""
    module.eval()
    for parameter in module.parameters():
        parameter.requires_grad_(False)
    return module
