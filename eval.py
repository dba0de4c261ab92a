"""Evaluate a tokenizer checkpoint: rFID, PSNR, SSIM, LPIPS and codebook usage over a val set, on one or many GPUs;
for a video tokenizer on video data (`data=video_wds`): rFVD (I3D) and per-frame PSNR, SSIM, LPIPS, usage.

    python eval.py ckpt=<file> data=<val data> data.image_size=256 [model=<released arch>] [metrics=[psnr,ssim,usage]]
    python eval.py ckpt=<video file> data=video_wds data.root=<UCF-101 shards> [protocol=reference]
    torchrun --nproc_per_node=8 eval.py ckpt=<file> ...

Writes to the run dir (`hydra.run.dir`): `metrics.json`, `reconstructions.png` (videos: a frame grid, and the clips
side by side as `reconstructions.gif` / `.mp4`), and prints a table plus (images) a markdown row of the seed's
results table. See docs/evaluation.md.
"""
from __future__ import annotations

import sys

if __name__ == "__main__" and {"--help", "-h"} & set(sys.argv[1:]):  # answered before the slow imports below
    from openmagvit2.cli import print_help

    sys.exit(print_help("eval"))

from pathlib import Path
from typing import Any

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from openmagvit2 import hub, weights
from openmagvit2.cli import check_additions
from openmagvit2.config import DATA_SOURCES, ConfigError, cap_workers, data_config
from openmagvit2.data.build import NoValidationSetError
from openmagvit2.eval import (FID_MODES, UINT8_MODES, check_metrics_apply, evaluate, required_weights,
                              resolve_metrics, save_reconstruction_grid)
from openmagvit2.eval.report import SEED_TABLE_HEADER, markdown_row, print_results, write_metrics_json
from openmagvit2.eval.runner import AUTOCAST_DTYPES
from openmagvit2.eval.video_media import save_clip_grid, save_side_by_side
from openmagvit2.io.safe_load import CheckpointError


IMAGE_METRICS = ["rfid", "psnr", "ssim", "lpips", "usage"]  # `metrics=null`: these on images, and on clips
VIDEO_METRICS = ["rfvd", "psnr", "ssim", "lpips", "usage"]
PROTOCOLS = ("centre", "reference")


def validate(cfg: DictConfig, video: bool) -> list[str]:
    """Check the eval keys before anything is built; returns the resolved metric names."""
    if OmegaConf.is_missing(cfg, "ckpt"):
        raise ConfigError("ckpt is required: python eval.py ckpt=<checkpoint .pt/.ckpt, save_pretrained folder or "
                          "hf://<released repo>>.")
    if hub.is_hub_name(str(cfg.ckpt)):
        released = hub.lookup(str(cfg.ckpt))  # an unknown name is refused here; the download waits for weights
        if (released.kind == "video_tokenizer") != video:
            raise ConfigError(f"ckpt={cfg.ckpt} holds {'a video' if released.kind == 'video_tokenizer' else 'an image'} "
                              f"tokenizer but data={cfg.data.name} holds {'clips' if video else 'images'}: evaluate "
                              f"it on {'image data (e.g. data=imagenet_wds)' if video else 'data=video_wds'}.")
    elif not Path(cfg.ckpt).exists():
        raise ConfigError(f"ckpt={cfg.ckpt} does not exist; pass the path of a checkpoint file or folder, or "
                          f"hf://<released repo> (e.g. hf://{hub.RELEASED[0].repo_id}).")
    if cfg.metrics is None:
        names = VIDEO_METRICS if video else IMAGE_METRICS
    else:
        names = [cfg.metrics] if isinstance(cfg.metrics, str) else list(cfg.metrics)
    try:
        metrics = resolve_metrics(names)
        check_metrics_apply(metrics, clips=video)  # rfid on clips, rfvd on images: refused before any work
    except ValueError as error:
        raise ConfigError(str(error)) from None
    if cfg.protocol not in PROTOCOLS or (cfg.protocol == "reference" and not video):
        raise ConfigError(f"protocol={cfg.protocol} is not allowed: use centre, or reference (video data only: "
                          "Open-MAGVIT2's evaluation_video.py protocol).")
    if int(cfg.pad_to) < 1:
        raise ConfigError(f"pad_to={cfg.pad_to} must be >= 1 (the reference protocol pads to 10000 clips).")
    checks = [("fid_mode", cfg.fid_mode, FID_MODES), ("uint8", cfg.uint8, UINT8_MODES),
              ("precision", cfg.precision, tuple(AUTOCAST_DTYPES))]
    for key, value, allowed in checks:
        if value not in allowed:
            raise ConfigError(f"{key}={value} is not allowed; use one of {list(allowed)}.")
    if int(cfg.batch_size) < 1:
        raise ConfigError(f"batch_size={cfg.batch_size} must be >= 1.")
    if cfg.max_images is not None and int(cfg.max_images) < 2 and {"rfid", "rfvd"} & set(metrics):
        raise ConfigError(f"max_images={cfg.max_images} is too small for a Frechet distance (needs >= 2 samples).")
    if int(cfg.grid_images) < 0:
        raise ConfigError(f"grid_images={cfg.grid_images} must be >= 0.")
    return metrics


