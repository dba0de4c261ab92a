"""The pretrained files we cannot download on an offline cluster: where the libraries look for them, and how to get them.

Five files matter, four loaded by a library's own code (read from the installed sources, not guessed):

- `lpips_vgg`, `lpips_alex`: the ImageNet VGG16 / AlexNet trunks that the `lpips` package builds with
  `torchvision.models.vgg16(pretrained=True)` / `alexnet(pretrained=True)`; torchvision fetches them with
  `torch.hub.load_state_dict_from_url` into `torch.hub.get_dir()/checkpoints` (`$TORCH_HOME/hub/checkpoints`,
  `$TORCH_HOME` defaulting to `$XDG_CACHE_HOME/torch` then `~/.cache/torch`). The LPIPS linear layers
  (`lpips/weights/v0.1/{vgg,alex}.pth`) ship inside the pip package and need nothing.
- `inception_clean`: clean-fid's TorchScript Inception (`inception-2015-12-05.pt`, the StyleGAN2-ADA port of the
  TensorFlow FID network), used by `fid_mode=clean`. clean-fid itself downloads it to `/tmp` on Linux, a node-local
  directory that clusters wipe; we keep it next to the torchvision files (same `$TORCH_HOME` rule) and also accept
  clean-fid's `/tmp` copy.
- `inception_legacy`: pytorch-fid's Inception (`pt_inception-2015-12-05-6726825d.pth`), used by
  `fid_mode=legacy_pytorch`; clean-fid loads it with `torch.utils.model_zoo.load_url`, i.e. the same hub directory.
- `i3d_400`: VideoGPT's converted Kinetics-400 I3D (`i3d_pretrained_400.pt`, Google Drive id from VideoGPT's
  `download.py`), used by rFVD and loaded by our own `openmagvit2.eval.i3d.load_i3d`; kept in the same directory. Its
  SHA-256 is not pinned (no copy was available when it was registered): a download prints the digest, and the file is
  checked instead by loading it strictly into `InceptionI3d` (every key and shape must match).

`require(names)` fails fast, before any model is built, with one message naming every missing file and the exact path
it must be copied to; `python -m openmagvit2.weights download --all` (= `make weights`) fetches them on a machine with
network, checks their SHA-256 (or, where none is pinned, loads the file), and prints how to copy them to a cluster.
"""
from __future__ import annotations

import argparse
import shutil
import sys
import urllib.request
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from openmagvit2.io.atomic import atomic_write
from openmagvit2.io.checksum import file_sha256

CLEANFID_CACHE_DIR = Path("/tmp")  # hard-coded by cleanfid.features.feature_extractor on Linux


@dataclass(frozen=True)
class WeightFile:
    """One pretrained file: what it is, where it comes from, and how a copy is checked after every download.

    sha256: the published digest, or None where it is not known here (not pinned); such a file is checked by
    `load_check` (a callable that raises `ValueError` on a wrong file) and its digest printed when downloaded.
    """

    name: str
    filename: str
    url: str
    sha256: str | None
    description: str
    also_found_in: tuple[Path, ...] = ()
    load_check: Callable[[Path], object] | None = None

    @property
    def path(self) -> Path:
        """Where the libraries (and we) load it from; resolved at call time so `TORCH_HOME` changes are honoured."""
        return hub_checkpoint_dir() / self.filename

    def find(self) -> Path | None:
        """The first existing copy (the canonical path first), or None."""
        for candidate in (self.path, *(folder / self.filename for folder in self.also_found_in)):
            if candidate.is_file():
                return candidate
        return None


def _load_i3d(path: Path) -> object:
    from openmagvit2.eval.i3d import load_i3d  # lazy: the evaluation networks are not needed to list weights

    return load_i3d(path)


VIDEOGPT_I3D_DRIVE_ID = "1mQK8KD8G6UWRa5t87SRMm5PVXtlpneJT"  # videogpt/download.py: _I3D_PRETRAINED_ID

