"""The evaluation loop: reconstruct every batch (images or clips) once, feed all selected metrics, reduce, compute."""
from __future__ import annotations

import contextlib
import itertools
from collections.abc import Callable, Iterable, Sequence

import torch
import torch.distributed as dist
from torch import nn

from openmagvit2.eval.batch import EvalBatch, Metric
from openmagvit2.eval.fid import FID, FeatureExtractor, check_mode
from openmagvit2.eval.fvd import FVD, ClipFeatureExtractor
from openmagvit2.eval.images import UINT8_MODES
from openmagvit2.eval.perceptual import LPIPS
from openmagvit2.eval.pixel import PSNR, SSIM
from openmagvit2.eval.selection import check_metrics_apply, resolve_metrics
from openmagvit2.eval.usage import CodebookUsage
from openmagvit2.train.precision import DTYPES as AUTOCAST_DTYPES  # one table of precisions


def build_metrics(metrics: Sequence[str], device: torch.device, *, codebook_size: int, fid_mode: str = "clean",
                  uint8_mode: str = "round", fid_extractor: FeatureExtractor | None = None,
                  fid_feature_dim: int | None = None, lpips_networks: dict[str, nn.Module] | None = None,
                  fvd_extractor: ClipFeatureExtractor | None = None, fvd_feature_dim: int | None = None,
                  ) -> list[Metric]:
    """One accumulator per selected metric; pretrained networks come from the caches unless injected (tests)."""
    check_mode(fid_mode)
    if uint8_mode not in UINT8_MODES:
        raise ValueError(f"uint8_mode must be one of {UINT8_MODES}, got {uint8_mode!r}.")
    accumulators: list[Metric] = []
    for name in resolve_metrics(metrics):
        if name == "psnr":
            accumulators.append(PSNR(device))
        elif name == "ssim":
            accumulators.append(SSIM(device))
        elif name == "usage":
            accumulators.append(CodebookUsage(codebook_size, device))
        elif name == "rfid":
            extra = {} if fid_feature_dim is None else {"feature_dim": fid_feature_dim}
            accumulators.append(FID(device, fid_mode, uint8_mode, extractor=fid_extractor, **extra))
        elif name == "rfvd":
            extra = {} if fvd_feature_dim is None else {"feature_dim": fvd_feature_dim}
            accumulators.append(FVD(device, extractor=fvd_extractor, **extra))
        else:
            network = (lpips_networks or {}).get(name)
            accumulators.append(LPIPS(name, device, network=network))
    return accumulators


def _reduce_and_compute(accumulators: list[Metric], num_images: torch.Tensor, num_frames: torch.Tensor,
                        ) -> dict[str, float]:
    """Sum every accumulator's state over ranks, compute on rank 0 (FID's sqrtm is slow), share the result."""
    distributed = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
    if distributed:
        for tensor in [num_images, num_frames, *(t for accumulator in accumulators for t in accumulator.state())]:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    results: dict[str, float] = {}
    error = ""
    if not distributed or dist.get_rank() == 0:
        try:
            results = _compute(accumulators, num_images, num_frames)
        except ValueError as failure:
            if not distributed:
                raise
            error = str(failure)  # shared below, so that the other ranks fail too instead of waiting forever
    if distributed:
        shared: list[object] = [(results, error)]
        dist.broadcast_object_list(shared, src=0)
        results, error = shared[0]
        if error:
            raise ValueError(error)
    return results


def _compute(accumulators: list[Metric], num_images: torch.Tensor, num_frames: torch.Tensor) -> dict[str, float]:
    results = {"num_images": float(num_images.item())}
    if results["num_images"] < 1:
        raise ValueError("the evaluation saw no images (or clips); check the val data (data.*) and max_images.")
    if num_frames.item() > 0:  # only clips count frames
        results["num_frames"] = float(num_frames.item())
    for accumulator in accumulators:
        results.update(accumulator.compute())
    return results


def _holds_clips(samples: object) -> bool:
    """True for a `b 3 t H W` batch of clips, False for `b 3 H W` images; anything else is refused."""
    if isinstance(samples, torch.Tensor) and samples.ndim in (4, 5):
        return samples.ndim == 5
    got = f"shape {tuple(samples.shape)}" if isinstance(samples, torch.Tensor) else type(samples).__name__
    raise TypeError(f"evaluate() expects batches of images `b 3 H W` or clips `b 3 t H W` in [-1, 1], got {got}; "
                    "pass openmagvit2.data.build_val_loader(...) (or a video loader).")


