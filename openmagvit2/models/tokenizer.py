"""The image tokenizer: Encoder -> LFQ -> Decoder, with the Open-MAGVIT2 module names.

Submodules are `encoder`, `decoder` and `quantizer`; the quantizer has no state, so the state dict holds exactly the
released `encoder.*` / `decoder.*` keys.
"""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import nn

from openmagvit2.models.decoder import Decoder
from openmagvit2.models.encoder import Encoder
from openmagvit2.models.quantizer import LFQ, LFQOutput

# Hyper-parameters that define a Tokenizer, with their defaults (the released quantizer settings).
ARCHITECTURE_KEYS = ("ch", "ch_mult", "num_res_blocks", "adaptive_norm", "bit_order", "in_channels", "out_channels")
QUANTIZER_DEFAULTS: dict[str, Any] = {"codebook_bits": 18, "entropy_temperature": 0.01, "entropy_eps": 1e-5,
                                          "sample_minimization_weight": 1.0, "batch_maximization_weight": 1.0,
                                          "entropy_across_ranks": False}
HPARAM_KEYS = ARCHITECTURE_KEYS + tuple(QUANTIZER_DEFAULTS)


class TokenizerOutput(NamedTuple):
    """`Tokenizer.forward` result: reconstruction `b 3 H W` (not clamped) and the quantizer's named result."""

    reconstruction: torch.Tensor
    quantizer: LFQOutput


class TokenizerEncoding(NamedTuple):
    """`Tokenizer.encode` result: quantized codes `b K h w` (+-1, straight-through) and token indices `b h w`."""

    quantized: torch.Tensor
    indices: torch.Tensor


def normalize_hparams(hparams: Mapping[str, Any]) -> dict[str, Any]:
    """Plain, validated, JSON-able hyper-parameters from a dict or DictConfig (a `name` key is ignored).

    `z_channels` (the upstream name) is accepted when it equals `codebook_bits`.
    """
    values = {key: value for key, value in _plain(hparams).items() if key != "name"}
    z_channels = values.pop("z_channels", None)
    unknown = sorted(set(values) - set(HPARAM_KEYS))
    if unknown:
        raise ValueError(f"unknown tokenizer hyper-parameter(s) {unknown}: allowed keys are {list(HPARAM_KEYS)}.")
    missing = [key for key in ("ch", "ch_mult", "num_res_blocks") if key not in values]
    if missing:
        raise ValueError(f"tokenizer hyper-parameter(s) {missing} are missing: pass them or use a model config "
                         f"such as model='openmagvit2_v3_256_large'.")
    merged = {**QUANTIZER_DEFAULTS, "adaptive_norm": False, "bit_order": "lsb_first", "in_channels": 3,
              "out_channels": 3, **values}
    if z_channels is not None and int(z_channels) != int(merged["codebook_bits"]):
        raise ValueError(f"z_channels={z_channels} differs from codebook_bits={merged['codebook_bits']}: the LFQ "
                         f"quantizes one bit per channel, so set them equal.")
    ch_mult = [int(m) for m in merged["ch_mult"]]
    if not ch_mult or min(ch_mult) < 1 or int(merged["ch"]) < 1 or int(merged["num_res_blocks"]) < 1:
        raise ValueError(f"model.ch={merged['ch']}, model.ch_mult={ch_mult} and model.num_res_blocks="
                         f"{merged['num_res_blocks']} must be positive (ch_mult a non-empty list).")
    return {
        "ch": int(merged["ch"]), "ch_mult": ch_mult, "num_res_blocks": int(merged["num_res_blocks"]),
        "adaptive_norm": bool(merged["adaptive_norm"]), "bit_order": str(merged["bit_order"]),
        "in_channels": int(merged["in_channels"]), "out_channels": int(merged["out_channels"]),
        "codebook_bits": int(merged["codebook_bits"]), "entropy_temperature": float(merged["entropy_temperature"]),
        "entropy_eps": float(merged["entropy_eps"]),
        "sample_minimization_weight": float(merged["sample_minimization_weight"]),
        "batch_maximization_weight": float(merged["batch_maximization_weight"]),
        "entropy_across_ranks": bool(merged["entropy_across_ranks"])}


