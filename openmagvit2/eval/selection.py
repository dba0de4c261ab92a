"""Metric names users type (`metrics=[...]`), their aliases, the data each one applies to, and the files it needs."""
from __future__ import annotations

from collections.abc import Sequence

from openmagvit2.eval.fid import WEIGHTS_FOR_MODE, check_mode
from openmagvit2.eval.i3d import WEIGHTS_NAME as I3D_WEIGHTS

METRICS = ("rfid", "rfvd", "psnr", "ssim", "lpips_alex", "lpips_vgg", "usage")
ALIASES = {"lpips": ("lpips_alex", "lpips_vgg"), "fid": ("rfid",), "fvd": ("rfvd",)}
# Metrics computable from the tokenizer alone, with no pretrained network (the offline default for training).
WEIGHT_FREE = ("psnr", "ssim", "usage")
# Why a metric does not apply to one kind of data; the others apply to both (per frame on clips).
NOT_FOR_CLIPS = {"rfid": "rfid is an image metric; for clips use rfvd (psnr, ssim, lpips and usage work on clips, "
                         "per frame)."}
NOT_FOR_IMAGES = {"rfvd": "rfvd is a video metric and needs clips `b 3 t H W`; for images use rfid."}


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


def check_metrics_apply(metrics: Sequence[str], clips: bool) -> None:
    """Refuse a metric that does not apply to the data: rfid on clips, rfvd on images."""
    refused = NOT_FOR_CLIPS if clips else NOT_FOR_IMAGES
    for metric in resolve_metrics(metrics):
        if metric in refused:
            raise ValueError(refused[metric])


def required_weights(metrics: Sequence[str], fid_mode: str = "clean") -> list[str]:
    """Names (see `openmagvit2.weights.WEIGHTS`) of the pretrained files the selected metrics load."""
    check_mode(fid_mode)
    needed = []
    for metric in resolve_metrics(metrics):
        if metric == "rfid":
            needed.append(WEIGHTS_FOR_MODE[fid_mode])
        elif metric == "rfvd":
            needed.append(I3D_WEIGHTS)
        elif metric.startswith("lpips_"):
            needed.append(metric)
    return needed
