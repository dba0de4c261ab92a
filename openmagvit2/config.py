"""The typed config schema: one dataclass per Hydra group, the single source of defaults and bounds.

Each dataclass is stored in Hydra's ConfigStore as `<group>/<name>_schema`, and every YAML option starts from it
(`defaults: [lfq_schema, _self_]`), so the YAML files hold values only and a key or type error is refused while
Hydra composes. Range checks sit next to the fields, in `__post_init__`; they run when `validate_config` turns the
composed config into typed objects (`OmegaConf.to_object`), once, before any model, data or GPU is touched. Every
refusal is a `ConfigError` whose message names the key, the bad value and what is allowed, in one sentence.

This module imports no other part of the package at load time (models, losses and the launcher import it).
"""
from __future__ import annotations

import contextvars
import copy
import dataclasses
import os
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Dict, List, Optional

from omegaconf import II, MISSING, DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from openmagvit2.errors import ConfigError

__all__ = ["ClusterConfig", "ConfigError", "FolderDataConfig", "LoggerConfig", "LossConfig", "ModelConfig",
           "OptimConfig", "QuantizerConfig", "RunConfig", "SampleDataConfig", "ShardDataConfig", "TokenDataConfig",
           "TrainConfig", "VideoWdsDataConfig", "WdsDataConfig",
           "check_global_batch", "data_config", "model_preset", "time_limit_seconds", "validate_config"]

BIT_ORDERS = ("lsb_first", "msb_first")
# True while `data_config(..., for_eval=True)` types a data group: eval.py needs only the validation split, so the
# training keys (train_dir, shards, shards_index) are not checked and the validation key is required instead.
_EVAL_ONLY: contextvars.ContextVar[bool] = contextvars.ContextVar("openmagvit2_eval_only_data", default=False)
MAX_CODEBOOK_BITS = 30  # token indices must stay exact in int64 and in the float32 code tables of the AR stage


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _int_at_least(key: str, value: Any, minimum: int, meaning: str = "") -> None:
    check(_is_int(value) and value >= minimum, key, value, f"an integer >= {minimum}{meaning}")


def _one_of(key: str, value: Any, choices: tuple[str, ...]) -> None:
    check(value in choices, key, value, "one of " + ", ".join(choices))


def plain_dict(values: Any) -> dict[str, Any]:
    """A plain dict from a dict, an OmegaConf DictConfig (resolved) or any other mapping."""
    if isinstance(values, DictConfig):
        return dict(OmegaConf.to_container(values, resolve=True))
    return dict(values)


def check(ok: bool, key: str, value: Any, allowed: str) -> None:
    """Raise ConfigError "<key>=<value> is invalid: expected <allowed>." unless `ok`."""
    if not ok:
        raise ConfigError(f"{key}={value!r} is invalid: expected {allowed}.")


# ------------------------------------------------------------------------------------------------------------- loss
DISC_NORMS = ("batch", "none")


@dataclass
class LossConfig:
    """Weights and switches of the tokenizer's training objective; defaults are the released v1 recipe.

    G: L1 + perceptual_weight*LPIPS + gen_loss_weight*non-saturating GAN + codebook_weight*entropy
       + commit_weight*commitment.  D: hinge + lecam_weight*LeCam (EMA decay lecam_decay) on a PatchGAN.
    """

    perceptual_weight: float = 1.0  # LPIPS (VGG16); needs the ImageNet VGG16 weights (`make weights`); 0 = off
    gen_loss_weight: Optional[float] = 0.1  # fixed G adversarial weight; null = VQGAN adaptive weight x disc_weight
    disc_weight: float = 0.8  # only used when gen_loss_weight is null
    codebook_weight: float = 0.1  # entropy loss (per-sample minus codebook entropy)
    commit_weight: float = 0.25  # commitment loss
    lecam_weight: float = 0.005  # v1 recipe; 0.01 for 128 Large, 0.05 for 256 Large (loss=recipe_128_large|_256_large)
    lecam_decay: float = 0.999  # EMA decay of the mean real/fake logits
    disc_start: int = 0  # step from which the adversarial terms count (the recipe has no warm-up)
    disc_norm: str = "batch"  # batch (recipe) | none (no BatchNorm: exact DDP-equivalence tests)
    disc_channels: int = 64  # PatchGAN width (pix2pix ndf)
    disc_layers: int = 3  # PatchGAN strided layers (2.77M parameters at 64/3)
    codebook_enlarge_ratio: float = 0.0  # extra entropy weight at step 0, decaying linearly; 0 = off (recipe)
    codebook_enlarge_steps: int = 2000  # steps over which that extra weight decays

    def __post_init__(self) -> None:
        for key in ("perceptual_weight", "disc_weight", "codebook_weight", "commit_weight", "lecam_weight",
                    "codebook_enlarge_ratio"):
            value = getattr(self, key)
            check(_is_number(value) and value >= 0, f"loss.{key}", value, "a number >= 0")
        check(self.gen_loss_weight is None or (_is_number(self.gen_loss_weight) and self.gen_loss_weight >= 0),
              "loss.gen_loss_weight", self.gen_loss_weight, "a number >= 0, or null for the adaptive VQGAN weight")
        check(_is_number(self.lecam_decay) and 0 <= self.lecam_decay < 1, "loss.lecam_decay", self.lecam_decay,
              "a number in [0, 1) (the recipe uses 0.999)")
        _int_at_least("loss.disc_start", self.disc_start, 0, " (0 = adversarial terms from the first step)")
        check(self.disc_norm in DISC_NORMS, "loss.disc_norm", self.disc_norm,
              "batch (the recipe) or none (no normalisation, for exact DDP-equivalence tests)")
        _int_at_least("loss.disc_channels", self.disc_channels, 1, " (the recipe uses 64)")
        _int_at_least("loss.disc_layers", self.disc_layers, 1, " (the recipe uses 3)")
        _int_at_least("loss.codebook_enlarge_steps", self.codebook_enlarge_steps, 1)

    @classmethod
    def from_config(cls, loss: LossConfig | DictConfig | dict | None) -> LossConfig:
        """The checked loss config from a typed object, a composed `loss` node or a dict (missing keys: defaults)."""
        if isinstance(loss, LossConfig):
            return loss
        if isinstance(loss, DictConfig):
            loss = OmegaConf.to_container(loss, resolve=True)
        values = dict(loss or {})
        known = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise ConfigError(f"loss.{unknown[0]} is not a loss option: expected one of {', '.join(sorted(known))}.")
        return cls(**values)


