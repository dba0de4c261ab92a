"""Sample a class-conditional AR model to an ADM-style `.npz` (for gFID) and a PNG grid, on one or many processes.

    python -m openmagvit2.sample ckpt=AR_256_B.ckpt                     # preset ar_b: 50 per class, 50k images
    python -m openmagvit2.sample ckpt=AR_256_L.ckpt cfg_scale=[1.9,1.9] temperature=[1.1,1.0] num_per_class=10
    torchrun --nproc_per_node=8 -m openmagvit2.sample ckpt=AR_256_XL.ckpt precision=bf16 batch_size=64

Every (class, index) sample is generated exactly once over the ranks and draws from its own seeded generator, so
the images do not depend on the world size or the batch size (`openmagvit2.generation.sample_npz`). Each rank
writes `samples_{rank}.npz`; rank 0 merges them into `samples.npz` (`arr_0` uint8 `N H W 3`, `labels`,
`sample_ids`, shuffled with a fixed seed as the reference's combine_npz.py), writes `grid.png` (one row per class
for the first `grid_classes` classes) and `sampling.json` (the resolved settings). Score it with
`python -m openmagvit2.eval.generation samples=<out>/samples.npz ref=VIRTUAL_imagenet256_labeled.npz`.
See docs/evaluation.md, "Generation (gFID)".
"""
from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Mapping
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import hydra
import torch
from omegaconf import DictConfig, OmegaConf

from openmagvit2.errors import ConfigError
from openmagvit2.eval.runner import AUTOCAST_DTYPES
from openmagvit2.io.safe_load import CheckpointError
from openmagvit2.paths import conf_dir
from openmagvit2.train.distributed import barrier

log = logging.getLogger("openmagvit2.sample")

ARCHITECTURE_KEYS = ("dim", "num_heads", "spatial_layers", "factorized_layers", "factorized_bits", "num_classes",
                     "grid_size")
KNOB_DEFAULTS = {"cfg_scale": 1.0, "temperature": 1.0, "top_k": 0, "top_p": 1.0}
LOG_EVERY_BATCHES = 10
SHUFFLE_SEED = 0  # the permutation of samples.npz (fixed: the file is the same for every world size)


def published_preset_for(config: Any) -> str | None:
    """The `PUBLISHED_SAMPLING` name (ar_b, ar_l, ar_xl) whose `conf/ar_model` architecture equals `config`'s."""
    from openmagvit2.generation import PUBLISHED_SAMPLING, ar_model_config

    for name in PUBLISHED_SAMPLING:
        published = ar_model_config(name)
        if all(getattr(published, key) == getattr(config, key) for key in ARCHITECTURE_KEYS):
            return name
    return None


def resolve_sampling(cfg: Mapping[str, Any], config: Any) -> tuple[str | None, dict[str, Any]]:
    """(preset name or None, the four knobs): explicit keys win, then the preset, then the plain defaults.

    `preset=auto` takes the published settings of the size the model has (none for other sizes), `preset=none`
    none; a knob is a number or one value per sub-token.
    """
    from openmagvit2.generation import PUBLISHED_SAMPLING

    preset = cfg.get("preset", "auto")
    preset = None if preset in (None, "none") else str(preset)
    if preset == "auto":
        preset = published_preset_for(config)
    elif preset is not None and preset not in PUBLISHED_SAMPLING:
        raise ConfigError(f"preset={preset} is not a published setting; use auto, none or one of "
                          f"{sorted(PUBLISHED_SAMPLING)}.")
    knobs = dict(KNOB_DEFAULTS)
    if preset is not None:
        knobs.update({key: list(value) for key, value in PUBLISHED_SAMPLING[preset].items()})
    for key in KNOB_DEFAULTS:
        value = cfg.get(key)
        if value is not None:
            knobs[key] = list(value) if OmegaConf.is_list(value) or isinstance(value, (list, tuple)) else value
    from openmagvit2.generation.sampling import sampling_knobs

    try:
        sampling_knobs(len(config.factorized_bits), **knobs)
    except (ValueError, TypeError) as error:
        raise ConfigError(str(error)) from None
    return preset, knobs


