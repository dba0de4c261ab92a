"""Hyper-parameters of the class-conditional AR model (`ARModel`), and the `conf/ar_model/*.yaml` lookup by name.

The field names are `ARModel`'s constructor keywords and the keys of a `model=` dict and of the YAML files. Defaults
are the released Open-MAGVIT2 AR "B" model (`AR_256_B.ckpt`): the upstream GPT defaults overridden by its config.
The YAML files are the one source of truth for the named sizes; `ar_model_config(name)` reads them.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from openmagvit2.config import plain_dict

MAX_TOKEN_BITS = 30  # indices must stay exact in int64 and in float32 code tables (as the LFQ)


def ffn_hidden_dim(dim: int, multiple_of: int, ffn_dim_multiplier: float | None) -> int:
    """SwiGLU hidden width, LLaMA's rule: int(2 * 4 * dim / 3), times the multiplier, rounded up to `multiple_of`."""
    hidden = int(2 * 4 * dim / 3)
    if ffn_dim_multiplier is not None:
        hidden = int(ffn_dim_multiplier * hidden)
    return -(-hidden // multiple_of) * multiple_of


@dataclass
class ARModelConfig:
    """Architecture and regularisation of `ARModel` (see the module docstring for the defaults).

    Args:
        dim: model width (the embeddings, every block, the heads).
        num_heads: attention heads; `dim / num_heads` (the head width) must be even for the 2D RoPE.
        spatial_layers: blocks of the causal transformer over the token grid.
        factorized_layers: blocks of the intra transformer that predicts a token's sub-tokens in turn.
        factorized_bits: bits of each sub-token, least significant first: [6, 12] splits an 18-bit id into
            `idx & 63` and `idx >> 6` (the release); [18] is one sub-token (no factorisation, for comparison).
        num_classes: class labels 0..num_classes-1; label `num_classes` is the null (unconditional) class.
        grid_size: tokens per image side (16 for 256 px with the 16x-down tokenizer); sequences hold grid_size^2.
        token_dropout: dropout on the input embeddings (class token included; upstream `token_drop`).
        class_dropout: probability that a training label is replaced by the null class (classifier-free guidance).
        resid_dropout: dropout after each attention output projection.
        ffn_dropout: dropout after each feed-forward output.
        attn_dropout: dropout on the attention weights.
        rope_base: base of the 2D rotary position frequencies.
        norm_eps: epsilon of every RMSNorm.
        ffn_multiple_of: the SwiGLU hidden width is rounded up to a multiple of this.
        ffn_dim_multiplier: optional factor on the SwiGLU hidden width before rounding.
        init_std: standard deviation of the normal init of every Linear and Embedding (the heads start at zero).
    """

    dim: int = 1024
    num_heads: int = 16
    spatial_layers: int = 24
    factorized_layers: int = 2
    factorized_bits: list[int] = field(default_factory=lambda: [6, 12])
    num_classes: int = 1000
    grid_size: int = 16
    token_dropout: float = 0.1
    class_dropout: float = 0.1
    resid_dropout: float = 0.1
    ffn_dropout: float = 0.1
    attn_dropout: float = 0.0
    rope_base: float = 10000.0
    norm_eps: float = 1e-5
    ffn_multiple_of: int = 256
    ffn_dim_multiplier: float | None = None
    init_std: float = 0.02

    def __post_init__(self) -> None:
        self.factorized_bits = [int(bits) for bits in self.factorized_bits]
        if self.dim < 1 or self.num_heads < 1 or self.dim % self.num_heads:
            raise ValueError(f"ar_model.dim={self.dim} must be a positive multiple of ar_model.num_heads="
                             f"{self.num_heads}.")
        if (self.dim // self.num_heads) % 2:
            raise ValueError(f"the head width dim / num_heads = {self.dim // self.num_heads} must be even for the "
                             f"rotary embedding: change ar_model.dim or ar_model.num_heads.")
        if self.spatial_layers < 1 or self.factorized_layers < 1:
            raise ValueError(f"ar_model.spatial_layers={self.spatial_layers} and ar_model.factorized_layers="
                             f"{self.factorized_layers} must be >= 1.")
        if len(self.factorized_bits) not in (1, 2) or min(self.factorized_bits) < 1:
            raise ValueError(f"ar_model.factorized_bits={self.factorized_bits} must be one or two positive bit "
                             f"counts, e.g. [6, 12] (the release) or [18].")
        if self.token_bits > MAX_TOKEN_BITS:
            raise ValueError(f"ar_model.factorized_bits={self.factorized_bits} sums to {self.token_bits} bits: use "
                             f"at most {MAX_TOKEN_BITS} (18 for the Open-MAGVIT2 tokenizers).")
        if self.num_classes < 1 or self.grid_size < 1:
            raise ValueError(f"ar_model.num_classes={self.num_classes} and ar_model.grid_size={self.grid_size} "
                             f"must be >= 1.")
        for name in ("token_dropout", "class_dropout", "resid_dropout", "ffn_dropout", "attn_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"ar_model.{name}={getattr(self, name)} must be in [0, 1).")
        if self.rope_base <= 0 or self.norm_eps <= 0 or self.init_std < 0 or self.ffn_multiple_of < 1:
            raise ValueError(f"ar_model.rope_base={self.rope_base}, norm_eps={self.norm_eps} and ffn_multiple_of="
                             f"{self.ffn_multiple_of} must be > 0 and init_std={self.init_std} >= 0.")

    @property
    def token_bits(self) -> int:
        """Bits of a whole token id (18 for the release)."""
        return sum(self.factorized_bits)

    @property
    def head_dim(self) -> int:
        return self.dim // self.num_heads

    @property
    def ffn_hidden_dim(self) -> int:
        return ffn_hidden_dim(self.dim, self.ffn_multiple_of, self.ffn_dim_multiplier)

    @property
    def num_tokens(self) -> int:
        """Tokens per image, grid_size^2 (256 for the release)."""
        return self.grid_size ** 2

    def to_dict(self) -> dict[str, Any]:
        """Plain, JSON-able keywords: `ARModel(**config.to_dict())` rebuilds the architecture."""
        return dataclasses.asdict(self)

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> ARModelConfig:
        """From a dict or DictConfig of keywords; a `name` key is ignored, unknown keys are refused."""
        plain = plain_dict(values)
        plain.pop("name", None)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(plain) - known)
        if unknown:
            raise ValueError(f"unknown ar_model key(s) {unknown}: allowed keys are {sorted(known)}.")
        return cls(**plain)


def ar_model_names() -> list[str]:
    """The configs in `conf/ar_model/` (e.g. ar_b, ar_l, ar_xl, ar_tiny)."""
    from openmagvit2.paths import shipped_options

    return shipped_options("ar_model")


def ar_model_config(name: str) -> ARModelConfig:
    """The `conf/ar_model/<name>.yaml` config, validated."""
    from openmagvit2.paths import shipped_option

    values = shipped_option("ar_model", name)
    if values is None:
        raise ValueError(f"unknown AR model {name!r}: use one of {ar_model_names()} or pass a dict of ARModel "
                         f"keywords.")
    return ARModelConfig.from_mapping(values)


def resolve_config(model: str | Mapping[str, Any] | ARModelConfig) -> ARModelConfig:
    """A config from a `conf/ar_model` name, a dict of keywords, or a config."""
    if isinstance(model, ARModelConfig):
        return model
    if isinstance(model, str):
        return ar_model_config(model)
    return ARModelConfig.from_mapping(model)
