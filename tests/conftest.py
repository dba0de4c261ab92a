"""Shared test helpers: the repository root, a fast composed config, and running the entry points."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

import openmagvit2.config  # noqa: F401  (stores the config schemas in Hydra's ConfigStore)

ROOT = Path(__file__).resolve().parents[1]
CONF_DIR = ROOT / "conf"

# The CPU demo made tiny and quick for end-to-end runs on 2 CPU cores (conf/debug/fast.yaml).
FAST = ["experiment=demo", "debug=fast"]


def compose_config(overrides: list[str], config_name: str = "config") -> DictConfig:
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name=config_name, overrides=overrides)


def compose_group(group: str, option: str) -> DictConfig:
    """One group option on its own (e.g. `data`, `sample`), typed by its schema, as the trainer composes it."""
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name=f"{group}/{option}")[group]


def run_entry_point(args: list[str], cwd: Path = ROOT, env: dict | None = None, timeout: int = 300,
                    ) -> subprocess.CompletedProcess:
    """Run `python <args>` (or `torchrun ...` when args[0] is '-m') with a clean, quiet environment."""
    full_env = {**os.environ, "WANDB_SILENT": "true", "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1",
                **(env or {})}
    return subprocess.run([sys.executable, *args], cwd=cwd, env=full_env, capture_output=True, text=True,
                          timeout=timeout)


class TinyFeatures(torch.nn.Module):
    """A random-initialised stand-in for Inception (no download): `b 3 299 299` pixels in [0, 255] -> `b 8`."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.conv = torch.nn.Conv2d(3, 8, kernel_size=8, stride=8)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        assert pixels.shape[-2:] == (299, 299)
        return torch.relu(self.conv(pixels / 128 - 1)).mean(dim=(2, 3))