# ---------------------------------------------------------------------------------------------------- model / quantizer
@dataclass
class ModelConfig:
    """Tokenizer architecture (`conf/model/<name>.yaml` are the released ones and the tiny CPU model)."""

    ch: int = MISSING  # base width; every width must be a multiple of 32 (GroupNorm uses 32 groups)
    ch_mult: List[int] = MISSING  # width multiplier per level; 2^(len - 1) is the downsampling factor
    num_res_blocks: int = MISSING  # residual blocks per level
    adaptive_norm: bool = False  # adaptive GroupNorm in the decoder (v2/v3 "Large")
    bit_order: str = "lsb_first"  # token index packing: lsb_first (v2/v3: channel 0 is bit 0) | msb_first (v1)
    in_channels: int = 3
    out_channels: int = 3

    def __post_init__(self) -> None:
        check(_is_int(self.ch) and self.ch >= 32 and self.ch % 32 == 0, "model.ch", self.ch,
              "a positive multiple of 32 (GroupNorm uses 32 groups)")
        check(len(self.ch_mult) >= 1 and all(_is_int(m) and m >= 1 for m in self.ch_mult), "model.ch_mult",
              list(self.ch_mult), "a non-empty list of integers >= 1, e.g. [1, 2, 2, 4]")
        _int_at_least("model.num_res_blocks", self.num_res_blocks, 1)
        check(isinstance(self.adaptive_norm, bool), "model.adaptive_norm", self.adaptive_norm, "true or false")
        check(self.bit_order in BIT_ORDERS, "model.bit_order", self.bit_order, "lsb_first (v2/v3) or msb_first (v1)")
        _int_at_least("model.in_channels", self.in_channels, 1)
        _int_at_least("model.out_channels", self.out_channels, 1)

    @property
    def downsample_factor(self) -> int:
        return 2 ** (len(self.ch_mult) - 1)


@dataclass
class QuantizerConfig:
    """Lookup-free quantizer (MAGVIT-2) with the exact, factorised entropy loss; defaults are the Open-MAGVIT2 recipe."""

    codebook_bits: int = 18  # K: z channels = bits per token; codebook size 2^K
    entropy_temperature: float = 0.01  # T in softmax(2 <z, c> / T)
    entropy_eps: float = 1e-5  # eps in the codebook entropy -sum pbar log(pbar + eps)
    sample_minimization_weight: float = 1.0  # per-sample entropy (minimised: confident tokens)
    batch_maximization_weight: float = 1.0  # codebook entropy (maximised: all codes used)
    entropy_across_ranks: bool = False  # true: pbar averaged over all DDP ranks (MAGVIT-2 paper); false: per GPU

    def __post_init__(self) -> None:
        for key in ("sample_minimization_weight", "batch_maximization_weight"):
            value = getattr(self, key)
            check(_is_number(value) and value >= 0, f"quantizer.{key}", value, "a number >= 0")
        bits = self.codebook_bits
        if self.sample_minimization_weight or self.batch_maximization_weight:
            from openmagvit2.models.entropy import MAX_ENTROPY_BITS, entropy_memory_bytes

            need = (f" (the exact entropy at {bits} bits needs a 2^{bits}-entry table, "
                    f"~{entropy_memory_bytes(bits, num_tokens=0) / 2 ** 30:.0f} GiB with gradients)"
                    if _is_int(bits) and bits > MAX_ENTROPY_BITS else "")
            check(_is_int(bits) and 1 <= bits <= MAX_ENTROPY_BITS, "quantizer.codebook_bits", bits,
                  f"an integer in 1..{MAX_ENTROPY_BITS} while the entropy weights are non-zero{need}; the recipe "
                  f"uses 18, and up to {MAX_CODEBOOK_BITS} is allowed with both entropy weights set to 0")
        check(_is_int(bits) and 1 <= bits <= MAX_CODEBOOK_BITS, "quantizer.codebook_bits", bits,
              f"an integer in 1..{MAX_CODEBOOK_BITS} (the codebook has 2^bits entries; the recipe uses 18)")
        check(_is_number(self.entropy_temperature) and self.entropy_temperature > 0, "quantizer.entropy_temperature",
              self.entropy_temperature, "a number > 0 (the recipe uses 0.01)")
        check(_is_number(self.entropy_eps) and self.entropy_eps >= 0, "quantizer.entropy_eps", self.entropy_eps,
              "a number >= 0")
        check(isinstance(self.entropy_across_ranks, bool), "quantizer.entropy_across_ranks",
              self.entropy_across_ranks, "true or false")


def model_names() -> list[str]:
    """The shipped model configs (`conf/model/*.yaml`), by name."""
    from openmagvit2.paths import shipped_options

    return shipped_options("model")


def model_preset(name: str) -> dict[str, Any]:
    """The architecture hyper-parameters of a shipped `conf/model/<name>.yaml` (e.g. "openmagvit2_v3_256_large")."""
    from openmagvit2.paths import shipped_option

    values = shipped_option("model", name)
    if values is None:
        raise ConfigError(f"model={name!r} is unknown: use one of {', '.join(model_names())}, or pass a dict of "
                          f"hyper-parameters (ch, ch_mult, num_res_blocks, adaptive_norm, bit_order).")
    return dataclasses.asdict(ModelConfig(**values))


