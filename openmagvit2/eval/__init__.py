"""Evaluation of tokenizers: rFID (clean-fid), rFVD (I3D), PSNR, SSIM, LPIPS (AlexNet, VGG) and codebook usage.

`evaluate(tokenizer, batches, metrics, device)` is the one entry point (used by `eval.py` and by the trainer at
`train.eval_every`), for image batches `b 3 H W` and for clip batches `b 3 t H W` (per-frame PSNR/SSIM/LPIPS, rFVD);
`save_reconstruction_grid` writes originals-vs-reconstructions PNGs; `required_weights` says which pretrained files a
metric selection needs so that callers can `openmagvit2.weights.require` them up front.
"""
from openmagvit2.eval.fid import FID_MODES
from openmagvit2.eval.grid import reconstruction_grid, save_reconstruction_grid
from openmagvit2.eval.images import UINT8_MODES
from openmagvit2.eval.runner import evaluate
from openmagvit2.eval.selection import (ALIASES, METRICS, WEIGHT_FREE, check_metrics_apply, required_weights,
                                        resolve_metrics)

__all__ = ["ALIASES", "FID_MODES", "METRICS", "UINT8_MODES", "WEIGHT_FREE", "check_metrics_apply", "evaluate",
           "reconstruction_grid", "required_weights", "resolve_metrics", "save_reconstruction_grid"]