@torch.inference_mode()
def evaluate(tokenizer: nn.Module, batches: Iterable[torch.Tensor], metrics: Sequence[str], device: torch.device | str,
             *, fid_mode: str = "clean", uint8_mode: str = "round", precision: str = "fp32",
             codebook_size: int | None = None, fid_extractor: FeatureExtractor | None = None,
             fid_feature_dim: int | None = None, lpips_networks: dict[str, nn.Module] | None = None,
             fvd_extractor: ClipFeatureExtractor | None = None, fvd_feature_dim: int | None = None,
             on_batch: Callable[[torch.Tensor, torch.Tensor], None] | None = None) -> dict[str, float]:
    """Reconstruct `batches` with `tokenizer` and return the selected metrics over every sample of every rank.

    Under torch.distributed this is a collective: call it on every rank (each with its own shard of the val set).

    Args:
        tokenizer: `openmagvit2.models.Tokenizer` for images, `VideoTokenizer` for clips (or anything with the same
            forward), EMA weights already loaded.
        batches: iterable of `b 3 H W` images or of `b 3 t H W` clips (one kind per call), float in [-1, 1]; under
            torch.distributed each rank passes its own disjoint shard (`build_val_loader(..., rank, world_size)`) so
            every sample counts exactly once. On clips, psnr/ssim/lpips are means over all frames, usage counts all
            tokens, rfvd compares the clips; rfid is refused (and rfvd on images).
        metrics: names from `openmagvit2.eval.METRICS` (+ aliases `lpips` = both LPIPS nets, `fid`, `fvd`).
        device: where the tokenizer and metric networks run.
        fid_mode: `clean` or `legacy_pytorch` (see `openmagvit2.eval.fid`).
        uint8_mode: `round` or `truncate` (the reference scripts) for the 8-bit pixels PSNR/SSIM/rFVD are computed on.
        precision: autocast for the tokenizer forward: `fp32`, `bf16` or `fp16` (metrics always run in fp32/fp64).
        codebook_size: number of codes for `usage` (default: `tokenizer.quantizer.codebook_size`).
        fid_extractor, fid_feature_dim, lpips_networks, fvd_extractor, fvd_feature_dim: injected feature networks
            (tests; default: cached pretrained networks, which must be on disk, see `openmagvit2.weights`).
        on_batch: called with (images, reconstructions) of every local batch (clips for clips), e.g. for a grid.
    Returns:
        {"num_images": N, "psnr": ..., "ssim": ..., "lpips_alex": ..., "lpips_vgg": ..., "rfid": ...,
         "usage": ..., "codes_used": ..., "perplexity": ...} for the selected metrics; identical on every rank.
        For clips `num_images` counts clips, `num_frames` their frames, and `rfvd` replaces `rfid`.
    """
    if precision not in AUTOCAST_DTYPES:
        raise ValueError(f"precision must be one of {sorted(AUTOCAST_DTYPES)}, got {precision!r}.")
    device = torch.device(device)
    if codebook_size is None:
        codebook_size = int(tokenizer.quantizer.codebook_size)
    # The first batch says images or clips, before any network is built; a rank with no batch goes by the metrics.
    batches = iter(batches)
    first = next(batches, None)
    clips = _holds_clips(first) if first is not None else "rfvd" in resolve_metrics(metrics)
    check_metrics_apply(metrics, clips)
    accumulators = build_metrics(metrics, device, codebook_size=codebook_size, fid_mode=fid_mode,
                                 uint8_mode=uint8_mode, fid_extractor=fid_extractor, fid_feature_dim=fid_feature_dim,
                                 lpips_networks=lpips_networks, fvd_extractor=fvd_extractor,
                                 fvd_feature_dim=fvd_feature_dim)
    autocast_dtype = AUTOCAST_DTYPES[precision]
    autocast = (torch.autocast(device.type, dtype=autocast_dtype) if autocast_dtype != torch.float32
                else contextlib.nullcontext())
    num_images = torch.zeros((), dtype=torch.float64, device=device)
    num_frames = torch.zeros((), dtype=torch.float64, device=device)
    was_training = tokenizer.training
    tokenizer.eval()
    try:
        for samples in itertools.chain([first], batches) if first is not None else ():
            if _holds_clips(samples) != clips:
                raise TypeError(f"a batch of shape {tuple(samples.shape)} among batches of "
                                f"{'clips' if clips else 'images'}: evaluate images and clips in separate calls.")
            samples = samples.to(device, non_blocking=True).float()
            with autocast:
                output = tokenizer(samples, compute_losses=False)
            reconstructions = output.reconstruction.float().clamp(-1.0, 1.0)
            if clips:
                batch = EvalBatch.from_clips(samples, reconstructions, output.quantizer.indices, uint8_mode)
                num_frames += samples.shape[0] * samples.shape[2]
            else:
                batch = EvalBatch(samples, reconstructions, output.quantizer.indices, uint8_mode)
            for accumulator in accumulators:
                accumulator.update(batch)
            num_images += samples.shape[0]
            if on_batch is not None:
                on_batch(samples, reconstructions)
    finally:
        tokenizer.train(was_training)
    return _reduce_and_compute(accumulators, num_images, num_frames)
