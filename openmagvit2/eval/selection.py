"""Metric names users type (`metrics=[...]`), their aliases, and the pretrained files each one needs."""
from __future__ import annotations

from collections.abc import Sequence

from openmagvit2.eval.fid import WEIGHTS_FOR_MODE, check_mode

METRICS = ("rfid", "psnr", "ssim", "lpips_alex", "lpips_vgg", "usage")
ALIASES = {"lpips": ("lpips_alex", "lpips_vgg"), "fid": ("rfid",)}
# Metrics computable from the tokenizer alone, with no pretrained network (the offline default for training).
WEIGHT_FREE = ("psnr", "ssim", "usage")


def resolve_metrics(names: Sequence[str]) -> list[str]:
    """Expand aliases, drop duplicates (order kept) and refuse unknown names."""
    if isinstance(names, str):
        names = [names]
    resolved: list[str] = []
    for name in names:
        expanded = ALIASES.get(name, (name,))
        for metric in expanded:
            if metric not in METRICS:
                raise ValueError(f"unknown metric {name!r}; choose from {list(METRICS)} or the aliases "
                                 f"{sorted(ALIASES)}, e.g. metrics=[psnr,ssim,usage].")
            if metric not in resolved:
                resolved.append(metric)
    if not resolved:
        raise ValueError("metrics is empty; choose some of " + ", ".join(METRICS) + ".")
    return resolved


def required_weights(metrics: Sequence[str], fid_mode: str = "clean") -> list[str]:
    """Names (see `openmagvit2.weights.WEIGHTS`) of the pretrained files the selected metrics load."""
    check_mode(fid_mode)
    needed = []
    for metric in resolve_metrics(metrics):
        if metric == "rfid":
            needed.append(WEIGHTS_FOR_MODE[fid_mode])
        elif metric.startswith("lpips_"):
            needed.append(metric)
    return needed