# ------------------------------------------------------------------------------------------------------------- data
@dataclass
class DataConfig:
    """Keys every data source has; `name` picks the source (it is the `data=` option, and the dispatch key).

    `is_video` (a class attribute, also on `DATA_SOURCES[name]`): the source yields clips `b 3 t h w`, not images
    `b 3 h w`; a video model needs such a source and an image model any other."""

    is_video: ClassVar[bool] = False
    name: str = MISSING
    image_size: int = 256  # training/eval crop side in pixels
    num_workers: int = 8  # loader worker processes per rank
    hflip: bool = False  # random horizontal flips in training (the recipe uses none)

    def __post_init__(self) -> None:
        _int_at_least("data.image_size", self.image_size, 8)
        _int_at_least("data.num_workers", self.num_workers, 0)
        check(isinstance(self.hflip, bool), "data.hflip", self.hflip, "true or false")


_WORKER_CAP_WARNED: set[tuple[int, int]] = set()


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity mask: what SLURM/taskset/cgroups allow), not the machine's."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def cap_workers(data: DataConfig) -> DataConfig:
    """The entry points' data group with `num_workers` capped at the CPUs this process may use (more workers only
    thrash); warns once per (requested, cap). The loaders themselves take the number they are given."""
    requested, cpus = data.num_workers, usable_cpus()
    if requested <= cpus:
        return data
    if (requested, cpus) not in _WORKER_CAP_WARNED:
        _WORKER_CAP_WARNED.add((requested, cpus))
        warnings.warn(f"data.num_workers={requested} but this process may use {cpus} CPU(s): using {cpus} loader "
                      f"workers (set data.num_workers={cpus} to silence this).", stacklevel=2)
    capped = copy.copy(data)  # not dataclasses.replace: that would validate (and stat the paths) again
    capped.num_workers = cpus
    return capped


@dataclass
class SampleDataConfig(DataConfig):
    """Real photographs bundled inside scikit-image (no download), cut into random crops: the demo's data.

    Validation crops come from held-out photos, so the demo's PSNR is measured on images never trained on."""

    name: str = "sample"
    image_size: int = 64
    num_workers: int = 0
    train_photos: List[str] = field(default_factory=lambda: [
        "astronaut", "chelsea", "rocket", "hubble_deep_field", "immunohistochemistry", "retina", "motorcycle"])
    val_photos: List[str] = field(default_factory=lambda: ["coffee"])
    epoch_crops: int = 2048  # an epoch is this many random crops (all ranks together)
    val_crops: int = 64  # fixed set of held-out crops (fixed seed, independent of the run's seed)
    crop_scale: List[float] = field(default_factory=lambda: [0.25, 0.75])  # crop side / photo short side

    def __post_init__(self) -> None:
        super().__post_init__()
        from openmagvit2.data.sample import check_photo_names

        try:
            check_photo_names(list(self.train_photos), list(self.val_photos))
        except ValueError as error:
            raise ConfigError(str(error)) from None
        _int_at_least("data.epoch_crops", self.epoch_crops, 1)
        _int_at_least("data.val_crops", self.val_crops, 1)
        scale = list(self.crop_scale)
        check(len(scale) == 2 and all(_is_number(v) for v in scale) and 0.0 < scale[0] <= scale[1] <= 1.0,
              "data.crop_scale", scale, "two numbers with 0 < low <= high <= 1")


def _check_dir(key: str, path: Optional[str], required: bool) -> None:
    from openmagvit2.data.folder import has_images

    if path is None:
        check(not required, f"data.{key}", path, f"the path of an image folder (pass data.{key}=/path/to/images)")
        return
    if not os.path.isdir(str(path)):
        raise ConfigError(f"data.{key}={str(path)!r} does not exist or is not a directory: set data.{key} "
                          "(or data.root) to your image folder.")
    if not has_images(str(path)):
        raise ConfigError(f"data.{key}={str(path)!r} holds no images: point data.{key} at a folder of images "
                          "(<class>/*.JPEG or loose images).")


@dataclass
class FileDataConfig(DataConfig):
    """What real files on disk can get wrong: caps checked from an image's header before decoding, and the share of
    unusable samples (missing, corrupt, too large, extreme aspect ratio) past which a run stops (docs/data.md)."""

    max_pixels: int = 89_478_485  # PIL's own decompression-bomb threshold
    max_aspect_ratio: float = 10.0  # long side / short side, checked before resizing
    max_skip_rate: float = 0.01  # stop (DataError) when more than this share of a window's samples were skipped
    skip_window: int = 2000  # samples read per rate check (per rank)

    def __post_init__(self) -> None:
        super().__post_init__()
        _int_at_least("data.max_pixels", self.max_pixels, 1)
        check(_is_number(self.max_aspect_ratio) and self.max_aspect_ratio >= 1, "data.max_aspect_ratio",
              self.max_aspect_ratio, "a number >= 1")
        check(_is_number(self.max_skip_rate) and 0 <= self.max_skip_rate <= 1, "data.max_skip_rate",
              self.max_skip_rate, "a number in [0, 1]")
        _int_at_least("data.skip_window", self.skip_window, 1)


