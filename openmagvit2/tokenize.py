"""Encode a data set into token shards for the Stage II generator (``data=tokens``), on one or many processes.

    python -m openmagvit2.tokenize ckpt=<tokenizer> data=<imagenet_wds|imagenet_folder|sample> out=<dir>
        [split=train|val] [crops=1|10] [flip=false|true] [batch_size=64] [device=auto] [use_ema=false]
    torchrun --nproc_per_node=8 -m openmagvit2.tokenize ckpt=... data=imagenet_wds data.image_size=256 out=...

Writes ``<out>/<split>-NNNNNN.tar`` (WebDataset: one sample per stored variant, ``tokens.npy`` int32 ``n`` in raster
order + ``cls``; see ``openmagvit2/data/tokens.py``) and ``<out>/<split>.json``, the index: tokenizer path and
sha256, bit order, codebook bits, grid size, crops/flip, per-shard counts, classes. Chunk ``c`` (``shard_size``
images, or input shard ``c`` of ``imagenet_wds``) is shard ``c`` and belongs to rank ``c % world_size``: every
image is encoded exactly once, and the shards do not depend on the number of processes. Each shard is written
atomically, so a killed run re-run with the same command skips the finished shards; ``<split>.plan.json`` refuses
a re-run with another tokenizer or other settings into the same ``out``. docs/data.md, "Stage II", has the details.
"""
from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import torch
from einops import rearrange
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader

from openmagvit2.config import ConfigError, data_config
from openmagvit2.data.tokens import (TOKEN_INDEX_FORMAT, TOKEN_INDEX_VERSION, TokenRows, array_names,
                                     encode_token_shard, read_token_shard, save_arrays)
from openmagvit2.data.variants import Chunk, ChunkImages, check_variants, image_pass, variants_per_image
from openmagvit2.io.atomic import atomic_write
from openmagvit2.io.checksum import file_sha256

log = logging.getLogger("openmagvit2.tokenize")
SPLITS = ("train", "val")


def validate(cfg: DictConfig) -> None:
    """Check the tokenize keys before anything is loaded (ConfigError, one line)."""
    for key in ("ckpt", "out"):
        if OmegaConf.is_missing(cfg, key):
            raise ConfigError(f"{key} is required: python -m openmagvit2.tokenize ckpt=<tokenizer> data=<source> "
                              "out=<output folder>.")
    if not Path(cfg.ckpt).exists():
        raise ConfigError(f"ckpt={cfg.ckpt} does not exist; pass a tokenizer checkpoint file or save_pretrained "
                          "folder.")
    if cfg.split not in SPLITS:
        raise ConfigError(f"split={cfg.split} is invalid: expected train or val.")
    try:
        check_variants(int(cfg.crops), bool(cfg.flip))
    except ValueError as error:
        raise ConfigError(str(error)) from None
    for key in ("batch_size", "shard_size"):
        if int(cfg[key]) < 1:
            raise ConfigError(f"{key}={cfg[key]} is invalid: expected an integer >= 1.")


def shard_name(split: str, number: int) -> str:
    return f"{split}-{number:06d}.tar"