def validate(cfg: DictConfig) -> None:
    """Check the keys that need no file before anything is read."""
    if OmegaConf.is_missing(cfg, "ckpt"):
        raise ConfigError("ckpt is required: python -m openmagvit2.sample ckpt=<AR .ckpt or ARModel checkpoint>.")
    for key in ("ckpt", "tokenizer"):
        if cfg[key] is not None and not Path(cfg[key]).exists():
            raise ConfigError(f"{key}={cfg[key]} does not exist; pass the path of a checkpoint file or folder.")
    for key in ("num_per_class", "batch_size"):
        if int(cfg[key]) < 1:
            raise ConfigError(f"{key}={cfg[key]} must be >= 1.")
    if cfg.num_classes is not None and int(cfg.num_classes) < 1:
        raise ConfigError(f"num_classes={cfg.num_classes} must be >= 1 (null: every class of the model).")
    from openmagvit2.generation import PUBLISHED_SAMPLING

    if cfg.preset not in (None, "auto", "none", *PUBLISHED_SAMPLING):
        raise ConfigError(f"preset={cfg.preset} is not a published setting; use auto, none or one of "
                          f"{sorted(PUBLISHED_SAMPLING)}.")
    if cfg.precision not in AUTOCAST_DTYPES:
        raise ConfigError(f"precision={cfg.precision} is not allowed; use one of {list(AUTOCAST_DTYPES)}.")
    if int(cfg.grid_classes) < 0 or int(cfg.grid_per_class) < 1:
        raise ConfigError(f"grid_classes={cfg.grid_classes} must be >= 0 and grid_per_class={cfg.grid_per_class} "
                          f">= 1.")


def load_models(cfg: DictConfig, device: torch.device) -> tuple[Any, Any]:
    """The AR model and the tokenizer that decodes its ids (by default the one embedded in a released AR file)."""
    from openmagvit2.generation import ARModel
    from openmagvit2.models import Tokenizer
    from openmagvit2.models.loading import CheckpointMismatchError

    model = ARModel.from_checkpoint(cfg.ckpt).to(device)
    source = cfg.tokenizer if cfg.tokenizer is not None else cfg.ckpt
    try:
        tokenizer = Tokenizer.from_checkpoint(source, use_ema=bool(cfg.tokenizer_use_ema))
    except CheckpointMismatchError:
        if cfg.tokenizer is not None:
            raise
        raise ConfigError(f"ckpt={cfg.ckpt} embeds no tokenizer (only released AR files do): pass "
                          f"tokenizer=<the tokenizer checkpoint the model was trained on>.") from None
    bits = int(tokenizer.hparams.get("codebook_bits", model.config.token_bits))
    if bits != model.config.token_bits:
        raise ConfigError(f"the tokenizer has {bits}-bit codes but the AR model {model.config.token_bits}-bit tokens: "
                          f"pass the tokenizer the model was trained on.")
    return model, tokenizer.to(device).eval()


def output_dir(cfg: DictConfig, ctx: Any) -> Path:
    """`out`, or rank 0's Hydra run dir, the same on every rank (rank 0's choice is broadcast)."""
    if cfg.out is not None:
        return Path(cfg.out)
    from hydra.core.hydra_config import HydraConfig

    from openmagvit2.train.distributed import agree_on_run_dir

    # ${now:...} may differ by a second between ranks: rank 0's choice
    return agree_on_run_dir(Path(HydraConfig.get().runtime.output_dir), ctx)


