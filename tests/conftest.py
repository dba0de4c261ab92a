"""Shared test helpers: the repository root, a fast composed config, and running the entry points."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

ROOT = Path(__file__).resolve().parents[1]
CONF_DIR = ROOT / "conf"

# Tiny, fast settings for end-to-end runs on 2 CPU cores.
FAST_OVERRIDES = [
    "experiment=demo", "data.image_size=32", "train.batch_size=4", "train.eval_images=8", "train.log_every=1",
    "train.image_every=0", "train.eval_every=0", "logger.mode=disabled", "data.num_workers=0",
]


def compose_config(overrides: list[str], config_name: str = "config") -> DictConfig:
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name=config_name, overrides=overrides)


def run_entry_point(args: list[str], cwd: Path = ROOT, env: dict | None = None, timeout: int = 300,
                    ) -> subprocess.CompletedProcess:
    """Run `python <args>` (or `torchrun ...` when args[0] is '-m') with a clean, quiet environment."""
    full_env = {**os.environ, "WANDB_SILENT": "true", "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1",
                **(env or {})}
    return subprocess.run([sys.executable, *args], cwd=cwd, env=full_env, capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture
def fast_overrides() -> list[str]:
    return list(FAST_OVERRIDES)


class TinyFeatures(torch.nn.Module):
    """A random-initialised stand-in for Inception (no download): `b 3 299 299` pixels in [0, 255] -> `b 8`."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.conv = torch.nn.Conv2d(3, 8, kernel_size=8, stride=8)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        assert pixels.shape[-2:] == (299, 299)
        return torch.relu(self.conv(pixels / 128 - 1)).mean(dim=(2, 3))