@dataclass
class FolderDataConfig(FileDataConfig):
    """ImageNet (or any image folder) on disk: <split>/<synset>/*.JPEG. Set IMAGENET_ROOT or data.root.

    Train: resize short side to image_size (bilinear, antialiased) + random crop (+ flip if hflip). Val: centre crop."""

    name: str = "imagenet_folder"
    root: str = "${oc.env:IMAGENET_ROOT,data/imagenet}"
    train_dir: str = "${.root}/train"
    val_dir: Optional[str] = "${.root}/val"  # flat or <synset>/ sub-folders; null = no validation set
    jpeg_draft: bool = False  # training only: JPEG downscale-on-decode (PIL draft): faster, slightly different

    def __post_init__(self) -> None:
        super().__post_init__()
        eval_only = _EVAL_ONLY.get()
        if not eval_only:
            _check_dir("train_dir", self.train_dir, required=True)
        _check_dir("val_dir", self.val_dir, required=eval_only)


def _check_shards(key: str, spec: Optional[str], required: bool, converter: str = "make_shards") -> None:
    from openmagvit2.data.shards import expand_shards, missing_local_shards

    if spec is None:
        split = "val-{000000..000049}" if key == "val_shards" else "train-{000000..001281}"
        # Quoted twice: the shell strips the outer quotes, Hydra needs the inner ones around the braces.
        check(not required, f"data.{key}", spec, f"a shard pattern: pass \"data.{key}='/path/{split}.tar'\" "
                                                 f"(or data.root=/path holding the shards)")
        return
    if str(spec).endswith(".json") and not os.path.isfile(str(spec)):
        raise ConfigError(f"data.{key}: no shard index at {str(spec)!r}: write the shards with `python -m "
                          f"openmagvit2.data.{converter}` (it puts <prefix>.json beside them), set data.root to their "
                          f"folder, or give a pattern like \"data.{key}='/path/train-{{000000..001281}}.tar'\".")
    try:
        urls = expand_shards(spec)
    except (ValueError, KeyError) as error:
        raise ConfigError(f"data.{key}={spec!r} is not a valid shard pattern or index ({error}).") from None
    check(bool(urls), f"data.{key}", spec, "a pattern that names shards, like /path/train-{000000..001281}.tar")
    missing = missing_local_shards(urls)
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise ConfigError(f"data.{key}: shard {missing[0]!r}{more} does not exist: create the shards with "
                          f"`python -m openmagvit2.data.{converter}` or fix the path.")


@dataclass
class ShardDataConfig(FileDataConfig):
    """WebDataset tar shards and their index JSONs (written by `converter`): the keys and checks that image and video
    shards share. Set data.root to the folder holding them."""

    converter: ClassVar[str] = "make_shards"  # python -m openmagvit2.data.<converter> writes these shards
    root: str = MISSING
    # The index JSONs the converter writes (they list the real shards, so data.root alone is enough), or brace
    # patterns such as "'/d/train-{000000..001281}.tar'" (quoted on the command line: Hydra reads braces as a dict).
    shards: str = "${.root}/train.json"
    val_shards: Optional[str] = "${.root}/val.json"  # null = no validation set
    shards_index: Optional[str] = None  # null = <dir>/<prefix>.json next to the shards (written by the converter)
    epoch_samples: Optional[int] = None  # samples per epoch over all ranks; null = the index's total
    shuffle_buffer: int = 1000  # encoded samples held per loader worker
    shard_shuffle: bool = True  # reshuffle the shard order every epoch (from seed and epoch)

    @property
    def index_path(self) -> Optional[str]:
        from openmagvit2.data.shards import default_index_path

        return str(self.shards_index) if self.shards_index is not None else default_index_path(self.shards)

    def __post_init__(self) -> None:
        super().__post_init__()
        eval_only = _EVAL_ONLY.get()
        if not eval_only:
            _check_shards("shards", self.shards, required=True, converter=self.converter)
        _check_shards("val_shards", self.val_shards, required=eval_only, converter=self.converter)
        _int_at_least("data.shuffle_buffer", self.shuffle_buffer, 1)
        if eval_only:
            return
        if self.epoch_samples is None:
            index = self.index_path
            if index is None or not os.path.isfile(index):
                raise ConfigError(f"data.shards_index: no shard index at {index!r} ({self.converter} writes one next "
                                  "to the shards): set data.shards_index to it or data.epoch_samples to the sample "
                                  "count.")
        else:
            _int_at_least("data.epoch_samples", self.epoch_samples, 1)


@dataclass
class WdsDataConfig(ShardDataConfig):
    """ImageNet as WebDataset tar shards written by `make shards` (python -m openmagvit2.data.make_shards).

    Set IMAGENET_SHARDS or data.root to the folder holding train-*.tar, val-*.tar and their index JSONs."""

    name: str = "imagenet_wds"
    root: str = "${oc.env:IMAGENET_SHARDS,data/imagenet_shards}"
    shuffle_buffer: int = 1000  # encoded samples held per loader worker (~110 kB each for ImageNet JPEGs)
    jpeg_draft: bool = False  # training only: JPEG downscale-on-decode (PIL draft): faster, slightly different


def _check_frames(frames: Any) -> None:
    """Clip lengths the causal video tokenizer takes: 4k + 1 (the first frame alone, then groups of 4)."""
    check(_is_int(frames) and frames >= 1 and (frames - 1) % 4 == 0, "data.frames", frames,
          "4k + 1 frames for the causal video tokenizer, e.g. 17 (the recipe's), 9 or 5")


@dataclass
class VideoWdsDataConfig(ShardDataConfig):
    """Videos as WebDataset tar shards written by `python -m openmagvit2.data.make_video_shards` (UCF-101 split 1 in
    the recipe: VideoGPT's train/ and test/ folders). Set VIDEO_SHARDS or data.root to the folder holding them.

    Train: `frames` consecutive frames from a random start, short side to image_size (bilinear, as cv2
    INTER_LINEAR), random crop (+ flip if hflip). Val: the centre frames and the centre crop. Batches `b 3 t h w`."""

    is_video: ClassVar[bool] = True
    converter: ClassVar[str] = "make_video_shards"
    name: str = "video_wds"
    root: str = "${oc.env:VIDEO_SHARDS,data/ucf101_shards}"
    val_shards: Optional[str] = "${.root}/test.json"  # null = no validation set
    frames: int = 17  # consecutive frames per clip: 4k + 1
    image_size: int = 128
    shuffle_buffer: int = 64  # encoded videos held per loader worker (~0.5 MB each for UCF-101)

    def __post_init__(self) -> None:
        _check_frames(self.frames)
        super().__post_init__()


