"""Mixed precision: one autocast policy and one GradScaler per optimiser (fp16 only).

bf16 needs no loss scaling; fp16 needs a scaler per optimiser because the generator and discriminator losses have
very different magnitudes and overflow independently.
"""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


class Precision:
    """Autocast context and gradient scaling for `train.precision` in {fp32, bf16, fp16}."""

    def __init__(self, name: str, device: torch.device) -> None:
        if name not in DTYPES:
            raise ValueError(f"train.precision={name!r} is not one of {sorted(DTYPES)}.")
        if name == "fp16" and device.type != "cuda":
            raise ValueError("train.precision=fp16 needs a CUDA GPU; use bf16 or fp32 on CPU.")
        self.name = name
        self.dtype = DTYPES[name]
        self.device = device

    @contextlib.contextmanager
    def autocast(self) -> Iterator[None]:
        if self.name == "fp32":
            yield
        else:
            with torch.autocast(device_type=self.device.type, dtype=self.dtype):
                yield

    def make_scaler(self) -> torch.amp.GradScaler:
        """A GradScaler that is a no-op unless fp16 (so the loop has one code path)."""
        return torch.amp.GradScaler(self.device.type, enabled=self.name == "fp16")