def architecture_override(cfg: DictConfig) -> dict[str, Any] | None:
    """The model/quantizer groups when the command line chose them, else None (the checkpoint's own architecture)."""
    overrides = HydraConfig.get().overrides.task
    if not any(item.lstrip("+~").startswith(("model=", "model.", "quantizer=", "quantizer.")) for item in overrides):
        return None
    hparams = {**OmegaConf.to_container(cfg.model, resolve=True), **OmegaConf.to_container(cfg.quantizer,
                                                                                             resolve=True)}
    hparams.pop("defaults", None)
    # The chosen `model=<name>` is kept as "name" (ignored when building) to name the choice in mismatch messages.
    hparams["name"] = next((item.split("=", 1)[1] for item in overrides if item.startswith("model=")), None)
    return hparams


class GridKeeper:
    """Keeps the first `count` originals and reconstructions seen on this rank, on the CPU, for the PNG grid."""

    def __init__(self, count: int) -> None:
        self.count = count
        self.images: list[torch.Tensor] = []
        self.reconstructions: list[torch.Tensor] = []

    def __call__(self, images: torch.Tensor, reconstructions: torch.Tensor) -> None:
        kept = sum(batch.shape[0] for batch in self.images)
        if kept < self.count:
            self.images.append(images[: self.count - kept].cpu())
            self.reconstructions.append(reconstructions[: self.count - kept].cpu())

    def save(self, path: Path) -> Path | None:
        """The PNG grid at `path`; for clips also the side-by-side `.gif` and `.mp4` next to it."""
        if not self.images:
            return None
        images, reconstructions = torch.cat(self.images), torch.cat(self.reconstructions)
        if images.ndim == 5:
            for suffix in (".gif", ".mp4"):
                save_side_by_side(images, reconstructions, path.with_suffix(suffix))
            return save_clip_grid(images, reconstructions, path)
        return save_reconstruction_grid(images, reconstructions, path, nrow=min(self.count, 8))


def train_resolution(checkpoint: Any) -> int | None:
    """The training image size stored in our checkpoints' config (None for released files or folders).

    Read from the dict that loaded the weights: the file is not opened a second time.
    """
    config = checkpoint.get("config") if isinstance(checkpoint, dict) else None
    size = config.get("data", {}).get("image_size") if isinstance(config, dict) else None
    return int(size) if isinstance(size, int) else None