@dataclass
class TokenDataConfig(DataConfig):
    """Token shards of a data set, written by `python -m openmagvit2.tokenize` (Stage II, the generator's data).

    Batches are `(indices b n int64, labels b int64)`, n = grid_size^2 tokens in raster order. The index JSON holds
    the grid, the tokenizer and its hash: `image_size` is taken from it (any value given is replaced), `grid_size`
    and `num_classes` are properties read from it. The shards are read into memory (tiny next to the images)."""

    name: str = "tokens"
    root: str = "${oc.env:TOKENS_ROOT,data/tokens}"
    train_index: str = "${.root}/train.json"  # written by `python -m openmagvit2.tokenize ... split=train`
    val_index: Optional[str] = None  # e.g. ${.root}/val.json (split=val); null = no validation set
    num_workers: int = 0  # unused: batches are gathered from memory in the main process

    def __post_init__(self) -> None:
        super().__post_init__()
        check(not self.hflip, "data.hflip", self.hflip,
              "false (flips are stored variants: tokenize with flip=true)")
        from openmagvit2.data.tokens import read_token_index

        try:
            train = read_token_index(str(self.train_index), "data.train_index")
            if self.val_index is not None:
                read_token_index(str(self.val_index), "data.val_index")
        except ValueError as error:
            raise ConfigError(str(error)) from None
        self.image_size = int(train["image_size"])

    def _index(self) -> dict:
        from openmagvit2.data.tokens import read_token_index

        return read_token_index(str(self.train_index), "data.train_index")

    @property
    def grid_size(self) -> int:
        """Tokens per side (n = grid_size^2 per image), from the index."""
        return int(self._index()["grid_size"])

    @property
    def num_classes(self) -> int:
        """Class labels 0..num_classes-1 of the tokenized data set, from the index."""
        return int(self._index()["num_classes"])


DATA_SOURCES: dict[str, type[DataConfig]] = {
    "sample": SampleDataConfig, "imagenet_folder": FolderDataConfig, "imagenet_wds": WdsDataConfig,
    "video_wds": VideoWdsDataConfig, "tokens": TokenDataConfig}


def data_config(data: DataConfig | DictConfig | dict, for_eval: bool = False) -> DataConfig:
    """The validated, typed `data` group (a composed DictConfig, a dict, or already a typed object).

    `for_eval`: only the validation split is needed (eval.py): the training keys are not checked and the
    validation key (`val_dir` / `val_shards`) is required."""
    if isinstance(data, DataConfig):
        return data
    token = _EVAL_ONLY.set(for_eval)
    try:
        return _typed_data(data)
    finally:
        _EVAL_ONLY.reset(token)


def _typed_data(data: DictConfig | dict) -> DataConfig:
    values = OmegaConf.to_container(data, resolve=True) if isinstance(data, DictConfig) else dict(data)
    name = values.get("name")
    if name not in DATA_SOURCES:
        raise ConfigError(f"data.name={name!r} is invalid: expected one of {', '.join(DATA_SOURCES)} (choose data=...).")
    try:
        source = OmegaConf.merge(OmegaConf.structured(DATA_SOURCES[name]), values)
    except OmegaConfBaseException as error:  # a key the source does not have, or a value of the wrong type
        raise ConfigError(f"data.{error.full_key or ''}: {error.msg}") from None
    return OmegaConf.to_object(source)


# ------------------------------------------------------------------------------------------------------ optim / train
SCHEDULES = ("constant", "cosine", "step", "linear")
TASKS = ("tokenizer", "generator", "video_tokenizer")
PRECISIONS = ("fp32", "bf16", "fp16")
DEVICES = ("auto", "cpu", "cuda")


@dataclass
class OptimConfig:
    """Adam for generator and discriminator, as in the recipe: lr 1e-4, betas (0.5, 0.9), no weight decay."""

    lr: float = 1e-4
    disc_lr: float = II(".lr")
    betas: List[float] = field(default_factory=lambda: [0.5, 0.9])
    weight_decay: float = 0.0
    schedule: str = "constant"  # constant | cosine | step | linear (Stage II: warm-up, 5% plateau, linear decay)
    warmup_steps: int = 0  # linear warm-up from 0 (any schedule; `linear` starts it at warmup_start_ratio)
    warmup_start_ratio: float = 0.0  # `linear` schedule: lr at step 0, as a fraction of lr (0.005 in Stage II)
    min_lr_ratio: float = 0.01  # cosine floor / the `linear` schedule's end, as a fraction of lr
    drop_steps: List[int] = field(default_factory=list)  # step schedule: lr x drop_rate at each of these steps
    drop_rate: float = 0.1

    def __post_init__(self) -> None:
        check(_is_number(self.lr) and self.lr > 0, "optim.lr", self.lr, "a number > 0")
        check(_is_number(self.disc_lr) and self.disc_lr > 0, "optim.disc_lr", self.disc_lr, "a number > 0")
        check(len(self.betas) == 2 and all(_is_number(b) and 0 <= b < 1 for b in self.betas), "optim.betas",
              list(self.betas), "two numbers in [0, 1), e.g. [0.5, 0.9]")
        check(_is_number(self.weight_decay) and self.weight_decay >= 0, "optim.weight_decay", self.weight_decay,
              "a number >= 0")
        _one_of("optim.schedule", self.schedule, SCHEDULES)
        _int_at_least("optim.warmup_steps", self.warmup_steps, 0)
        check(_is_number(self.min_lr_ratio) and 0 <= self.min_lr_ratio <= 1, "optim.min_lr_ratio", self.min_lr_ratio,
              "a number in [0, 1]")
        check(_is_number(self.warmup_start_ratio) and 0 <= self.warmup_start_ratio <= 1, "optim.warmup_start_ratio",
              self.warmup_start_ratio, "a number in [0, 1]")
        check(all(_is_int(s) and s >= 0 for s in self.drop_steps), "optim.drop_steps", list(self.drop_steps),
              "a list of integers >= 0")
        check(_is_number(self.drop_rate) and self.drop_rate > 0, "optim.drop_rate", self.drop_rate, "a number > 0")


