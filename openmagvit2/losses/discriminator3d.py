"""The 3D PatchGAN discriminator of the video recipe (upstream `NLayerDiscriminator3D`, from Open-Sora-Plan).

REFERENCE-VIDEO §5: Conv3d(3, 64, k3, s2, p1) + LeakyReLU(0.2); then Conv3d(k3, p1, no bias) + BatchNorm3d + LeakyReLU
with strides (2, 2, 2), (1, 2, 2), 1 and widths 128, 256, 512; then Conv3d(512, 1, k3, s1, p1). It runs on the whole
clip. Layer indices inside `main` are the released ones (`loss.discriminator.main.{0,2,3,5,6,8,9,11}.*`), so the
released tensors load 1:1 after stripping `loss.discriminator.`. 4,665,729 parameters with the defaults;
`b 3 17 128 128 -> b 1 5 16 16` logits.
"""
from __future__ import annotations

import torch
from torch import nn


class NLayerDiscriminator3D(nn.Module):
    """3D PatchGAN with BatchNorm3d (`norm="batch"`, the recipe) or none (`norm="none"`: convs get a bias back).

    Strides: the first conv and the first middle one halve (t, h, w), the next middle ones halve (h, w) only for
    n < num_layers, the last middle one keeps the resolution, as upstream.
    """

    def __init__(self, in_channels: int = 3, channels: int = 64, num_layers: int = 3, norm: str = "batch") -> None:
        super().__init__()
        if norm not in ("batch", "none"):
            raise ValueError(f"discriminator norm={norm!r} is invalid: expected batch or none.")

        def norm_layer(width: int) -> nn.Module:
            return nn.BatchNorm3d(width) if norm == "batch" else nn.Identity()

        layers: list[nn.Module] = [nn.Conv3d(in_channels, channels, 3, stride=2, padding=1), nn.LeakyReLU(0.2, True)]
        width = channels
        for n in range(1, num_layers + 1):
            out_width = channels * min(2 ** n, 8)
            stride = (2, 2, 2) if n == 1 else (1, 2, 2) if n < num_layers else (1, 1, 1)
            layers += [nn.Conv3d(width, out_width, 3, stride=stride, padding=1, bias=norm == "none"),
                       norm_layer(out_width), nn.LeakyReLU(0.2, True)]
            width = out_width
        layers.append(nn.Conv3d(width, 1, 3, stride=1, padding=1))
        self.main = nn.Sequential(*layers)
        self.apply(init_discriminator3d_weights)

    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        """`b c t h w` clips in [-1, 1] -> `b 1 t' h' w'` patch logits."""
        return self.main(clips)


def init_discriminator3d_weights(module: nn.Module) -> None:
    """Upstream `weights_init`: conv weights N(0, 0.02), BatchNorm weight N(1, 0.02) and bias 0 (conv biases default)."""
    if isinstance(module, nn.Conv3d):
        nn.init.normal_(module.weight, 0.0, 0.02)
    elif isinstance(module, nn.BatchNorm3d):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)
