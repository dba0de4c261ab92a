"""The image tokenizer: Encoder -> LFQ -> Decoder, with the Open-MAGVIT2 module names.

Submodules are `encoder`, `decoder` and `quantizer`; the quantizer has no state, so the state dict holds exactly the
released `encoder.*` / `decoder.*` keys.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import nn

from openmagvit2.config import ModelConfig, QuantizerConfig
from openmagvit2.models.decoder import Decoder
from openmagvit2.models.encoder import Encoder
from openmagvit2.models.quantizer import LFQ, LFQOutput

# The keyword defaults below are the schema's (openmagvit2/config.py), so they are written in one place.
_ARCH = {field.name: field.default for field in dataclasses.fields(ModelConfig)}
_LFQ = QuantizerConfig()


class TokenizerOutput(NamedTuple):
    """`Tokenizer.forward` result: reconstruction `b 3 H W` (not clamped) and the quantizer's named result."""

    reconstruction: torch.Tensor
    quantizer: LFQOutput


class TokenizerEncoding(NamedTuple):
    """`Tokenizer.encode` result: quantized codes `b K h w` (+-1, straight-through) and token indices `b h w`."""

    quantized: torch.Tensor
    indices: torch.Tensor


class Tokenizer(nn.Module):
    """MAGVIT-2 image tokenizer. Images `b 3 H W` in [-1, 1], H and W multiples of `downsample_factor`.

    Build it from keyword hyper-parameters (`Tokenizer(ch=128, ch_mult=[1, 1, 2, 2, 4], num_res_blocks=4, ...)`;
    defaults are the schema's, `openmagvit2.config.ModelConfig` / `QuantizerConfig`), from the typed config groups
    (`Tokenizer.from_config(config.model, config.quantizer)`), or from a file (`Tokenizer.from_checkpoint`).
    The model is fully convolutional: a 128-trained model runs at 256 or 512 (more tokens).
    """

    def __init__(self, *, ch: int, ch_mult: Sequence[int], num_res_blocks: int,
                 adaptive_norm: bool = _ARCH["adaptive_norm"],  # adaptive GroupNorm in the decoder (v2/v3 Large)
                 bit_order: str = _ARCH["bit_order"],  # lsb_first (v2/v3) | msb_first (v1)
                 in_channels: int = _ARCH["in_channels"], out_channels: int = _ARCH["out_channels"],
                 codebook_bits: int = _LFQ.codebook_bits,  # z channels = bits per token
                 entropy_temperature: float = _LFQ.entropy_temperature,
                 entropy_eps: float = _LFQ.entropy_eps,
                 sample_minimization_weight: float = _LFQ.sample_minimization_weight,
                 batch_maximization_weight: float = _LFQ.batch_maximization_weight,
                 entropy_across_ranks: bool = _LFQ.entropy_across_ranks) -> None:
        super().__init__()
        # The schema checks the architecture's bounds (the LFQ checks its own); the values are stored as plain types.
        arch = ModelConfig(ch=ch, ch_mult=list(ch_mult), num_res_blocks=num_res_blocks, adaptive_norm=adaptive_norm,
                           bit_order=bit_order, in_channels=in_channels, out_channels=out_channels)
        self.encoder = Encoder(ch, arch.ch_mult, num_res_blocks, codebook_bits, in_channels)
        self.decoder = Decoder(ch, arch.ch_mult, num_res_blocks, codebook_bits, out_channels,
                               adaptive_norm=adaptive_norm)
        self.quantizer = LFQ(codebook_bits=codebook_bits, bit_order=bit_order, entropy_temperature=entropy_temperature,
                             entropy_eps=entropy_eps, sample_minimization_weight=sample_minimization_weight,
                             batch_maximization_weight=batch_maximization_weight,
                             entropy_across_ranks=entropy_across_ranks)
        q = self.quantizer
        self._hparams = {
            **dataclasses.asdict(arch), "codebook_bits": q.codebook_bits, "entropy_temperature": q.entropy_temperature,
            "entropy_eps": q.entropy_eps, "sample_minimization_weight": q.sample_minimization_weight,
            "batch_maximization_weight": q.batch_maximization_weight, "entropy_across_ranks": q.entropy_across_ranks}

    memory_format = torch.channels_last  # the channels-last layout of its 4-D weights and images (train.channels_last)

    @property
    def last_layer(self) -> torch.Tensor:
        """The decoder's output kernel: the adaptive GAN weight balances the gradients reaching it."""
        return self.decoder.conv_out.weight

    @property
    def hparams(self) -> dict[str, Any]:
        """A JSON-able copy of the hyper-parameters; `Tokenizer(**tokenizer.hparams)` rebuilds the architecture."""
        return {key: list(value) if isinstance(value, list) else value for key, value in self._hparams.items()}

    @property
    def downsample_factor(self) -> int:
        """Pixels per token side: 2 ** (len(ch_mult) - 1)."""
        return 2 ** (len(self._hparams["ch_mult"]) - 1)

    @classmethod
    def from_config(cls, model: ModelConfig | Mapping[str, Any],
                    quantizer: QuantizerConfig | Mapping[str, Any] | None = None) -> Tokenizer:
        """Build from the typed `model` and `quantizer` groups (or mappings of their keys)."""
        values = dataclasses.asdict(model) if dataclasses.is_dataclass(model) else dict(model)
        if quantizer is not None:
            values.update(dataclasses.asdict(quantizer) if dataclasses.is_dataclass(quantizer) else dict(quantizer))
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
        """Load a folder written by `save_pretrained` (`config.json` + `model.safetensors`), or a released model by
        name through the Hugging Face cache (`"TencentARC/Open-MAGVIT2-Tokenizer-256-resolution"`, `hf://...`;
        `openmagvit2.hub`). Returns eval mode."""
        from openmagvit2 import hub
        from openmagvit2.models.loading import load_pretrained

        if hub.is_hub_name(str(directory)):
            return hub.from_pretrained(str(directory), map_location=map_location)
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