def _existing_file(key: str, value: Optional[str], what: str, hub_names: bool = False) -> None:
    """A local file, or (`hub_names`) a released name such as hf://TencentARC/... (checked, not downloaded here)."""
    if hub_names and value is not None:
        from openmagvit2 import hub

        if hub.is_hub_name(value):
            hub.lookup(value)  # HubError (a ConfigError) naming the known files
            return
    if value is not None and not Path(value).is_file():
        raise ConfigError(f"{key}={value!r} is not a file; give {what}.")


@dataclass
class TrainConfig:
    """The training loop: batch, length, precision, cadence of logs, images, evaluations and checkpoints."""

    batch_size: int = 8  # per process (per GPU); the global batch is batch_size x world size
    global_batch_size: Optional[int] = None  # pin the images per step over all processes (checked at start)
    max_steps: int = 1000
    precision: str = "fp32"  # fp32 | bf16 | fp16 (fp16 uses one GradScaler per optimiser)
    grad_clip: Optional[float] = None  # max grad norm for both optimisers; null = off (the recipe)
    ema_decay: Optional[float] = 0.999  # EMA of generator weights, warm-up min(decay, (1+n)/(10+n)); null = off
    ckpt_every: int = 500
    keep_last: int = 3  # checkpoints kept; 0 keeps every one
    resume: str = "auto"  # auto: latest checkpoint in the run dir | never | /path/to/step_XXXXXXXX.pt
    init_from: Optional[str] = None  # fine-tune: weights from our checkpoint or a released Open-MAGVIT2 .ckpt
    init_use_ema: bool = True  # take the EMA copy of the generator when the file has one
    log_every: int = 10
    image_every: int = 500  # 0 = off
    eval_every: int = 0  # 0 = only at the end
    eval_images: int = 64  # size of the fixed val subset used during training
    channels_last: bool = False
    compile: bool = False  # torch.compile the generator
    detect_anomaly: bool = False

    def __post_init__(self) -> None:
        _int_at_least("train.batch_size", self.batch_size, 1, " (images per process)")
        if self.global_batch_size is not None:
            _int_at_least("train.global_batch_size", self.global_batch_size, 1, " (images per step), or null")
        _int_at_least("train.max_steps", self.max_steps, 1)
        _one_of("train.precision", self.precision, PRECISIONS)
        check(self.grad_clip is None or (_is_number(self.grad_clip) and self.grad_clip > 0), "train.grad_clip",
              self.grad_clip, "null or a number > 0")
        check(self.ema_decay is None or (_is_number(self.ema_decay) and 0 <= self.ema_decay < 1), "train.ema_decay",
              self.ema_decay, "null or a number in [0, 1)")
        _int_at_least("train.ckpt_every", self.ckpt_every, 1, " (steps between checkpoints)")
        _int_at_least("train.keep_last", self.keep_last, 0, " (0 keeps every checkpoint)")
        _int_at_least("train.log_every", self.log_every, 1)
        _int_at_least("train.image_every", self.image_every, 0, " (0 = off)")
        _int_at_least("train.eval_every", self.eval_every, 0, " (0 = only at the end)")
        _int_at_least("train.eval_images", self.eval_images, 1)
        check(isinstance(self.resume, str) and self.resume != "", "train.resume", self.resume,
              "auto, never, or a checkpoint path")
        if self.resume not in ("auto", "never"):
            _existing_file("train.resume", self.resume, "a checkpoint path, or auto / never")
        _existing_file("train.init_from", self.init_from,
                       "our checkpoint, a released Open-MAGVIT2 .ckpt (e.g. imagenet_256_L.ckpt) or its name "
                       "(e.g. hf://TencentARC/Open-MAGVIT2-Tokenizer-256-resolution)", hub_names=True)


def check_global_batch(batch_size: int, global_batch_size: Optional[int], world_size: int,
                       layout: Optional[str] = None, processes_per_node: Optional[int] = None) -> None:
    """Refuse a process count that does not give `train.global_batch_size` images per step.

    `layout` describes the processes in the message (default "<world_size> process(es)"); with `processes_per_node`
    the hint may suggest a node count."""
    images = batch_size * world_size
    if global_batch_size is None or images == global_batch_size:
        return
    if global_batch_size % world_size == 0:
        hint = f"train.batch_size={global_batch_size // world_size}"
    elif processes_per_node:
        hint = f"cluster.nodes={global_batch_size // (processes_per_node * batch_size)}"
    else:
        hint = "another number of processes"
    raise ConfigError(f"{layout or f'{world_size} process(es)'} x train.batch_size={batch_size} = {images} images "
                      f"per step, but train.global_batch_size={global_batch_size}; set {hint} or change "
                      f"train.global_batch_size (null trains with any batch).")


