"""The causal video tokenizer: VideoEncoder -> LFQ (shared with the image tokenizer) -> VideoDecoder.

Submodules `encoder`, `decoder`, `quantizer` as upstream; the quantizer is the image tokenizer's `LFQ` (no state, exact
factorised entropy over all `b t h w` tokens), so the state dict holds exactly the released `encoder.*` / `decoder.*`
keys. Clips of t = 4k + 1 frames (released compression) map to k + 1 latent frames; t = 1 is an image.
"""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import nn

from openmagvit2.models.quantizer import LFQ, LFQOutput
from openmagvit2.models.video_config import VideoModelConfig
from openmagvit2.models.video_decoder import VideoDecoder
from openmagvit2.models.video_encoder import VideoEncoder


class VideoEncoding(NamedTuple):
    """`VideoTokenizer.encode` result: quantized codes `b K t' h w` (+-1, straight-through), indices `b t' h w`."""

    quantized: torch.Tensor
    indices: torch.Tensor


class VideoTokenizerOutput(NamedTuple):
    """`VideoTokenizer.forward` result: reconstruction `b 3 t H W` (not clamped) and the quantizer's named result."""

    reconstruction: torch.Tensor
    quantizer: LFQOutput


class VideoTokenizer(nn.Module):
    """MAGVIT-2 causal video tokenizer (Open-MAGVIT2 video layout). Clips `b 3 t H W` in [-1, 1].

    Build it from hyper-parameters (`VideoTokenizer(ch=128, ch_mult=[1, 2, 2, 4], num_res_blocks=4)`, the keys of
    `VideoModelConfig`), from a file (`from_checkpoint`), or from an image tokenizer (`inflate_from`).
    """

    def __init__(self, **hparams: Any) -> None:
        super().__init__()
        self.config = VideoModelConfig.from_mapping(hparams)
        c = self.config
        self.encoder = VideoEncoder(c.ch, c.ch_mult, c.num_res_blocks, c.codebook_bits, c.in_channels)
        self.decoder = VideoDecoder(c.ch, c.ch_mult, c.num_res_blocks, c.codebook_bits, c.out_channels)
        self.quantizer = LFQ(codebook_bits=c.codebook_bits, bit_order=c.bit_order,  # type: ignore[arg-type]
                             entropy_temperature=c.entropy_temperature, entropy_eps=c.entropy_eps,
                             sample_minimization_weight=c.sample_minimization_weight,
                             batch_maximization_weight=c.batch_maximization_weight,
                             entropy_across_ranks=c.entropy_across_ranks)

    memory_format = torch.channels_last_3d  # the channels-last layout of its 5-D weights and clips

    @property
    def last_layer(self) -> torch.Tensor:
        """The decoder's output kernel: the adaptive GAN weight balances the gradients reaching it."""
        return self.decoder.conv_out.conv_1.weight

    @property
    def hparams(self) -> dict[str, Any]:
        """A JSON-able copy of the hyper-parameters; `VideoTokenizer(**tokenizer.hparams)` rebuilds the architecture."""
        return self.config.to_dict()

    @classmethod
    def from_config(cls, model_cfg: Mapping[str, Any]) -> VideoTokenizer:
        """Build from a `conf/video_model` group (DictConfig or dict; a `name` key is ignored)."""
        return cls(**VideoModelConfig.from_mapping(model_cfg).to_dict())

    @classmethod
    def from_checkpoint(cls, path: str | Path, model: str | Mapping[str, Any] | None = None, use_ema: bool = True,
                        map_location: str | torch.device = "cpu") -> VideoTokenizer:
        """Load a released Open-MAGVIT2 video `.ckpt` or one of our video checkpoints, strictly. Returns eval mode.

        model: a preset name ("openmagvit2_video_128", "video_tiny") or a dict of hyper-parameters; default: from our
        file's metadata, or inferred from a released file's keys. use_ema: the EMA weights when present (as the
        published evaluation does), else the raw ones.
        """
        from openmagvit2.models.video_loading import load_video_tokenizer

        return load_video_tokenizer(cls, path, model=model, use_ema=use_ema, map_location=map_location)

    @classmethod
    def inflate_from(cls, tokenizer: nn.Module | str | Path, use_ema: bool = True) -> VideoTokenizer:
        """A video tokenizer from an image `Tokenizer` (or a path to an image checkpoint) by last-slice inflation (§4).

        Each 2D kernel goes into the last temporal slice of its 3D kernel, the other slices are zero; the temporal
        upsamplers repeat their 2D kernels for both output frames. On a single frame the result equals the 2D model.
        """
        from openmagvit2.models.inflate import inflate_video_tokenizer

        return inflate_video_tokenizer(cls, tokenizer, use_ema=use_ema)

    def check_clips(self, clips: torch.Tensor) -> None:
        """Refuse clips the model cannot tokenize, with a message saying what to change, before any work."""
        c = self.config
        if clips.ndim != 5 or clips.shape[1] != c.in_channels:
            raise ValueError(f"clips must have shape (b, {c.in_channels}, t, H, W), got {tuple(clips.shape)} (an image "
                             f"batch `b c H W` is clips.unsqueeze(2)).")
        frames, step = clips.shape[2], c.temporal_factor
        if (frames - 1) % step:
            lengths = ", ".join(str(step * k + 1) for k in range(5))
            raise ValueError(f"a clip of {frames} frames cannot be tokenized: use t = {step}k + 1 frames ({lengths}, "
                             f"...; t = 1 is a single image), e.g. the first {(frames - 1) // step * step + 1}.")
        if clips.shape[-2] % c.spatial_factor or clips.shape[-1] % c.spatial_factor:
            raise ValueError(f"frame size {tuple(clips.shape[-2:])} is not a multiple of the downsampling factor "
                             f"{c.spatial_factor}: resize or crop H and W to multiples of {c.spatial_factor}.")

    def encode(self, clips: torch.Tensor) -> VideoEncoding:
        """Clips `b 3 t H W` -> (quantized `b K t' H/f W/f`, indices `b t' H/f W/f` int64), t' = (t - 1) / 4 + 1."""
        self.check_clips(clips)
        result = self.quantizer(self.encoder(clips), compute_losses=False)
        return VideoEncoding(result.quantized, result.indices)

    def decode(self, quantized: torch.Tensor) -> torch.Tensor:
        """Quantized codes `b K t' h w` -> clips `b 3 t H W`, t = 4 (t' - 1) + 1 (not clamped)."""
        if quantized.ndim != 5 or quantized.shape[1] != self.config.codebook_bits:
            raise ValueError(f"decode expects codes of shape (b, {self.config.codebook_bits}, t, h, w), got "
                             f"{tuple(quantized.shape)}: pass encode(...).quantized or use decode_indices.")
        return self.decoder(quantized)

    def decode_indices(self, indices: torch.Tensor) -> torch.Tensor:
        """Token indices `b t' h w` (same bit order as encode) -> clips `b 3 t H W`."""
        if indices.ndim != 4:
            raise ValueError(f"decode_indices expects indices of shape (b, t, h, w), got {tuple(indices.shape)}.")
        dtype = self.decoder.conv_in.conv_1.weight.dtype
        return self.decode(self.quantizer.indices_to_codes(indices, dtype=dtype))

    def forward(self, clips: torch.Tensor, compute_losses: bool | None = None) -> VideoTokenizerOutput:
        """Reconstruct clips `b 3 t H W`; the quantizer's losses are computed in training mode (or when asked)."""
        self.check_clips(clips)
        quantized = self.quantizer(self.encoder(clips), compute_losses=compute_losses)
        return VideoTokenizerOutput(self.decoder(quantized.quantized), quantized)
