"""The PatchGAN discriminator of the recipe (pix2pix `NLayerDiscriminator`, as in taming-transformers).

Layer indices inside `main` match the released checkpoints, so their `loss.discriminator.main.{i}.*` tensors load
1:1 (see `released_discriminator_state`). With the default 64 channels and 3 layers it has 2,765,633 parameters
and maps `b 3 256 256` images to `b 1 30 30` patch logits (`b 1 14 14` at 128 px).
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from openmagvit2.losses.config import LossConfig
from openmagvit2.losses.discriminator3d import NLayerDiscriminator3D

RELEASED_PREFIX = "loss.discriminator."


class NLayerDiscriminator(nn.Module):
    """PatchGAN: 4x4 convs (stride 2 for the first `num_layers`, then 1), each but the first and last followed by a
    norm and LeakyReLU(0.2); the output is one logit per overlapping patch.

    `norm="batch"` is the recipe (BatchNorm2d, convs before it without bias since BN's shift replaces it).
    `norm="none"` puts an identity where BN was, so the layer indices (and the other keys) stay the same; those
    convs then get a bias back. Without BN the logits of an image do not depend on the rest of the batch, which
    exact DDP-equivalence tests need.
    """

    def __init__(self, in_channels: int = 3, channels: int = 64, num_layers: int = 3, norm: str = "batch") -> None:
        super().__init__()
        if norm not in ("batch", "none"):
            raise ValueError(f"discriminator norm={norm!r} is invalid: expected batch or none.")
        use_bias = norm == "none"

        def norm_layer(width: int) -> nn.Module:
            return nn.BatchNorm2d(width) if norm == "batch" else nn.Identity()

        layers: list[nn.Module] = [nn.Conv2d(in_channels, channels, 4, stride=2, padding=1), nn.LeakyReLU(0.2, True)]
        width = channels
        for n in range(1, num_layers + 1):
            out_width = channels * min(2**n, 8)
            stride = 2 if n < num_layers else 1  # the last block keeps the resolution, as in pix2pix
            layers += [nn.Conv2d(width, out_width, 4, stride=stride, padding=1, bias=use_bias),
                       norm_layer(out_width), nn.LeakyReLU(0.2, True)]
            width = out_width
        layers.append(nn.Conv2d(width, 1, 4, stride=1, padding=1))
        self.main = nn.Sequential(*layers)
        self.apply(init_discriminator_weights)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """`b c h w` images in [-1, 1] -> `b 1 h' w'` patch logits (real > 0 > fake after training)."""
        return self.main(images)


def init_discriminator_weights(module: nn.Module) -> None:
    """The reference's `weights_init`: conv weights N(0, 0.02), BN weight N(1, 0.02) and bias 0.

    Conv biases keep PyTorch's default init, as in the reference.
    """
    if isinstance(module, nn.Conv2d):
        nn.init.normal_(module.weight, 0.0, 0.02)
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)


def build_discriminator(loss_cfg: Mapping[str, Any] | Any, video: bool = False) -> nn.Module:
    """The discriminator described by `loss.disc_channels`, `loss.disc_layers` and `loss.disc_norm`: the 2D PatchGAN,
    or (`video`) the 3D one of the video recipe (`NLayerDiscriminator3D`)."""
    config = loss_cfg if isinstance(loss_cfg, LossConfig) else LossConfig.from_config(loss_cfg)
    network = NLayerDiscriminator3D if video else NLayerDiscriminator
    return network(channels=config.disc_channels, num_layers=config.disc_layers, norm=config.disc_norm)


def released_discriminator_state(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The `loss.discriminator.*` tensors of a released Open-MAGVIT2 `state_dict`, renamed for `NLayerDiscriminator`.

    To fine-tune from a released checkpoint:
    `discriminator.load_state_dict(released_discriminator_state(ckpt["state_dict"]))`.
    """
    state = {key[len(RELEASED_PREFIX):]: value for key, value in state_dict.items() if key.startswith(RELEASED_PREFIX)}
    if not state:
        raise ValueError(f"the checkpoint has no '{RELEASED_PREFIX}*' keys; it holds no discriminator "
                         "(e.g. an EMA-only or Stage II checkpoint), so start the discriminator from scratch.")
    return state


def load_discriminator_state(discriminator: nn.Module, state: Mapping[str, torch.Tensor], source: str,
                             settings: str) -> None:
    """Load a discriminator state dict, turning torch's size-mismatch report into one line naming `settings`."""
    try:
        discriminator.load_state_dict(state)
    except RuntimeError as error:
        raise ValueError(f"the discriminator in {source} does not match {settings}: "
                         f"{str(error).splitlines()[0]}") from None