WEIGHTS: dict[str, WeightFile] = {
    spec.name: spec
    for spec in (
        WeightFile(
            name="lpips_vgg",
            filename="vgg16-397923af.pth",
            url="https://download.pytorch.org/models/vgg16-397923af.pth",
            sha256="397923af8e79cdbb6a7127f12361acd7a2f83e06b05044ddf496e83de57a5bf0",
            description="torchvision VGG16 ImageNet weights (LPIPS-VGG trunk, perceptual loss and lpips_vgg metric)",
        ),
        WeightFile(
            name="lpips_alex",
            filename="alexnet-owt-7be5be79.pth",
            url="https://download.pytorch.org/models/alexnet-owt-7be5be79.pth",
            sha256="7be5be791159472b1fbf3c69796f7cb30dca7ad8466c2df70058c37116cdee02",
            description="torchvision AlexNet ImageNet weights (LPIPS-AlexNet trunk, lpips_alex metric)",
        ),
        WeightFile(
            name="inception_clean",
            filename="inception-2015-12-05.pt",
            url="https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/metrics/inception-2015-12-05.pt",
            sha256="f58cb9b6ec323ed63459aa4fb441fe750cfe39fafad6da5cb504a16f19e958f4",
            description="clean-fid TorchScript Inception-v3 (rFID, fid_mode=clean)",
            also_found_in=(CLEANFID_CACHE_DIR,),
        ),
        WeightFile(
            name="inception_legacy",
            filename="pt_inception-2015-12-05-6726825d.pth",
            url="https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/"
                "pt_inception-2015-12-05-6726825d.pth",
            sha256="6726825d0af5f729cebd5821db510b11b1cfad8faad88a03f1befd49fb9129b2",
            description="pytorch-fid Inception-v3 (rFID, fid_mode=legacy_pytorch, as in the published numbers)",
        ),
        WeightFile(
            name="i3d_400",
            filename="i3d_pretrained_400.pt",
            url=f"https://drive.google.com/uc?export=download&id={VIDEOGPT_I3D_DRIVE_ID}",
            sha256=None,  # not pinned: checked by loading it strictly into InceptionI3d
            description="VideoGPT's Kinetics-400 I3D (rFVD; also fetched by `gdown " + VIDEOGPT_I3D_DRIVE_ID + "`)",
            load_check=_load_i3d,
        ),
    )
}


class MissingWeightsError(RuntimeError):
    """Pretrained files are absent; the message lists each one with the path it must be copied to."""


class DownloadError(RuntimeError):
    """A file could not be fetched (no network, proxy, HTTP error); the message says how to place it by hand."""


def hub_checkpoint_dir() -> Path:
    """`torch.hub.get_dir()/checkpoints`: where `load_state_dict_from_url` (torchvision, clean-fid legacy) looks."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def _specs(names: Iterable[str]) -> list[WeightFile]:
    names = list(dict.fromkeys(names))
    unknown = [name for name in names if name not in WEIGHTS]
    if unknown:
        raise ValueError(f"unknown pretrained weights {unknown}; known names are {sorted(WEIGHTS)}.")
    return [WEIGHTS[name] for name in names]


def missing(names: Iterable[str]) -> list[WeightFile]:
    """The requested files that are not on disk (an empty list when all are present)."""
    return [spec for spec in _specs(names) if spec.find() is None]


def locate(name: str) -> Path:
    """Path of an available file, or `MissingWeightsError` naming where it must go."""
    found = _specs([name])[0].find()
    if found is None:
        raise MissingWeightsError(missing_message([WEIGHTS[name]]))
    return found


def missing_message(specs: Sequence[WeightFile]) -> str:
    """One message for all missing files: what each is, its exact destination, and how to fetch them."""
    lines = [f"{len(specs)} pretrained weight file(s) are missing (this machine cannot download them):"]
    for spec in specs:
        lines.append(f"  - {spec.name}: {spec.description}")
        lines.append(f"      put {spec.filename} at {spec.path}")
        lines.append(f"      (source {spec.url}, sha256 {spec.sha256 or 'not pinned'})")
    names = " ".join(spec.name for spec in specs)
    lines.append(
        f"Fix: run `make weights` (or `python -m openmagvit2.weights download {names}`) on a machine with network, "
        f"then copy the files to the paths above (set TORCH_HOME to use another cache directory)."
    )
    lines.append(offline_way_out(specs))
    return "\n".join(lines)


def offline_way_out(specs: Sequence[WeightFile]) -> str:
    """How to run without the missing files: the settings that need no pretrained network."""
    ways = []
    if any(spec.name == "lpips_vgg" for spec in specs):
        ways.append("train without them with loss.perceptual_weight=0 (no LPIPS loss)")
    ways.append("evaluate without them with metrics=[psnr,ssim,usage]")
    return "Or, offline: " + "; ".join(ways) + "."


def require(names: Iterable[str]) -> None:
    """Raise `MissingWeightsError` naming every missing file among `names` (see `WEIGHTS` for the names)."""
    absent = missing(names)
    if absent:
        raise MissingWeightsError(missing_message(absent))


def verify(spec: WeightFile, path: Path) -> str:
    """The file's SHA-256; `RuntimeError` when it differs from the pinned one or, unpinned, the file does not load."""
    actual = file_sha256(path)
    if spec.sha256 is None:
        if spec.load_check is not None:
            try:
                spec.load_check(path)
            except ValueError as error:  # CheckpointError: wrong keys, shapes, or not a torch file (an HTML page)
                raise RuntimeError(f"{error} [fetch {spec.url} again, by hand if needed, to {spec.path}]") from None
        return actual
    if actual != spec.sha256:
        raise RuntimeError(f"{path} has sha256 {actual}, expected {spec.sha256} for {spec.name}; delete it and "
                           f"download it again.")
    return actual


