"""The released Open-MAGVIT2 files by name, fetched through `huggingface_hub` into the standard Hugging Face cache.

    from openmagvit2.hub import from_pretrained
    tokenizer = from_pretrained("TencentARC/Open-MAGVIT2-Tokenizer-256-resolution")   # or a save_pretrained folder
    python eval.py ckpt=hf://TencentARC/Open-MAGVIT2-Tokenizer-256-resolution
    python train.py train.init_from=hf://TencentARC/Open-MAGVIT2-Tokenizer-128-resolution ...

A name is a repo id (`TencentARC/Open-MAGVIT2-Tokenizer-256-resolution`), optionally with `hf://` in front and the
file after it (`hf://TencentARC/Open-MAGVIT2/imagenet_256_B.ckpt`, needed where a repo holds several files).
`RELEASED` lists only the repos and files named in the project's reference notes; the architecture (a `conf/model`
name) and the bit order of each are the ones the released keys imply. Downloads go to the Hugging Face cache
(`HF_HUB_CACHE`, default `~/.cache/huggingface/hub`); with `HF_HUB_OFFLINE=1` the cache alone is used, and a file
absent there raises `HubError` saying what to copy where.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from openmagvit2.errors import ConfigError

PREFIX = "hf://"


class HubError(ConfigError):
    """A released name that is unknown, or a file not in the cache while offline; the message says what to do."""


@dataclass(frozen=True)
class ReleasedFile:
    """One released checkpoint: where it lives on the Hub and what it holds."""

    repo_id: str
    filename: str
    model: str | None  # conf/model (or conf/video_model) name of the architecture; None: not a tokenizer we build
    bit_order: str | None  # lsb_first (v2/v3) | msb_first (v1); None where no LFQ index is read
    kind: str  # tokenizer | video_tokenizer | ar

    @property
    def name(self) -> str:
        return f"{self.repo_id}/{self.filename}"


# From the release notes (shared/REFERENCE-DETAILED.md, "Released checkpoints"). v1 files (msb_first) sit in
# TencentARC/Open-MAGVIT2; the v2/v3 Large files (lsb_first) later moved to the per-resolution repos.
RELEASED: tuple[ReleasedFile, ...] = (
    ReleasedFile("TencentARC/Open-MAGVIT2-Tokenizer-256-resolution", "imagenet_256_L.ckpt",
                 "openmagvit2_v3_256_large", "lsb_first", "tokenizer"),
    ReleasedFile("TencentARC/Open-MAGVIT2-Tokenizer-128-resolution", "imagenet_128_L.ckpt",
                 "openmagvit2_v3_128_large", "lsb_first", "tokenizer"),
    ReleasedFile("TencentARC/Open-MAGVIT2", "imagenet_256_B.ckpt", "openmagvit2_v1_256_base", "msb_first",
                 "tokenizer"),
    ReleasedFile("TencentARC/Open-MAGVIT2", "imagenet_128_B.ckpt", "openmagvit2_v1_128_base", "msb_first",
                 "tokenizer"),
    ReleasedFile("TencentARC/Open-MAGVIT2-Tokenizer-262144-Video", "video_128_262144.ckpt",
                 "openmagvit2_video_128", "lsb_first", "video_tokenizer"),
    # The AR models (conf/ar_model names); each file also holds the tokenizer it decodes with (first_stage_model.*).
    ReleasedFile("TencentARC/Open-MAGVIT2-AR-B-256-resolution", "AR_256_B.ckpt", "ar_b", "lsb_first", "ar"),
    ReleasedFile("TencentARC/Open-MAGVIT2-AR-L-256-resolution", "AR_256_L.ckpt", "ar_l", "lsb_first", "ar"),
    ReleasedFile("TencentARC/Open-MAGVIT2-AR-XL-256-resolution", "AR_256_XL.ckpt", "ar_xl", "lsb_first", "ar"),
)


def is_hub_name(value: Any) -> bool:
    """`hf://...`, or a registry repo id / repo-id/filename, as opposed to a local path."""
    if not isinstance(value, str):
        return False
    return value.startswith(PREFIX) or any(value in (spec.repo_id, spec.name) for spec in RELEASED)


def lookup(name: str) -> ReleasedFile:
    """The registry entry for `hf://<repo>[/<file>]` or a bare repo id; `HubError` (with the known names) if none."""
    bare = name[len(PREFIX):] if name.startswith(PREFIX) else name
    bare = bare.strip("/")
    matches = [spec for spec in RELEASED if bare in (spec.repo_id, spec.name)]
    if len(matches) == 1:
        return matches[0]
    if len(matches) > 1:
        raise HubError(f"{name} holds several released files; name one: "
                       + ", ".join(PREFIX + spec.name for spec in matches) + ".")
    known = ", ".join(PREFIX + spec.repo_id if _unique_repo(spec) else PREFIX + spec.name for spec in RELEASED)
    raise HubError(f"{name} is not a released Open-MAGVIT2 file; known: {known}.")


def _unique_repo(spec: ReleasedFile) -> bool:
    return sum(other.repo_id == spec.repo_id for other in RELEASED) == 1


def cache_dir() -> Path:
    """Where `huggingface_hub` keeps downloads (`HF_HUB_CACHE`, else `HF_HOME/hub`, else ~/.cache/huggingface/hub)."""
    from huggingface_hub import constants

    return Path(os.environ.get("HF_HUB_CACHE") or constants.HF_HUB_CACHE)


def offline_copy_hint(spec: ReleasedFile) -> str:
    """What to copy where so that an offline machine finds the file in its cache."""
    folder = "models--" + spec.repo_id.replace("/", "--")
    return (f"on a machine with network run `python -c \"from openmagvit2.hub import resolve_hf; "
            f"resolve_hf('{PREFIX}{spec.name}')\"`, then copy {cache_dir()}/{folder} (the whole folder: blobs/, "
            f"refs/, snapshots/) into the same place on this machine (or point HF_HUB_CACHE at a copy)")


def resolve_hf(name: str) -> Path:
    """The local path of a released file: from the Hugging Face cache, downloading it first when online.

    Honours `HF_HUB_OFFLINE=1` (cache only) and `HF_HUB_CACHE`. Raises `HubError` for an unknown name, or when the
    file is not in the cache and cannot be downloaded."""
    spec = lookup(name)
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return Path(hf_hub_download(spec.repo_id, spec.filename, cache_dir=os.environ.get("HF_HUB_CACHE")))
    except LocalEntryNotFoundError:  # offline, or no connection, and not in the cache
        raise HubError(f"{PREFIX}{spec.name} is not in the Hugging Face cache {cache_dir()} and cannot be "
                       f"downloaded here: {offline_copy_hint(spec)}.") from None
    except OSError as error:  # HTTP errors (gated/renamed repo), a read-only cache
        raise HubError(f"could not download {PREFIX}{spec.name} ({error}); {offline_copy_hint(spec)}.") from None


def resolve_path(value: str | os.PathLike[str]) -> Path:
    """A local path as it is; a hub name (`hf://...` or a registry repo id) through `resolve_hf`."""
    return resolve_hf(str(value)) if is_hub_name(str(value)) else Path(value)


def from_pretrained(name_or_path: str | os.PathLike[str], use_ema: bool = True, map_location: Any = "cpu"):
    """A tokenizer from a `save_pretrained` folder, a local checkpoint, or a released name (in eval mode).

    A released name loads the registry's architecture (and so its bit order) rather than guessing it from the keys;
    the video repo gives a `VideoTokenizer`, an AR repo the `ARModel`."""
    from openmagvit2.models import Tokenizer, VideoTokenizer

    value = str(name_or_path)
    if not is_hub_name(value):
        path = Path(value)
        if path.is_dir():
            return Tokenizer.from_pretrained(path, map_location=map_location)
        return Tokenizer.from_checkpoint(path, use_ema=use_ema, map_location=map_location)
    spec = lookup(value)
    if spec.kind == "ar":  # the AR model itself; its tokenizer: Tokenizer.from_checkpoint(resolve_hf(name))
        from openmagvit2.generation import ARModel

        return ARModel.from_checkpoint(resolve_hf(value), model=spec.model)
    model_class = VideoTokenizer if spec.kind == "video_tokenizer" else Tokenizer
    return model_class.from_checkpoint(resolve_hf(value), model=spec.model, use_ema=use_ema,
                                       map_location=map_location)
