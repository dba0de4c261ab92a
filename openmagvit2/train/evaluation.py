"""In-training evaluation of the tokenizer: a fixed validation subset kept in memory, the weight-free metrics (+ LPIPS
when the loss already holds its network). The loop logs the results and appends them to `eval_history.jsonl`.

rFID needs the full validation set and the Inception weights: that is `eval.py`'s job, not the loop's.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from openmagvit2.data import build_val_loader, has_validation_set
from openmagvit2.data.transforms import to_model_range
from openmagvit2.eval import evaluate
from openmagvit2.eval.images import to_uint8
from openmagvit2.train.distributed import DistributedContext


class TrainingEvaluator:
    """`evaluator()`: PSNR, codebook usage and (with the loss's LPIPS) LPIPS-VGG of `model` on the fixed val subset.

    The subset stays in memory as uint8, 4x smaller than float (the images are 8-bit to begin with). LPIPS reuses
    the training loss's VGG network instead of loading a second copy onto the device.
    """

    def __init__(self, data_cfg: Any, batch_size: int, max_images: int, ctx: DistributedContext, model: nn.Module,
                 perceptual: nn.Module | None) -> None:
        self.ctx, self.model = ctx, model
        self.batches = None  # data.val_dir=null: no validation set, nothing to evaluate during training
        if has_validation_set(data_cfg):
            self.batches = [to_uint8(batch) for batch in build_val_loader(data_cfg, batch_size, ctx.rank,
                                                                           ctx.world_size, max_images=max_images)]
        self.metrics = ["psnr", "usage"]
        self.lpips_networks = {}
        if perceptual is not None:  # eval.py computes LPIPS without it, and rFID
            self.metrics.append("lpips_vgg")
            self.lpips_networks = {"lpips_vgg": perceptual}

    def __call__(self) -> dict[str, float]:
        if self.batches is None:
            return {}
        results = evaluate(self.model, (to_model_range(batch) for batch in self.batches), metrics=self.metrics,
                           device=self.ctx.device, lpips_networks=self.lpips_networks)
        return {f"val/{name}": value for name, value in results.items()}


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def batch_usage(indices: torch.Tensor, codebook_size: int) -> torch.Tensor:
    """Fraction of the codebook used by one batch's tokens, as a tensor on the tokens' device."""
    return torch.as_tensor(indices.unique().numel() / codebook_size, device=indices.device)
