"""Data pipeline throughput: our shard and folder loaders vs a torchvision ImageFolder DataLoader, same run.

Generates photo-like JPEGs of ImageNet size (sides 333-500 px, quality 95, ~100 kB) in a temporary folder, converts
them to shards with make_shards, then measures images/s of decode + resize short side + random crop + batching for
each pipeline with the same worker count and batch size, one epoch per pass. Reports CPU milliseconds per image
(workers + main process: robust on a busy shared machine) and wall-clock images/s (what training sees), each as a
ratio vs the baseline (torchvision ImageFolder + PIL at the same crop size), plus the single-thread cost of each
decode/resize stage, which is where PIL ``draft`` and ``torchvision.io.decode_jpeg`` act.

    python bench/data.py                                   # 1,000 images, 2 workers: about 2 minutes on 2 cores
    python bench/data.py --images 20000 --workers 8 --repeats 3   # bigger, on a real node
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import resource
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
from tests.synthetic_images import write_image_folder  # noqa: E402
from openmagvit2.data.transforms import to_model_range  # noqa: E402

Batches = Callable[[], Iterable[torch.Tensor]]


def _cpu_seconds() -> float:
    """CPU time of this process plus its reaped children (the DataLoader workers once shut down)."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


def measure(make_batches: Batches, num_batches: int) -> tuple[float, float]:
    """One pass of exactly one epoch (``num_batches`` batches, nothing prefetched beyond it).

    Returns (images/s of wall time after the first batch, CPU milliseconds per image of the workers and the main
    process together). CPU time is what a busy shared machine distorts least; wall time is what training sees.
    """
    cpu_before = _cpu_seconds()
    iterator = iter(make_batches())
    images = len(next(iterator))
    timed, started = 0, time.perf_counter()
    for _ in range(num_batches - 1):
        timed += len(next(iterator))
    wall = time.perf_counter() - started
    del iterator  # shuts the workers down, so that their CPU time is counted
    gc.collect()
    return timed / wall, (_cpu_seconds() - cpu_before) * 1000 / (images + timed)


def torchvision_pil(root: str, size: int, batch_size: int, workers: int) -> Batches:
    """The baseline: ``torchvision.datasets.ImageFolder`` + Resize/RandomCrop/PILToTensor, shuffled DataLoader.

    Batches go through the same uint8 -> [-1, 1] float conversion as ours, so both deliver what the trainer needs.
    """
    from torchvision import datasets, transforms

    transform = transforms.Compose([transforms.Resize(size), transforms.RandomCrop(size), transforms.PILToTensor()])
    dataset = datasets.ImageFolder(root, transform=transform)
    return lambda: (to_model_range(images) for images, _ in DataLoader(dataset, batch_size=batch_size, shuffle=True,
                                                                       num_workers=workers, drop_last=True))


def torchvision_decode_jpeg(root: str, size: int, batch_size: int, workers: int) -> Batches:
    """ImageFolder with ``torchvision.io.decode_jpeg`` and an antialiased tensor resize instead of PIL."""
    from torchvision import datasets, io
    from torchvision.transforms import v2

    def load(path: str) -> torch.Tensor:
        return io.decode_jpeg(io.read_file(path), mode=io.ImageReadMode.RGB)

    transform = v2.Compose([v2.Resize(size, antialias=True), v2.RandomCrop(size)])
    dataset = datasets.ImageFolder(root, transform=transform, loader=load)
    return lambda: (to_model_range(images) for images, _ in DataLoader(dataset, batch_size=batch_size, shuffle=True,
                                                                       num_workers=workers, drop_last=True))


def ours(data_cfg: dict, batch_size: int) -> Batches:
    return lambda: build_train_loader(data_cfg, batch_size, rank=0, world_size=1, seed=0)


def stage_costs(paths: list[str], repeats: int) -> dict[str, float]:
    """Single-thread CPU milliseconds per image of each decode/resize stage (best of ``repeats`` passes).

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
                started = time.process_time()
                run()
                cost = (time.process_time() - started) * 1000 / len(encoded)
                best[name] = min(best.get(name, float("inf")), cost)
    finally:
        torch.set_num_threads(threads)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=1000, help="JPEGs to generate; one epoch per pass (default 1000)")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers for every pipeline (default 2)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=1, help="interleaved passes per pipeline; the best is kept")
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
        pipelines: list[tuple[str, int, Batches]] = [
            ("torchvision ImageFolder, PIL [baseline]", 256, torchvision_pil(folder, 256, bs, workers)),
            ("torchvision ImageFolder, io.decode_jpeg", 256, torchvision_decode_jpeg(folder, 256, bs, workers)),
            ("ours imagenet_folder", 256, ours(folder_cfg(256, False), bs)),
            ("ours imagenet_folder + jpeg_draft", 256, ours(folder_cfg(256, True), bs)),
            ("ours imagenet_wds shards", 256, ours(shards_cfg(256, False), bs)),
            ("ours imagenet_wds shards + jpeg_draft", 256, ours(shards_cfg(256, True), bs)),
            ("torchvision ImageFolder, PIL [baseline]", 128, torchvision_pil(folder, 128, bs, workers)),
            ("ours imagenet_wds shards", 128, ours(shards_cfg(128, False), bs)),
            ("ours imagenet_wds shards + jpeg_draft", 128, ours(shards_cfg(128, True), bs)),
        ]
        num_batches = total // bs
        rates: dict[tuple[str, int], float] = {}
        cpu: dict[tuple[str, int], float] = {}
        for repeat in range(args.repeats):
            for name, size, make in pipelines:
                rate, cost = measure(make, num_batches)
                rates[(name, size)] = max(rates.get((name, size), 0.0), rate)
                cpu[(name, size)] = min(cpu.get((name, size), float("inf")), cost)
                print(f"  pass {repeat + 1}: {name} @ {size} px: {rate:.0f} images/s, {cost:.1f} CPU ms/image",
                      flush=True)
        load = os.getloadavg()[0]
        print()
        print(f"{total} JPEGs ({kilobytes:.0f} kB avg, sides 333-500 px), one epoch per pass, best of "
              f"{args.repeats}, batch {bs}, {workers} workers, {os.cpu_count()} CPUs "
              f"({platform.machine()}, load avg {load:.1f}), torch {torch.__version__}")
        print()
        print("| pipeline | crop | CPU ms / image | speed-up (CPU) | images/s (wall) | vs baseline (wall) |")
        print("|---|---:|---:|---:|---:|---:|")
        for name, size, _ in pipelines:
            key, base = (name, size), ("torchvision ImageFolder, PIL [baseline]", size)
            print(f"| {name} | {size} | {cpu[key]:.1f} | {cpu[base] / cpu[key]:.2f}x | {rates[key]:.0f} | "
                  f"{rates[key] / rates[base]:.2f}x |")
        print()
        print("Single-thread cost per image of each stage (best of 5 passes over ~200 of the images):")
        print()
        reference = costs["decode: PIL open + convert(RGB)"]
        print("| stage | CPU ms / image | speed-up vs PIL decode |")
        print("|---|---:|---:|")
        for name, cost in costs.items():
            print(f"| {name} | {cost:.2f} | {reference / cost:.2f}x |" if name.startswith("decode")
                  else f"| {name} | {cost:.2f} | |")
    finally:
        if args.dir is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