def _verified(spec: WeightFile, digest: str) -> str:
    return "verified" if spec.sha256 is not None else f"checked by loading (sha256 {digest}, not pinned)"


def download(names: Iterable[str], force: bool = False) -> list[Path]:
    """Fetch each file to its canonical path (temp file + checksum + rename); returns the paths."""
    paths = []
    for spec in _specs(names):
        destination = spec.path
        if destination.is_file() and not force:
            digest = verify(spec, destination)
            print(f"{spec.name}: already present and {_verified(spec, digest)} at {destination}")
            paths.append(destination)
            continue
        print(f"{spec.name}: downloading {spec.url}")
        try:
            with atomic_write(destination) as tmp:  # renamed into place only when the checksum matches
                with urllib.request.urlopen(spec.url, timeout=60) as response:
                    shutil.copyfileobj(response, tmp)
                tmp.flush()
                digest = verify(spec, Path(tmp.name))
        except OSError as error:  # URLError, HTTPError, timeouts, a read-only cache: all OSError
            reason = getattr(error, "reason", None) or error
            raise DownloadError(f"could not download {spec.filename} from {spec.url} ({reason}); fetch it on a "
                                f"machine with network and put it at {destination}.") from None
        print(f"{spec.name}: saved and {_verified(spec, digest)} at {destination}")
        paths.append(destination)
    return paths


def copy_instructions(paths: Sequence[Path]) -> str:
    """How to move downloaded files to an offline cluster so that the libraries find them there."""
    folder = hub_checkpoint_dir()
    files = " ".join(str(path) for path in paths)
    return (
        "To use these files on an offline cluster, copy them into the same cache directory there, e.g.\n"
        f"  ssh <cluster> mkdir -p {folder}   # or $TORCH_HOME/hub/checkpoints for the cluster's TORCH_HOME\n"
        f"  rsync -av {files} <cluster>:{folder}/\n"
        "then check with `python -m openmagvit2.weights check` on the cluster."
    )


def _main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m openmagvit2.weights", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    fetch = commands.add_parser("download", help="download (and checksum) pretrained files")
    fetch.add_argument("names", nargs="*", help=f"any of {sorted(WEIGHTS)}")
    fetch.add_argument("--all", action="store_true", help="every file")
    fetch.add_argument("--force", action="store_true", help="download again even when present")
    check = commands.add_parser("check", help="list which files are present (and where they must go)")
    check.add_argument("--verify", action="store_true",
                       help="also compare SHA-256 checksums, or load the unpinned files (reads every file)")
    args = parser.parse_args(argv)

    if args.command == "download":
        names = sorted(WEIGHTS) if args.all else args.names
        if not names:
            parser.error("name the files to download or pass --all")
        try:
            paths = download(names, force=args.force)
        except (DownloadError, RuntimeError) as error:  # RuntimeError: a checksum mismatch
            print(f"error: {error}", file=sys.stderr)
            return 2
        print(copy_instructions(paths))
        return 0
    status = 0
    for spec in WEIGHTS.values():
        found = spec.find()
        if found is None:
            print(f"MISSING  {spec.name}: put {spec.filename} at {spec.path}")
            status = 1
            continue
        checked = ""
        if args.verify:
            digest = verify(spec, found)
            checked = f" ({'sha256 verified' if spec.sha256 is not None else _verified(spec, digest)})"
        print(f"ok       {spec.name}: {found}{checked}")
    return status


if __name__ == "__main__":
    sys.exit(_main())