def encode_chunk(tokenizer: torch.nn.Module, chunk: Chunk, *, size: int, crops: int, flip: bool, batch_size: int,
                 num_workers: int, device: torch.device, on_images=None) -> tuple[list, list[tuple[str, str]]]:
    """Tokens of every variant of every image in ``chunk``: ``(image, variant, label, int32 n)`` rows sorted by
    (image, variant), and the ``(name, reason)`` of the unusable images skipped."""
    per_image = variants_per_image(crops, flip)
    images_per_batch = max(1, batch_size // per_image)
    loader = DataLoader(ChunkImages(chunk, size, crops, flip), batch_size=images_per_batch, collate_fn=list,
                        num_workers=min(num_workers, chunk.num_images))
    rows, skipped = [], []
    for items in loader:
        kept = [item for item in items if item[2] is not None]
        skipped.extend((name, reason) for _, _, variants, name, reason in items if variants is None)
        if kept:
            pixels = torch.cat([variants for _, _, variants, _, _ in kept]).to(device).float().div_(127.5).sub_(1.0)
            with torch.no_grad():
                indices = tokenizer.encode(pixels).indices  # b h w int64, raster order after flattening
            flat = rearrange(indices, "b h w -> b (h w)").to(torch.int32).cpu().numpy()
            for position, (image_id, label, variants, _, _) in enumerate(kept):
                for variant in range(len(variants)):
                    rows.append((int(image_id), variant, int(label), flat[position * per_image + variant]))
        if on_images is not None:
            on_images(len(items))
    rows.sort(key=lambda row: (row[0], row[1]))
    return rows, skipped


def run(cfg: DictConfig) -> dict[str, Any]:
    """Tokenize ``cfg.split`` of ``cfg.data`` into ``cfg.out``; returns the index (on every rank, after the last
    shard is written)."""
    validate(cfg)
    data = data_config(cfg.data)
    if data.name == "tokens" or data.is_video:
        what = "is already tokens" if data.name == "tokens" else "holds videos"
        raise ConfigError(f"data={data.name} {what}: choose the image source to tokenize (data=imagenet_wds, "
                          "imagenet_folder or sample).")
    split, crops, flip, size = str(cfg.split), int(cfg.crops), bool(cfg.flip), int(data.image_size)
    try:
        plan = image_pass(data, split, int(cfg.shard_size), size, crops)
    except ValueError as error:
        raise ConfigError(str(error)) from None

    from openmagvit2.models import Tokenizer
    from openmagvit2.train.distributed import barrier, init_distributed, shutdown_distributed

    ckpt = os.path.abspath(str(cfg.ckpt))
    model = None if cfg.get("model") is None else str(cfg.model)
    tokenizer = Tokenizer.from_checkpoint(ckpt, model=model, use_ema=bool(cfg.use_ema)).eval()
    factor = tokenizer.downsample_factor
    if size % factor:
        raise ConfigError(f"data.image_size={size} is not a multiple of the tokenizer's downsampling factor {factor}.")
    quantizer = tokenizer.quantizer
    tokenizer_info = {"path": ckpt, "sha256": file_sha256(ckpt), "use_ema": bool(cfg.use_ema),
                      "bit_order": str(quantizer.bit_order), "codebook_bits": int(quantizer.codebook_bits),
                      "downsample_factor": factor, "hparams": tokenizer.hparams}
    settings = {"split": split, "data": data.name, "source": plan.source, "image_size": size, "crops": crops,
                "flip": flip, "shard_size": int(cfg.shard_size), "chunks": len(plan.chunks),
                "tokenizer_sha256": tokenizer_info["sha256"], "use_ema": bool(cfg.use_ema)}
    out = Path(str(cfg.out))
    plan_path = out / f"{split}.plan.json"
    if plan_path.is_file():  # every rank checks, before any collective, so a refusal never leaves a rank waiting
        previous = json.loads(plan_path.read_text())
        changed = sorted(key for key in settings if previous.get(key) != settings[key])
        if changed:
            raise ConfigError(f"out={out} holds {split} tokens made with other settings ({', '.join(changed)} differ, "
                              f"see {plan_path}): use a new out folder or delete the old shards.")

    ctx = init_distributed(str(cfg.device))
    try:
        if ctx.is_main and not plan_path.is_file():
            with atomic_write(plan_path, text=True) as handle:
                json.dump(settings, handle, indent=1)
        tokenizer = tokenizer.to(ctx.device)
        mine = [chunk for chunk in plan.chunks[ctx.rank :: ctx.world_size]
                if not (out / shard_name(split, chunk.number)).is_file()]
        done = sum(chunk.num_images for chunk in plan.chunks[ctx.rank :: ctx.world_size]) - sum(
            chunk.num_images for chunk in mine)
        progress = None
        if ctx.is_main:
            from openmagvit2.data.make_shards import _Progress

            if done:
                print(f"[tokenize] resuming: {done} images of rank 0 already in finished shards", flush=True)
            progress = _Progress(done + sum(chunk.num_images for chunk in mine), done, task="tokenizing (rank 0)",
                                 tag="tokenize")
        try:
            for chunk in mine:
                rows, skipped = encode_chunk(tokenizer, chunk, size=size, crops=crops, flip=flip,
                                             batch_size=int(cfg.batch_size), num_workers=data.num_workers,
                                             device=ctx.device, on_images=progress.advance if progress else None)
                for name, reason in skipped:
                    log.warning("tokenize rank %d: skipped %s (%s)", ctx.rank, name, reason)
                with atomic_write(out / shard_name(split, chunk.number)) as stream:  # whole shards only
                    encode_token_shard(rows, stream)
        finally:
            if progress is not None:
                progress.close()
        barrier(ctx)
        index_path = out / f"{split}.json"
        if ctx.is_main:
            index = build_index(out, split, plan, tokenizer_info, size, crops, flip, data.name)
            with atomic_write(index_path, text=True) as handle:
                json.dump(index, handle, indent=1)
                handle.write("\n")
            print(f"[tokenize] {index['images']} images, {index['samples']} samples ({index['variants_per_image']} "
                  f"per image), {index['skipped']} unusable images skipped, in {len(index['shards'])} shards: "
                  f"{out}/{split}-{{000000..{len(index['shards']) - 1:06d}}}.tar, index {index_path}", flush=True)
        barrier(ctx)
        return json.loads(index_path.read_text())
    finally:
        shutdown_distributed()


def build_index(out: Path, split: str, plan, tokenizer_info: dict, size: int, crops: int, flip: bool,
                data_name: str) -> dict[str, Any]:
    """The ``<split>.json`` of finished shards, and the split's memory-mappable arrays (both re-read from the shards,
    so shards written by an earlier, killed run count too)."""
    shards, parts = [], []
    for chunk in plan.chunks:
        name = shard_name(split, chunk.number)
        rows = read_token_shard(str(out / name))
        parts.append(rows)
        images = len(np.unique(rows.images))
        shards.append({"name": name, "images": images, "samples": len(rows), "skipped": chunk.num_images - images})
    factor = tokenizer_info["downsample_factor"]
    save_arrays(TokenRows.concatenate(parts, (size // factor) ** 2).sorted(), str(out), split)
    tokens_name, rows_name = array_names(split)
    return {
        "format": TOKEN_INDEX_FORMAT, "version": TOKEN_INDEX_VERSION, "split": split, "data": data_name,
        "source": plan.source, "tokenizer": tokenizer_info, "image_size": size, "grid_size": size // factor,
        "order": "raster (row-major), n = grid_size^2 tokens per sample", "dtype": "int32",
        "crops": crops, "flip": flip, "variants_per_image": variants_per_image(crops, flip),
        "num_classes": len(plan.classes), "classes": plan.classes,
        "images": sum(s["images"] for s in shards), "samples": sum(s["samples"] for s in shards),
        "skipped": sum(s["skipped"] for s in shards), "shards": shards,
        "arrays": {"tokens": tokens_name, "rows": rows_name},
    }


@hydra.main(version_base="1.3", config_path="project/conf", config_name="tokenize")
def main(cfg: DictConfig) -> None:
    from openmagvit2.io.safe_load import CheckpointError

    try:
        run(cfg)
    except (ConfigError, CheckpointError) as error:
        print(f"tokenize: {error}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
