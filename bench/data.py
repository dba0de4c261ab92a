"""Data pipeline throughput: our shard and folder loaders vs a torchvision ImageFolder DataLoader, same run.

Generates photo-like JPEGs of ImageNet size (sides 333-500 px, quality 90, ~100 kB) in a temporary folder, converts
them to shards with make_shards, then measures images/s of decode + resize short side + random 256 crop +
batching for each pipeline with the same worker count and batch size. Prints a table of ratios vs the baseline.

    python bench/data.py                    # 2,000 images, 2 workers: about a minute on 2 cores
    python bench/data.py --images 20000 --workers 8 --repeats 3   # a bigger run on a real machine
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import tempfile
import time
from typing import Callable, Iterable

import torch
from torch.utils.data import DataLoader

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from openmagvit2.data import build_train_loader  # noqa: E402
from openmagvit2.data.make_shards import convert  # noqa: E402
from openmagvit2.data.synthetic import write_image_folder  # noqa: E402


def measure(make_batches: Callable[[], Iterable[torch.Tensor]], num_batches: int) -> float:
    """Images/s over ``num_batches`` batches, timed from the first batch (worker start-up excluded)."""
    iterator = iter(make_batches())
    next(iterator)
    images, started = 0, time.perf_counter()
    for _ in range(num_batches - 1):
        images += len(next(iterator))
    return images / (time.perf_counter() - started)


def torchvision_folder(root: str, size: int, batch_size: int, workers: int) -> Callable[[], Iterable[torch.Tensor]]:
    """The baseline: ``torchvision.datasets.ImageFolder`` + Resize/RandomCrop/PILToTensor, shuffled DataLoader."""
    from torchvision import datasets, transforms

    transform = transforms.Compose([transforms.Resize(size), transforms.RandomCrop(size), transforms.PILToTensor()])
    dataset = datasets.ImageFolder(root, transform=transform)

    def batches():
        loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=workers, drop_last=True)
        return (images for images, _ in loader)

    return batches


def torchvision_decode_jpeg(root: str, size: int, batch_size: int, workers: int) -> Callable[[], Iterable[torch.Tensor]]:
    """ImageFolder reading with ``torchvision.io.decode_jpeg`` and tensor resize (antialiased) instead of PIL."""
    from torchvision import datasets, io, transforms
    from torchvision.transforms import v2

    transform = v2.Compose([v2.Resize(size, antialias=True), v2.RandomCrop(size)])

    def load(path: str) -> torch.Tensor:
        return io.decode_jpeg(io.read_file(path), mode=io.ImageReadMode.RGB)

    dataset = datasets.ImageFolder(root, transform=transform, loader=load)
    del transforms

    def batches():
        loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=workers, drop_last=True)
        return (images for images, _ in loader)

    return batches


def ours(data_cfg: dict, batch_size: int) -> Callable[[], Iterable[torch.Tensor]]:
    return lambda: build_train_loader(data_cfg, batch_size, rank=0, world_size=1, seed=0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=2000, help="JPEGs to generate (default 2000)")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers for every pipeline (default 2)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--size", type=int, default=256, help="training crop size (default 256)")
    parser.add_argument("--repeats", type=int, default=1, help="passes per pipeline; the best is reported")
    parser.add_argument("--dir", default=None, help="reuse/keep the generated data here instead of a temp dir")
    args = parser.parse_args()

    work = args.dir or tempfile.mkdtemp(prefix="openmagvit2-bench-data-")
    folder, shard_dir = os.path.join(work, "train"), os.path.join(work, "shards")
    classes = 10
    per_class = args.images // classes
    try:
        if not os.path.isdir(folder):
            started = time.perf_counter()
            write_image_folder(folder, classes, per_class, size_range=(333, 500), seed=0)
            print(f"generated {classes * per_class} JPEGs in {time.perf_counter() - started:.1f} s", flush=True)
        started = time.perf_counter()
        index = convert(folder, shard_dir, shard_size=100, workers=args.workers)
        print(f"make_shards: {time.perf_counter() - started:.1f} s", flush=True)
        megabytes = sum(os.path.getsize(os.path.join(shard_dir, s["name"])) for s in index["shards"]) / 2**20
        total = index["total"]
        common = {"image_size": args.size, "num_workers": args.workers, "hflip": False}
        folder_cfg = {"name": "imagenet_folder", "train_dir": folder, "val_dir": None, **common}
        shards_cfg = {"name": "imagenet_wds", "shards": os.path.join(shard_dir, f"train-{{000000..{len(index['shards']) - 1:06d}}}.tar"),
                      "val_shards": None, "shuffle_buffer": 500, "shard_shuffle": True, **common}
        pipelines = {
            "torchvision ImageFolder (PIL) [baseline]": torchvision_folder(folder, args.size, args.batch_size, args.workers),
            "torchvision ImageFolder (io.decode_jpeg)": torchvision_decode_jpeg(folder, args.size, args.batch_size,
                                                                                args.workers),
            "ours imagenet_folder": ours({**folder_cfg, "jpeg_draft": False}, args.batch_size),
            "ours imagenet_folder + jpeg_draft": ours({**folder_cfg, "jpeg_draft": True}, args.batch_size),
            "ours imagenet_wds shards": ours({**shards_cfg, "jpeg_draft": False}, args.batch_size),
            "ours imagenet_wds shards + jpeg_draft": ours({**shards_cfg, "jpeg_draft": True}, args.batch_size),
        }
        num_batches = total // args.batch_size
        results = {}
        for name, make in pipelines.items():
            results[name] = max(measure(make, num_batches) for _ in range(args.repeats))
            print(f"  {name}: {results[name]:.0f} images/s", flush=True)
        baseline = results["torchvision ImageFolder (PIL) [baseline]"]
        print()
        print(f"{total} JPEGs ({megabytes / total * 1024:.0f} kB avg), crop {args.size}, batch {args.batch_size}, "
              f"{args.workers} workers, {os.cpu_count()} CPUs ({platform.processor() or platform.machine()}), "
              f"torch {torch.__version__}")
        print("| pipeline | images/s | vs baseline |")
        print("|---|---:|---:|")
        for name, rate in results.items():
            print(f"| {name} | {rate:.0f} | {rate / baseline:.2f}x |")
    finally:
        if args.dir is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