def save_grid(out: Path, world_size: int, per_class: int, num_rows: int, per_row: int) -> Path | None:
    """`grid.png`: one row per class, the first `per_row` samples of each of the first `num_rows` classes."""
    if num_rows == 0:
        return None
    from einops import rearrange
    from PIL import Image
    from torchvision.utils import make_grid

    from openmagvit2.generation.sample_npz import class_grid_rows

    rows = class_grid_rows(out, world_size, per_class, num_rows, per_row)
    images = torch.from_numpy(rearrange(rows, "r k h w c -> (r k) c h w"))
    grid = make_grid(images, nrow=rows.shape[1], padding=2, pad_value=255)
    path = out / "grid.png"
    Image.fromarray(rearrange(grid, "c h w -> h w c").numpy()).save(path)
    return path


def run(cfg: DictConfig) -> Path | None:
    """Sample this rank's share; on rank 0 merge, grid and settings. Returns `samples.npz` on rank 0."""
    validate(cfg)
    from openmagvit2.generation.sample_npz import combine_npz, sample_to_npz
    from openmagvit2.train.distributed import init_distributed, shutdown_distributed

    ctx = init_distributed(str(cfg.device))
    try:
        model, tokenizer = load_models(cfg, ctx.device)
        preset, knobs = resolve_sampling(cfg, model.config)
        num_classes = model.config.num_classes if cfg.num_classes is None else int(cfg.num_classes)
        if num_classes > model.config.num_classes:
            raise ConfigError(f"num_classes={num_classes} exceeds the model's {model.config.num_classes} classes.")
        per_class = int(cfg.num_per_class)
        out = output_dir(cfg, ctx)
        total = num_classes * per_class
        if ctx.is_main:
            log.info("sampling %d classes x %d = %d images on %d process(es), preset %s, %s", num_classes, per_class,
                     total, ctx.world_size, preset, knobs)
        start = time.perf_counter()

        def progress(done: int, share: int) -> None:
            batches = -(-done // int(cfg.batch_size))
            if ctx.is_main and (batches % LOG_EVERY_BATCHES == 0 or done == share):
                rate = done / (time.perf_counter() - start)
                log.info("rank 0: %d/%d images, %.2f images/s per process", done, share, rate)

        dtype = AUTOCAST_DTYPES[cfg.precision]
        autocast = torch.autocast(ctx.device.type, dtype=dtype) if dtype is not None else nullcontext()
        with autocast:
            sample_to_npz(model, tokenizer, out, classes=range(num_classes), per_class=per_class,
                          batch_size=int(cfg.batch_size), rank=ctx.rank, world_size=ctx.world_size,
                          seed=int(cfg.seed), on_batch=progress, **knobs)
        barrier(ctx)
        if not ctx.is_main:
            return None
        path = combine_npz(out, ctx.world_size, shuffle_seed=SHUFFLE_SEED)
        grid = save_grid(out, ctx.world_size, per_class, min(int(cfg.grid_classes), num_classes),
                         int(cfg.grid_per_class))
        if not cfg.keep_parts:
            for rank in range(ctx.world_size):
                (out / f"samples_{rank}.npz").unlink()
        settings = {"ckpt": str(Path(cfg.ckpt).resolve()), "tokenizer": cfg.tokenizer, "preset": preset, **knobs,
                    "num_classes": num_classes, "num_per_class": per_class, "num_samples": total,
                    "seed": int(cfg.seed), "precision": cfg.precision, "world_size": ctx.world_size,
                    "ar_hparams": model.hparams, "seconds": round(time.perf_counter() - start, 1)}
        (out / "sampling.json").write_text(json.dumps(settings, indent=2) + "\n")
        print(f"wrote {path} ({total} images){' and ' + str(grid) if grid else ''}")
        return path
    finally:
        shutdown_distributed()


@hydra.main(version_base="1.3", config_path=str(conf_dir()), config_name="sample")
def main(cfg: DictConfig) -> None:
    try:
        run(cfg)
    except (ConfigError, CheckpointError, FileNotFoundError) as error:
        print(f"openmagvit2.sample: {str(error).splitlines()[0]}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
