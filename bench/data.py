"""Data pipeline throughput: our shard and folder loaders vs a torchvision ImageFolder DataLoader, same run.

Generates photo-like JPEGs of ImageNet size (sides 333-500 px, quality 95, ~100 kB) in a temporary folder, converts
them to shards with make_shards, then measures images/s of decode + resize short side + random crop + batching for
each pipeline with the same worker count and batch size. Passes are interleaved across pipelines (``--repeats``)
and the best pass of each is kept, which damps the noise of a shared machine. Prints a table of ratios vs the
baseline (torchvision ImageFolder + PIL at the same crop size).

    python bench/data.py                                  # 2,000 images, 2 workers: about 2 minutes on 2 cores
    python bench/data.py --images 20000 --measure 8000 --workers 8 --repeats 3   # bigger, on a real node
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

Batches = Callable[[], Iterable[torch.Tensor]]


def measure(make_batches: Batches, num_batches: int) -> float:
    """Images/s over ``num_batches`` batches, timed from the first batch (worker start-up excluded)."""
    iterator = iter(make_batches())
    next(iterator)
    images, started = 0, time.perf_counter()
    for _ in range(num_batches):
        images += len(next(iterator))
    return images / (time.perf_counter() - started)


def torchvision_pil(root: str, size: int, batch_size: int, workers: int) -> Batches:
    """The baseline: ``torchvision.datasets.ImageFolder`` + Resize/RandomCrop/PILToTensor, shuffled DataLoader."""
    from torchvision import datasets, transforms

    transform = transforms.Compose([transforms.Resize(size), transforms.RandomCrop(size), transforms.PILToTensor()])
    dataset = datasets.ImageFolder(root, transform=transform)
    return lambda: (images for images, _ in DataLoader(dataset, batch_size=batch_size, shuffle=True,
                                                       num_workers=workers, drop_last=True))


def torchvision_decode_jpeg(root: str, size: int, batch_size: int, workers: int) -> Batches:
    """ImageFolder with ``torchvision.io.decode_jpeg`` and an antialiased tensor resize instead of PIL."""
    from torchvision import datasets, io
    from torchvision.transforms import v2

    def load(path: str) -> torch.Tensor:
        return io.decode_jpeg(io.read_file(path), mode=io.ImageReadMode.RGB)

    transform = v2.Compose([v2.Resize(size, antialias=True), v2.RandomCrop(size)])
    dataset = datasets.ImageFolder(root, transform=transform, loader=load)
    return lambda: (images for images, _ in DataLoader(dataset, batch_size=batch_size, shuffle=True,
                                                       num_workers=workers, drop_last=True))


def ours(data_cfg: dict, batch_size: int) -> Batches:
    return lambda: build_train_loader(data_cfg, batch_size, rank=0, world_size=1, seed=0)


def stage_costs(paths: list[str], repeats: int) -> dict[str, float]:
    """Single-thread milliseconds per image of each decode/resize stage (best of ``repeats`` passes).

    Free of DataLoader and scheduling effects, so these numbers are stable even on a busy machine.
    """
    import io as pyio

    from PIL import Image
    from torchvision import io
    from torchvision.transforms import functional

    from openmagvit2.data.decode import decode_image
    from openmagvit2.data.transforms import resize_short_side

    encoded = [open(path, "rb").read() for path in paths]
    decoded = [decode_image(data) for data in encoded]
    tensors = [io.decode_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8)) for data in encoded]

    def plain_pil():
        for data in encoded:
            Image.open(pyio.BytesIO(data)).convert("RGB")

    stages = {
        "decode: PIL open + convert(RGB)": plain_pil,
        "decode: ours (decode_image)": lambda: [decode_image(data) for data in encoded],
        "decode: ours + jpeg_draft for 256 px": lambda: [decode_image(data, 256) for data in encoded],
        "decode: ours + jpeg_draft for 128 px": lambda: [decode_image(data, 128) for data in encoded],
        "decode: torchvision.io.decode_jpeg": lambda: [
            io.decode_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=io.ImageReadMode.RGB)
            for data in encoded],
        "resize short side to 256: PIL bilinear": lambda: [resize_short_side(image, 256) for image in decoded],
        "resize short side to 256: tensor, antialias": lambda: [
            functional.resize(tensor, 256, antialias=True) for tensor in tensors],
    }
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    best: dict[str, float] = {}
    try:
        for _ in range(repeats):
            for name, run in stages.items():
                started = time.perf_counter()
                run()
                cost = (time.perf_counter() - started) * 1000 / len(encoded)
                best[name] = min(best.get(name, float("inf")), cost)
    finally:
        torch.set_num_threads(threads)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=2000, help="JPEGs to generate (default 2000)")
    parser.add_argument("--measure", type=int, default=256, help="images timed per pass (default 256)")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers for every pipeline (default 2)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=2, help="interleaved passes per pipeline; the best is kept")
    parser.add_argument("--dir", default=None, help="keep (and reuse) the generated data here instead of a temp dir")
    args = parser.parse_args()

    work = args.dir or tempfile.mkdtemp(prefix="openmagvit2-bench-data-")
    folder, shard_dir = os.path.join(work, "train"), os.path.join(work, "shards")
    classes = 10
    try:
        if not os.path.isdir(folder):
            started = time.perf_counter()
            write_image_folder(folder, classes, args.images // classes, size_range=(333, 500), quality=95,
                               workers=max(1, os.cpu_count() or 1))
            print(f"generated {args.images // classes * classes} JPEGs in {time.perf_counter() - started:.1f} s")
        started = time.perf_counter()
        index = convert(folder, shard_dir, shard_size=100, workers=args.workers)
        print(f"make_shards: {time.perf_counter() - started:.1f} s", flush=True)
        total = index["total"]
        kilobytes = sum(os.path.getsize(os.path.join(shard_dir, s["name"])) for s in index["shards"]) / 1024 / total
        pattern = os.path.join(shard_dir, f"train-{{000000..{len(index['shards']) - 1:06d}}}.tar")

        def folder_cfg(size: int, draft: bool) -> dict:
            return {"name": "imagenet_folder", "train_dir": folder, "val_dir": None, "image_size": size,
                    "num_workers": args.workers, "hflip": False, "jpeg_draft": draft}

        def shards_cfg(size: int, draft: bool) -> dict:
            return {"name": "imagenet_wds", "shards": pattern, "val_shards": None, "shuffle_buffer": 500,
                    "shard_shuffle": True, "image_size": size, "num_workers": args.workers, "hflip": False,
                    "jpeg_draft": draft}

        sample_paths = sorted(os.path.join(dirpath, name) for dirpath, _, names in os.walk(folder) for name in names)
        costs = stage_costs(sample_paths[:: max(1, len(sample_paths) // 200)], repeats=5)
        bs, workers = args.batch_size, args.workers
        pipelines: list[tuple[str, int, Batches]] = []
        for size in (256, 128):
            pipelines += [
                ("torchvision ImageFolder, PIL [baseline]", size, torchvision_pil(folder, size, bs, workers)),
                ("torchvision ImageFolder, io.decode_jpeg", size, torchvision_decode_jpeg(folder, size, bs, workers)),
                ("ours imagenet_folder", size, ours(folder_cfg(size, False), bs)),
                ("ours imagenet_folder + jpeg_draft", size, ours(folder_cfg(size, True), bs)),
                ("ours imagenet_wds shards", size, ours(shards_cfg(size, False), bs)),
                ("ours imagenet_wds shards + jpeg_draft", size, ours(shards_cfg(size, True), bs)),
            ]
        num_batches = min(args.measure, total - 2 * bs) // bs
        best: dict[tuple[str, int], float] = {}
        for repeat in range(args.repeats):
            for name, size, make in pipelines:
                rate = measure(make, num_batches)
                best[(name, size)] = max(best.get((name, size), 0.0), rate)
                print(f"  pass {repeat + 1}: {name} @ {size} px: {rate:.0f} images/s", flush=True)
        load = os.getloadavg()[0]
        print()
        print(f"{total} JPEGs ({kilobytes:.0f} kB avg, sides 333-500 px), {num_batches * bs} images timed per pass, "
              f"best of {args.repeats}, batch {bs}, {workers} workers, {os.cpu_count()} CPUs "
              f"({platform.machine()}, load avg {load:.1f}), torch {torch.__version__}")
        print()
        print("| pipeline | crop | images/s | vs baseline |")
        print("|---|---:|---:|---:|")
        for name, size, _ in pipelines:
            rate = best[(name, size)]
            baseline = best[("torchvision ImageFolder, PIL [baseline]", size)]
            print(f"| {name} | {size} | {rate:.0f} | {rate / baseline:.2f}x |")
        print()
        print("Single-thread cost per image of each stage (best of 5 passes over ~200 of the images):")
        print()
        reference = costs["decode: PIL open + convert(RGB)"]
        print("| stage | ms / image | vs PIL decode |")
        print("|---|---:|---:|")
        for name, cost in costs.items():
            print(f"| {name} | {cost:.2f} | {reference / cost:.2f}x faster |" if name.startswith("decode")
                  else f"| {name} | {cost:.2f} | |")
    finally:
        if args.dir is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