class Tokenizer(nn.Module):
    """MAGVIT-2 image tokenizer. Images `b 3 H W` in [-1, 1], H and W multiples of `downsample_factor`.

    Build it from hyper-parameters (`Tokenizer(ch=128, ch_mult=[1, 1, 2, 2, 4], num_res_blocks=4, ...)`), from the
    Hydra groups (`Tokenizer.from_config(cfg.model, cfg.quantizer)`), or from a file (`Tokenizer.from_checkpoint`).
    The model is fully convolutional: a 128-trained model runs at 256 or 512 (more tokens).
    """

    def __init__(self, **hparams: Any) -> None:
        super().__init__()
        self._hparams = normalize_hparams(hparams)
        h = self._hparams
        self.encoder = Encoder(h["ch"], h["ch_mult"], h["num_res_blocks"], h["codebook_bits"], h["in_channels"])
        self.decoder = Decoder(h["ch"], h["ch_mult"], h["num_res_blocks"], h["codebook_bits"], h["out_channels"],
                               adaptive_norm=h["adaptive_norm"])
        self.quantizer = LFQ(h["codebook_bits"], h["bit_order"], h["entropy_temperature"], h["entropy_eps"],
                             h["sample_minimization_weight"], h["batch_maximization_weight"],
                             h["entropy_across_ranks"])

    @property
    def hparams(self) -> dict[str, Any]:
        """A JSON-able copy of the hyper-parameters; `Tokenizer(**tokenizer.hparams)` rebuilds the architecture."""
        return {key: list(value) if isinstance(value, list) else value for key, value in self._hparams.items()}

    @property
    def downsample_factor(self) -> int:
        """Pixels per token side: 2 ** (len(ch_mult) - 1)."""
        return 2 ** (len(self._hparams["ch_mult"]) - 1)

    @classmethod
    def from_config(cls, model_cfg: Mapping[str, Any], quantizer_cfg: Mapping[str, Any] | None = None) -> Tokenizer:
        """Build from the Hydra `model` and `quantizer` groups (DictConfig or dict; `name` keys are ignored)."""
        values = _plain(model_cfg)
        values.pop("name", None)
        if quantizer_cfg is not None:
            quantizer_values = _plain(quantizer_cfg)
            quantizer_values.pop("name", None)
            overlap = sorted(set(values) & set(quantizer_values))
            if overlap:
                raise ValueError(f"key(s) {overlap} appear in both the model and quantizer configs: keep each in "
                                 f"one group.")
            values.update(quantizer_values)
        return cls(**values)

    @classmethod
    def from_checkpoint(cls, path: str | Path, model: str | Mapping[str, Any] | None = None, use_ema: bool = True,
                        map_location: str | torch.device = "cpu") -> Tokenizer:
        """Load our training checkpoint, a released Open-MAGVIT2 Lightning `.ckpt`, or a `save_pretrained` folder.

        Args:
            path: a `.pt`/`.ckpt` file or a folder written by `save_pretrained`.
            model: the architecture, as a `conf/model` name (e.g. "openmagvit2_v3_256_large") or a dict of
                hyper-parameters. Default: from the file's metadata, or for released files inferred from the keys
                (no adaptive norm: v1, msb_first; adaptive norm: v2/v3, lsb_first).
            use_ema: load the EMA weights when the file has them (as the published evaluation does).
            map_location: where tensors are loaded.
        Files are read without running code from them (`openmagvit2.io.read_checkpoint`): the Python objects in
        released Lightning files (hyper-parameters, callbacks) become inert placeholders, and a file that needs more
        raises `UnsafeCheckpointError`. A `model` whose weights do not fit the file raises
        `CheckpointMismatchError`, naming the architecture the file holds.
        Returns the tokenizer in eval mode.
        """
        from openmagvit2.models.loading import load_tokenizer

        return load_tokenizer(cls, path, model=model, use_ema=use_ema, map_location=map_location)

    @classmethod
    def from_pretrained(cls, directory: str | Path, map_location: str | torch.device = "cpu") -> Tokenizer:
        """Load a folder written by `save_pretrained` (`config.json` + `model.safetensors`). Returns eval mode."""
        from openmagvit2.models.loading import load_pretrained

        return load_pretrained(cls, directory, map_location=map_location)

    def save_pretrained(self, directory: str | Path) -> Path:
        """Write `config.json` (hyper-parameters) and `model.safetensors` (weights) into `directory`; returns it."""
        from openmagvit2.models.loading import save_pretrained

        return save_pretrained(self, directory)

    def check_images(self, images: torch.Tensor) -> None:
        """Refuse inputs the model cannot tokenize, with a message saying what to change."""
        in_channels, factor = self._hparams["in_channels"], self.downsample_factor
        if images.ndim != 4 or images.shape[1] != in_channels:
            raise ValueError(f"images must have shape (b, {in_channels}, H, W), got {tuple(images.shape)}.")
        if images.shape[-2] % factor or images.shape[-1] % factor:
            raise ValueError(f"image size {tuple(images.shape[-2:])} is not a multiple of the downsampling factor "
                             f"{factor}: resize or crop H and W to multiples of {factor}.")

    def encode(self, images: torch.Tensor) -> TokenizerEncoding:
        """Images `b 3 H W` in [-1, 1] -> (quantized `b K H/f W/f`, indices `b H/f W/f` int64). No losses computed."""
        self.check_images(images)
        result = self.quantizer(self.encoder(images), compute_losses=False)
        return TokenizerEncoding(result.quantized, result.indices)

    def decode(self, quantized: torch.Tensor) -> torch.Tensor:
        """Quantized codes `b K h w` -> images `b 3 hf wf` (not clamped; clamp to [-1, 1] for display or metrics)."""
        return self.decoder(quantized)

    def decode_indices(self, indices: torch.Tensor) -> torch.Tensor:
        """Token indices `b h w` (same bit order as encode) -> images `b 3 hf wf`."""
        dtype = self.decoder.conv_in.weight.dtype
        return self.decode(self.quantizer.indices_to_codes(indices, dtype=dtype))

    def forward(self, images: torch.Tensor, compute_losses: bool | None = None) -> TokenizerOutput:
        """Reconstruct images `b 3 H W`; the quantizer's losses are computed in training mode (or when asked)."""
        self.check_images(images)
        quantized = self.quantizer(self.encoder(images), compute_losses=compute_losses)
        return TokenizerOutput(self.decoder(quantized.quantized), quantized)


def _plain(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """A plain dict from a dict or an OmegaConf DictConfig."""
    if isinstance(cfg, dict):
        return dict(cfg)
    from omegaconf import DictConfig, OmegaConf  # imported only when Hydra built the config

    if isinstance(cfg, DictConfig):
        return dict(OmegaConf.to_container(cfg, resolve=True))
    return dict(cfg)