# -------------------------------------------------------------------------------------------------- logger / cluster
@dataclass
class LoggerConfig:
    """Weights & Biases. auto: online when an API key is configured, offline otherwise (`wandb sync` later)."""

    mode: str = "auto"  # auto | online | offline | disabled
    project: str = "openmagvit2"
    entity: Optional[str] = None
    group: Optional[str] = None  # null: the multirun sweep dir name for -m runs, else none
    name: Optional[str] = None  # null: the run dir name
    tags: List[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        _one_of("logger.mode", self.mode, ("auto", "online", "offline", "disabled"))


_TIME_LIMIT = re.compile(r"^(?:(\d+)-)?(\d+)(?::(\d{2}))?(?::(\d{2}))?$")
_MEMORY = re.compile(r"^\d+[KMGT]?$")


def time_limit_seconds(limit: str) -> int:
    """Seconds in a SLURM time limit (``MM``, ``MM:SS``, ``HH:MM:SS``, ``D-HH``, ``D-HH:MM``, ``D-HH:MM:SS``)."""
    match = _TIME_LIMIT.match(str(limit))
    if not match:
        raise ConfigError(f"cluster.time={limit!r} is not a SLURM time limit; write it as HH:MM:SS or D-HH:MM:SS.")
    days, first, second, third = match.groups()
    if days is not None:  # D-HH[:MM[:SS]]
        hours, minutes, seconds = int(first), int(second or 0), int(third or 0)
        return ((int(days) * 24 + hours) * 60 + minutes) * 60 + seconds
    if third is not None:  # HH:MM:SS
        return (int(first) * 60 + int(second)) * 60 + int(third)
    if second is not None:  # MM:SS
        return int(first) * 60 + int(second)
    return int(first) * 60  # MM


@dataclass
class ClusterConfig:
    """Where `python -m openmagvit2.launch submit` runs a job (train.py itself ignores this group); docs/cluster.md."""

    name: str = MISSING  # the conf/cluster option; named in the job script
    launcher: str = "local"  # local: this shell (torchrun when processes_per_node > 1) | slurm: sbatch
    job_name: Optional[str] = None  # null: <experiment_name>-<job>
    account: Optional[str] = None  # sbatch --account
    partition: Optional[str] = None  # sbatch --partition (null: the cluster's default partition)
    qos: Optional[str] = None
    constraint: Optional[str] = None  # e.g. a100|h100
    time: str = "48:00:00"  # per attempt; pre-empted or timed-out attempts requeue and resume
    nodes: int = 1
    gpus_per_node: int = 0  # 0: a CPU job (device=cpu)
    processes_per_node: int = 1  # one training process per GPU; > 1 locally: torchrun --nproc-per-node
    cpus_per_task: int = 1  # data-loading workers + the main thread per process
    mem: Optional[str] = None  # e.g. 480G per node; null: the partition's default
    signal_lead_s: int = 300  # SIGUSR1 this long before the time limit: checkpoint, exit 75, requeue
    max_requeues: int = 50  # a job requeues itself at most this many times
    straggler_wait_s: int = 120  # srun kills the remaining processes this long after the first exits
    run_root: str = "runs"  # run dirs: <run_root>/<experiment_name>/<date>/<time>; shared filesystem for SLURM
    python: Optional[str] = None  # null: the interpreter running the launcher (same env on every node)
    setup: List[str] = field(default_factory=list)  # shell lines before training, e.g. ["module load cuda/12.4"]
    env: Dict[str, str] = field(default_factory=dict)  # exported in the job
    sbatch_extra: List[str] = field(default_factory=list)  # more sbatch options, e.g. ["--exclusive"]
    check_paths: bool = True  # refuse data paths that do not exist here (false when only compute nodes see them)

    def __post_init__(self) -> None:
        _one_of("cluster.launcher", self.launcher, ("local", "slurm"))
        _int_at_least("cluster.nodes", self.nodes, 1, " (nodes in the allocation)")
        _int_at_least("cluster.gpus_per_node", self.gpus_per_node, 0, " (GPUs per node; 0 for a CPU-only job)")
        _int_at_least("cluster.processes_per_node", self.processes_per_node, 1,
                      " (training processes per node, one per GPU)")
        _int_at_least("cluster.cpus_per_task", self.cpus_per_task, 1, " (CPU cores per process, for data loading)")
        _int_at_least("cluster.max_requeues", self.max_requeues, 0, " (how often a pre-empted job requeues itself)")
        _int_at_least("cluster.straggler_wait_s", self.straggler_wait_s, 1,
                      " (seconds srun waits for the other processes after the first exits)")
        _int_at_least("cluster.signal_lead_s", self.signal_lead_s, 1,
                      " (seconds before the time limit at which SIGUSR1 asks for a checkpoint)")
        check(self.mem is None or bool(_MEMORY.match(str(self.mem))), "cluster.mem", self.mem,
              "a size such as 480G, or null")
        if self.launcher == "slurm":
            limit_s = time_limit_seconds(self.time)
            if self.signal_lead_s >= limit_s:
                raise ConfigError(f"cluster.signal_lead_s={self.signal_lead_s} is not shorter than cluster.time="
                                  f"{self.time} ({limit_s} s); lower the lead or raise the time limit.")


# ------------------------------------------------------------------------------------------------------------- task
WEIGHT_DECAY_SCOPES = ("matrices", "all")


@dataclass
class TaskConfig:
    """What `train.py` trains: `tokenizer` (Stage I, the GAN), `generator` (Stage II, the AR model on tokens) or
    `video_tokenizer` (the causal video tokenizer of `video_model` against a 3D discriminator, on `data=video_wds`)."""

    name: str = "tokenizer"  # tokenizer | generator | video_tokenizer
    # Stage II: the frozen tokenizer that decodes the sample grids and, when `data` is images (not tokens), encodes
    # each batch in the loop as the reference does. Raw weights by default, as the released AR config uses them.
    tokenizer: Optional[str] = None
    tokenizer_use_ema: bool = False
    # Stage II: which parameters AdamW decays: `matrices` (weights of dim >= 2: linear layers and embeddings, as
    # LlamaGen intends) or `all` (also norms and biases: what the reference does by accident, REFERENCE-STAGE2 §7).
    weight_decay_scope: str = "matrices"
    sample_cfg_scale: float = 1.0  # classifier-free guidance of the sample grids logged during training

    def __post_init__(self) -> None:
        _one_of("task.name", self.name, TASKS)
        _one_of("task.weight_decay_scope", self.weight_decay_scope, WEIGHT_DECAY_SCOPES)
        check(self.tokenizer is None or self.tokenizer.startswith("hf://") or Path(self.tokenizer).exists(),
              "task.tokenizer", self.tokenizer, "null or the path of a tokenizer checkpoint")
        check(_is_number(self.sample_cfg_scale) and self.sample_cfg_scale >= 0, "task.sample_cfg_scale",
              self.sample_cfg_scale, "a number >= 0")


# ------------------------------------------------------------------------------------------------------------- root
@dataclass
class RunConfig:
    """The composed training config (conf/config.yaml): top-level keys plus one node per group."""

    experiment_name: str = "default"
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda
    train: TrainConfig = field(default_factory=TrainConfig)
    task: TaskConfig = field(default_factory=TaskConfig)
    ar_model: Any = None  # Stage II's ARModelConfig (openmagvit2/generation/config.py), typed by validate_config
    video_model: Any = None  # task=video_tokenizer's VideoModelConfig (openmagvit2/models/video_config.py), typed there
    model: ModelConfig = MISSING
    quantizer: QuantizerConfig = MISSING
    loss: LossConfig = MISSING
    data: Any = MISSING  # one of the DATA_SOURCES dataclasses, chosen by `data=`
    optim: OptimConfig = MISSING
    logger: LoggerConfig = MISSING
    cluster: ClusterConfig = MISSING

    def __post_init__(self) -> None:
        check(_is_int(self.seed), "seed", self.seed, "an integer")
        _one_of("device", self.device, DEVICES)


def validate_config(cfg: DictConfig) -> RunConfig:
    """Typed, checked objects from the composed training config; raises ConfigError for the first invalid value.

    Also checks `train.global_batch_size` against the process count (WORLD_SIZE, or SLURM_NTASKS under srun)."""
    config = OmegaConf.to_object(cfg)
    if not isinstance(config, RunConfig):
        raise ConfigError("the training config does not start from config_schema: put `- config_schema` first in "
                          "the defaults list of conf/config.yaml.")
    config.data = cap_workers(data_config(config.data))
    if config.ar_model is not None:
        from openmagvit2.generation.config import ARModelConfig

        try:
            config.ar_model = ARModelConfig.from_mapping(config.ar_model)
        except ValueError as error:
            raise ConfigError(str(error)) from None
    if config.video_model is not None:
        from openmagvit2.models.video_config import VideoModelConfig

        try:
            config.video_model = VideoModelConfig.from_mapping(config.video_model)
        except ValueError as error:
            raise ConfigError(str(error)) from None
    _check_task_data(config)
    world_size = int(os.environ.get("WORLD_SIZE", os.environ.get("SLURM_NTASKS", "1")))
    check_global_batch(config.train.batch_size, config.train.global_batch_size, world_size)
    return config


def _check_task_data(config: RunConfig) -> None:
    """The data fits the model the task trains: clips for `task=video_tokenizer`, images (or tokens) otherwise, and
    frame sizes (and clip lengths) the model's down-sampling divides."""
    video_task, video_data = config.task.name == "video_tokenizer", config.data.is_video
    if video_task and not video_data:
        raise ConfigError(f"task=video_tokenizer trains on video clips but data={config.data.name} holds images: use "
                          "data=video_wds (shards from python -m openmagvit2.data.make_video_shards).")
    if video_data and not video_task:
        raise ConfigError(f"data={config.data.name} holds video clips but task={config.task.name} trains on images: "
                          "use task=video_tokenizer (e.g. experiment=ucf101_128_large), or an image data source.")
    if video_task:
        if config.video_model is None:
            raise ConfigError("task=video_tokenizer needs a video_model group: choose video_model=video_tiny or "
                              "video_model=openmagvit2_video_128.")
        factor, temporal = config.video_model.spatial_factor, config.video_model.temporal_factor
        check((config.data.frames - 1) % temporal == 0, "data.frames", config.data.frames,
              f"{temporal}k + 1 frames for this video_model (e.g. {2 * temporal + 1} or {4 * temporal + 1})")
    elif config.task.name == "tokenizer" and isinstance(config.model, ModelConfig):
        factor = config.model.downsample_factor
    else:
        return  # Stage II: the tokenizer that encodes the images is task.tokenizer's, checked when it is loaded
    check(config.data.image_size % factor == 0, "data.image_size", config.data.image_size,
          f"a multiple of the model's downsampling factor {factor}")


def _register() -> None:
    """Store the schemas in Hydra's ConfigStore; the YAML options name them in their defaults lists."""
    from hydra.core.config_store import ConfigStore

    cs = ConfigStore.instance()
    cs.store(name="config_schema", node=RunConfig)
    cs.store(group="model", name="model_schema", node=ModelConfig)
    cs.store(group="quantizer", name="lfq_schema", node=QuantizerConfig)
    cs.store(group="loss", name="loss_schema", node=LossConfig)
    cs.store(group="optim", name="adam_schema", node=OptimConfig)
    cs.store(group="logger", name="wandb_schema", node=LoggerConfig)
    cs.store(group="cluster", name="cluster_schema", node=ClusterConfig)
    cs.store(group="task", name="task_schema", node=TaskConfig)
    for name, node in DATA_SOURCES.items():
        cs.store(group="data", name=f"{name}_schema", node=node)


_register()
