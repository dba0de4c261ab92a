"""Hyper-parameters of the causal video tokenizer: `VideoModelConfig` and the named architectures.

The named architectures are the shipped `conf/video_model/*.yaml` files (one registry; they ship with the package),
read by `video_model_preset(name)`.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from openmagvit2.models.blocks import GROUPS
from openmagvit2.config import MAX_CODEBOOK_BITS, plain_dict
from openmagvit2.models.quantizer import BIT_ORDERS

@dataclass
class VideoModelConfig:
    """What defines a `VideoTokenizer` (defaults: the released architecture and quantizer settings).

    `z_channels` is the upstream name of the latent width; it must equal `codebook_bits` (one bit per channel) and is
    filled in from it when omitted. Bit order "lsb_first": channel 0 is bit 0 of the token index, as upstream.
    """

    ch: int = 128
    ch_mult: list[int] = field(default_factory=lambda: [1, 2, 2, 4])
    num_res_blocks: int = 4
    codebook_bits: int = 18
    z_channels: int | None = None
    bit_order: str = "lsb_first"
    in_channels: int = 3
    out_channels: int = 3
    entropy_temperature: float = 0.01
    entropy_eps: float = 1e-5
    sample_minimization_weight: float = 1.0
    batch_maximization_weight: float = 1.0
    entropy_across_ranks: bool = False

    def __post_init__(self) -> None:
        self.ch_mult = [int(m) for m in self.ch_mult]
        if not self.ch_mult or min(self.ch_mult) < 1 or self.ch < 1 or self.num_res_blocks < 1:
            raise ValueError(f"video_model.ch={self.ch}, ch_mult={self.ch_mult} and num_res_blocks="
                             f"{self.num_res_blocks} must be positive (ch_mult a non-empty list).")
        bad = [self.ch * m for m in self.ch_mult if (self.ch * m) % GROUPS]
        if bad:
            raise ValueError(f"video_model widths {bad} are not multiples of {GROUPS} (GroupNorm uses {GROUPS} groups): "
                             f"choose ch and ch_mult so that every ch * m is.")
        if not 1 <= self.codebook_bits <= MAX_CODEBOOK_BITS:
            raise ValueError(f"video_model.codebook_bits={self.codebook_bits} is out of range: use 1..{MAX_CODEBOOK_BITS}"
                             f" (18 in the release).")
        if self.z_channels is None:
            self.z_channels = self.codebook_bits
        if self.z_channels != self.codebook_bits:
            raise ValueError(f"z_channels={self.z_channels} differs from codebook_bits={self.codebook_bits}: the LFQ "
                             f"quantizes one bit per channel, so set them equal.")
        if self.bit_order not in BIT_ORDERS:
            raise ValueError(f"video_model.bit_order={self.bit_order!r} is unknown: use one of {list(BIT_ORDERS)}.")
        if self.in_channels < 1 or self.out_channels < 1 or self.entropy_temperature <= 0:
            raise ValueError(f"in_channels={self.in_channels}, out_channels={self.out_channels} and "
                             f"entropy_temperature={self.entropy_temperature} must be positive.")

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> VideoModelConfig:
        """From a dict or DictConfig (a `name` key is ignored); unknown keys are refused, naming the allowed ones."""
        plain = plain_dict(values)
        plain.pop("name", None)
        allowed = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(plain) - set(allowed))
        if unknown:
            raise ValueError(f"unknown video tokenizer hyper-parameter(s) {unknown}: allowed keys are {allowed}.")
        return cls(**plain)

    @property
    def spatial_factor(self) -> int:
        """Pixels per token side: 2 ** (len(ch_mult) - 1)."""
        return 2 ** (len(self.ch_mult) - 1)

    @property
    def temporal_factor(self) -> int:
        """Frames per latent frame after the first: 2 per level before the last whose ch_mult is not 1 (§1.3)."""
        return 2 ** sum(m != 1 for m in self.ch_mult[:-1])

    def latent_frames(self, frames: int) -> int:
        """Latent frames of a clip of `frames` = f k + 1 frames: k + 1."""
        return (frames - 1) // self.temporal_factor + 1

    def to_dict(self) -> dict[str, Any]:
        """JSON-able hyper-parameters; `VideoTokenizer(**config.to_dict())` rebuilds the architecture."""
        return dataclasses.asdict(self)


def video_model_names() -> list[str]:
    """The shipped video architectures (`conf/video_model/*.yaml`), by name."""
    from openmagvit2.paths import shipped_options

    return shipped_options("video_model")


def video_model_preset(name: str) -> dict[str, Any]:
    """The hyper-parameters of a shipped `conf/video_model/<name>.yaml` (e.g. "openmagvit2_video_128")."""
    from openmagvit2.paths import shipped_option

    values = shipped_option("video_model", name)
    if values is None:
        raise ValueError(f"unknown video model {name!r}: use one of {video_model_names()} or a dict of "
                         f"hyper-parameters (ch, ch_mult, num_res_blocks, codebook_bits).")
    return VideoModelConfig.from_mapping(values).to_dict()


def resolve_video_model(model: str | Mapping[str, Any]) -> dict[str, Any]:
    """Hyper-parameters from a preset name (`conf/video_model` option) or a dict (a `name` key is ignored)."""
    if isinstance(model, str):
        return video_model_preset(model)
    values = plain_dict(model)
    values.pop("name", None)
    return values