def load_video_tokenizer(cfg: DictConfig, ckpt: Path) -> Any:
    """The video tokenizer of a released video `.ckpt` (its architecture from the registry or its keys) or of our
    video checkpoint, read safely; EMA weights unless `use_ema=false`."""
    from openmagvit2.models import VideoTokenizer

    model = hub.lookup(str(cfg.ckpt)).model if hub.is_hub_name(str(cfg.ckpt)) else None
    return VideoTokenizer.from_checkpoint(ckpt, model=model, use_ema=bool(cfg.use_ema))


def load_tokenizer(cfg: DictConfig, ckpt: Path) -> tuple[Any, Any]:
    """The tokenizer and the checkpoint dict it came from (None for a save_pretrained folder), read once, safely.

    A released name (`ckpt=hf://...`) brings its architecture from the registry unless the command line chose one."""
    from openmagvit2.io import read_checkpoint
    from openmagvit2.models import Tokenizer
    from openmagvit2.models.loading import tokenizer_from_checkpoint

    model, use_ema = architecture_override(cfg), bool(cfg.use_ema)
    if model is None and hub.is_hub_name(str(cfg.ckpt)):
        model = hub.lookup(str(cfg.ckpt)).model
    if ckpt.is_dir():
        return Tokenizer.from_checkpoint(ckpt, model=model, use_ema=use_ema), None
    checkpoint = read_checkpoint(ckpt)
    return tokenizer_from_checkpoint(Tokenizer, checkpoint, str(ckpt), model, use_ema), checkpoint


def log_to_wandb(cfg: DictConfig, results: dict[str, float], run_dir: Path, grid: Path | None) -> None:
    from openmagvit2.train.tracking import resolve_wandb_mode

    mode = resolve_wandb_mode(str(cfg.logger.mode))
    if mode == "disabled":
        return
    import wandb

    run = wandb.init(project=cfg.logger.project, entity=cfg.logger.entity, group=cfg.logger.group,
                     name=cfg.logger.name or f"eval-{run_dir.name}", tags=list(cfg.logger.tags or []),
                     job_type="eval", dir=str(run_dir), mode=mode,
                     config=OmegaConf.to_container(cfg, resolve=True), settings=wandb.Settings(quiet=True))
    run.summary.update({f"eval/{key}": value for key, value in results.items()})
    if grid is not None:
        run.log({"eval/reconstructions": wandb.Image(str(grid))})
    run.finish()


def check_image_size(image_size: int, factor: int, ckpt: str) -> None:
    """Refuse an eval size the tokenizer cannot tokenize (it would fail deep inside the first forward)."""
    if image_size % factor:
        lower, upper = image_size // factor * factor, (image_size // factor + 1) * factor
        raise ConfigError(f"data.image_size={image_size} is not a multiple of {ckpt}'s downsampling factor {factor}: "
                          f"use {lower or upper} or {upper}.")


