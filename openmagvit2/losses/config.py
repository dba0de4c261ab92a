"""The `loss.*` config group: typed defaults of the published recipe and their validation.

The trainer validates the composed config before anything is built; `validate_loss_config` is the loss group's part
of that check, and `LossConfig.from_config` is how the loss modules read their keys (so a module never sees an
unchecked value).
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from omegaconf import DictConfig, OmegaConf

DISC_NORMS = ("batch", "none")


@dataclasses.dataclass(frozen=True)
class LossConfig:
    """Weights and switches of the tokenizer's training objective; defaults are the released v1/v3 recipe."""

    perceptual_weight: float = 1.0  # LPIPS (VGG16) weight; 0 drops the perceptual network entirely
    gen_loss_weight: float | None = 0.1  # fixed weight of the non-saturating G loss; None = adaptive VQGAN weight
    disc_weight: float = 0.8  # multiplies the adaptive weight (inert while gen_loss_weight is set, as released)
    codebook_weight: float = 0.1  # entropy loss weight
    commit_weight: float = 0.25  # commitment loss weight
    lecam_weight: float = 0.005  # v1 recipe; 0.01 for 128 Large, 0.05 for 256 Large
    lecam_decay: float = 0.999  # EMA decay of the mean real / fake logits used by LeCam
    disc_start: int = 0  # step from which the adversarial terms count (the recipe has no warm-up)
    disc_norm: str = "batch"  # normalisation in the discriminator: "batch" (recipe) or "none"
    disc_channels: int = 64  # width of the discriminator's first conv (pix2pix `ndf`)
    disc_layers: int = 3  # strided conv blocks of the PatchGAN (pix2pix `n_layers`)
    codebook_enlarge_ratio: float = 0.0  # extra entropy weight at step 0, decaying linearly to 0
    codebook_enlarge_steps: int = 2000  # steps over which that extra weight decays

    @classmethod
    def from_config(cls, loss_cfg: Mapping[str, Any] | DictConfig | None) -> "LossConfig":
        """Read and validate a `loss` config group (DictConfig or dict); missing keys take the recipe defaults."""
        raw = _to_dict(loss_cfg)
        known = {field.name for field in dataclasses.fields(cls)}
        # `name` is allowed so that a config group file may label itself.
        unknown = sorted(set(raw) - known - {"name"})
        if unknown:
            raise ValueError(f"loss.{unknown[0]} is not a loss option: expected one of {', '.join(sorted(known))}.")
        config = cls(**{key: value for key, value in raw.items() if key in known})
        config._validate()
        return config

    def _validate(self) -> None:
        for key in ("perceptual_weight", "disc_weight", "codebook_weight", "commit_weight", "lecam_weight",
                    "codebook_enlarge_ratio"):
            _require(key, getattr(self, key), _is_number(getattr(self, key)) and getattr(self, key) >= 0,
                     "a number >= 0")
        _require("gen_loss_weight", self.gen_loss_weight,
                 self.gen_loss_weight is None or (_is_number(self.gen_loss_weight) and self.gen_loss_weight >= 0),
                 "a number >= 0, or null for the adaptive VQGAN weight")
        _require("lecam_decay", self.lecam_decay, _is_number(self.lecam_decay) and 0 <= self.lecam_decay < 1,
                 "a number in [0, 1) (the recipe uses 0.999)")
        _require("disc_start", self.disc_start, _is_int(self.disc_start) and self.disc_start >= 0,
                 "an integer >= 0 (0 = adversarial terms from the first step)")
        _require("disc_norm", self.disc_norm, self.disc_norm in DISC_NORMS,
                 "batch (the recipe) or none (no normalisation, for exact DDP-equivalence tests)")
        _require("disc_channels", self.disc_channels, _is_int(self.disc_channels) and self.disc_channels >= 1,
                 "an integer >= 1 (the recipe uses 64)")
        _require("disc_layers", self.disc_layers, _is_int(self.disc_layers) and self.disc_layers >= 1,
                 "an integer >= 1 (the recipe uses 3)")
        _require("codebook_enlarge_steps", self.codebook_enlarge_steps,
                 _is_int(self.codebook_enlarge_steps) and self.codebook_enlarge_steps >= 1, "an integer >= 1")


def validate_loss_config(loss_cfg: Mapping[str, Any] | DictConfig | None) -> None:
    """Raise ValueError naming the first bad `loss.*` key and its allowed range; return None when all are valid."""
    LossConfig.from_config(loss_cfg)


def _to_dict(loss_cfg: Mapping[str, Any] | DictConfig | None) -> dict[str, Any]:
    if loss_cfg is None:
        return {}
    if isinstance(loss_cfg, DictConfig):
        return OmegaConf.to_container(loss_cfg, resolve=True)  # type: ignore[return-value]
    if isinstance(loss_cfg, Mapping):
        return dict(loss_cfg)
    raise ValueError(f"the loss config must be a mapping of loss.* keys, got {type(loss_cfg).__name__}.")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _require(key: str, value: Any, ok: bool, allowed: str) -> None:
    if not ok:
        raise ValueError(f"loss.{key}={value!r} is invalid: expected {allowed}.")
