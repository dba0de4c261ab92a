"""Architectures of the released Open-MAGVIT2 tokenizers and the tiny CPU model, by Hydra `model=` name.

These mirror `conf/model/*.yaml` (a test keeps them equal) so that `Tokenizer.from_checkpoint(path, model=name)`
works from an installed package, where the `conf/` folder is not available.
"""
from __future__ import annotations

from typing import Any

MODEL_PRESETS: dict[str, dict[str, Any]] = {
    # 8x down, 16x16 tokens at 128 px; channel 0 is the most significant bit of the token index.
    "openmagvit2_v1_128_base": {"ch": 128, "ch_mult": [1, 2, 2, 4], "num_res_blocks": 2, "adaptive_norm": False,
                                "bit_order": "msb_first"},
    # 16x down, 16x16 tokens at 256 px.
    "openmagvit2_v1_256_base": {"ch": 128, "ch_mult": [1, 1, 2, 2, 4], "num_res_blocks": 2, "adaptive_norm": False,
                                "bit_order": "msb_first"},
    # v2/v3 "Large": adaptive GroupNorm in the decoder, channel 0 is the least significant bit.
    "openmagvit2_v3_128_large": {"ch": 128, "ch_mult": [1, 2, 2, 4], "num_res_blocks": 4, "adaptive_norm": True,
                                 "bit_order": "lsb_first"},
    "openmagvit2_v3_256_large": {"ch": 128, "ch_mult": [1, 1, 2, 2, 4], "num_res_blocks": 4, "adaptive_norm": True,
                                 "bit_order": "lsb_first"},
    # CPU demos and tests: 4x down (16x16 tokens at 64 px).
    "tiny": {"ch": 32, "ch_mult": [1, 2, 2], "num_res_blocks": 1, "adaptive_norm": False, "bit_order": "lsb_first"},
}


def model_preset(name: str) -> dict[str, Any]:
    """A copy of the architecture hyper-parameters registered under `name` (a `conf/model/` option)."""
    if name not in MODEL_PRESETS:
        raise ValueError(f"unknown model {name!r}: use one of {sorted(MODEL_PRESETS)} or pass a dict of "
                         f"hyper-parameters (ch, ch_mult, num_res_blocks, adaptive_norm, bit_order).")
    preset = MODEL_PRESETS[name]
    return {key: list(value) if isinstance(value, list) else value for key, value in preset.items()}