def run(cfg: DictConfig) -> dict[str, float]:
    video = bool(DATA_SOURCES[cfg.data.name].is_video) if cfg.data.get("name") in DATA_SOURCES else False
    metrics = validate(cfg, video)
    if cfg.protocol == "reference":  # upstream evaluates on ~10k clips of the *train* videos (REFERENCE-VIDEO §7)
        cfg.data.val_shards = cfg.data.shards
    # The typed, checked data group: only the validation split is needed (and checked) here.
    data = cap_workers(data_config(cfg.data, for_eval=True))
    # Refuse before building anything when a feature network's weights are not on disk.
    weights.require(required_weights(metrics, cfg.fid_mode))

    from openmagvit2.data import build_val_loader
    from openmagvit2.train.distributed import init_distributed, shutdown_distributed

    ctx = init_distributed(str(cfg.device))
    try:
        torch.manual_seed(int(cfg.seed))
        ckpt = hub.resolve_path(str(cfg.ckpt))
        if video:
            tokenizer, checkpoint = load_video_tokenizer(cfg, ckpt), None
            check_clip_shape(int(data.frames), int(data.image_size), tokenizer.config, str(cfg.ckpt))
            factor = tokenizer.config.spatial_factor
        else:
            tokenizer, checkpoint = load_tokenizer(cfg, ckpt)
            factor = tokenizer.downsample_factor
            check_image_size(int(data.image_size), factor, str(cfg.ckpt))
        tokenizer = tokenizer.to(ctx.device)
        label_resolution = train_resolution(checkpoint)
        del checkpoint  # the optimiser states etc. of a training checkpoint are not needed during evaluation
        protocol = {"protocol": str(cfg.protocol), "pad_to": int(cfg.pad_to)} if video else {}
        loader = build_val_loader(data, int(cfg.batch_size), ctx.rank, ctx.world_size, cfg.max_images, **protocol)
        grid = GridKeeper(int(cfg.grid_images) if ctx.is_main else 0)
        results = evaluate(tokenizer, loader, metrics, ctx.device, fid_mode=cfg.fid_mode, uint8_mode=cfg.uint8,
                           precision=cfg.precision, on_batch=grid)
        if ctx.is_main:
            run_dir = Path(HydraConfig.get().runtime.output_dir)
            grid_path = grid.save(run_dir / "reconstructions.png")
            hparams = tokenizer.hparams
            name = cfg.name or ckpt.stem
            row = None if video else markdown_row(results, name, label_resolution, int(cfg.data.image_size),
                                                  factor, int(hparams["codebook_bits"]))
            notes = ("psnr/ssim: per image on 8-bit images, averaged over images (the reference v1 script computed "
                     "PSNR per batch); usage: fraction of codes used at least once.")
            if video:
                notes = ("clips: psnr/ssim/lpips per frame, averaged over frames; rfvd: I3D logits of whole clips; "
                         f"protocol={cfg.protocol} (docs/evaluation.md); usage: fraction of codes used at least once.")
            write_metrics_json(run_dir / "metrics.json", results, {
                "ckpt": str(cfg.ckpt) if hub.is_hub_name(str(cfg.ckpt)) else str(ckpt.resolve()), "model": name,
                "tokenizer_hparams": hparams,
                "image_size": int(cfg.data.image_size), "data": OmegaConf.to_container(cfg.data, resolve=True),
                "fid_mode": cfg.fid_mode, "uint8": cfg.uint8, "precision": cfg.precision, "use_ema": cfg.use_ema,
                "world_size": ctx.world_size, "markdown_row": row, "notes": notes, **protocol,
            })
            what = f"{int(data.frames)} x {int(cfg.data.image_size)}px clips" if video else \
                f"{int(cfg.data.image_size)}px"
            print_results(results, f"{name} @ {what}", cfg.fid_mode)
            if row is not None:
                print(SEED_TABLE_HEADER)
                print(row)
            print(f"wrote {run_dir / 'metrics.json'}" + (f" and {grid_path}" if grid_path else ""))
            log_to_wandb(cfg, results, run_dir, grid_path)
        return results
    finally:
        shutdown_distributed()


def check_clip_shape(frames: int, image_size: int, config: Any, ckpt: str) -> None:
    """Refuse clips the video tokenizer cannot tokenize: t = 4k + 1 frames, sides multiples of its factor."""
    check_image_size(image_size, config.spatial_factor, ckpt)
    if (frames - 1) % config.temporal_factor:
        raise ConfigError(f"data.frames={frames} cannot be tokenized by {ckpt}: use {config.temporal_factor}k + 1 "
                          f"frames (e.g. 17 or 9).")


@hydra.main(version_base="1.3", config_path="conf", config_name="eval")
def main(cfg: DictConfig) -> None:
    try:
        check_additions(HydraConfig.get().overrides.task, "eval", cfg.data.get("name"))  # `+data.val_dir2=...`
        run(cfg)
    except (ConfigError, weights.MissingWeightsError, CheckpointError, NoValidationSetError) as error:
        print(f"eval.py: {error}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
