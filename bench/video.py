"""Benchmark: a video tokenizer training step (clips/s, peak memory, the entropy's share) and video readers.

    python bench/video.py                                           # CPU: video_tiny, 2 x 17 x 128 x 128, + readers
    python bench/video.py --device cuda --arch openmagvit2_video_128 --channels-last --bf16 --compile --no-readers

Training step (REFERENCE-VIDEO §5, §6) at the recipe's per-GPU batch (2 clips of 17 x 128 x 128): generator forward
in training mode (LFQ entropy and commitment computed), L1 + 0.3 non-saturating GAN (3D discriminator frozen) + 0.1
entropy + 0.25 commitment, backward, Adam(1e-4, (0.5, 0.9)); then the 3D discriminator's hinge loss on the real and
the detached reconstruction, backward, Adam; then an EMA lerp (0.999) over the generator's parameters. LPIPS is not
included (its VGG weights cannot be fetched here): on every frame it would add 34 VGG16 passes at 128 px per step.
Rows: eager fp32; optionally channels_last_3d (model and clips), bf16 autocast, torch.compile of the generator.
Time: the fastest of `--repeats` steps after `--warmup` untimed ones (the minimum is the least noisy estimate on a
shared machine). Peak memory: torch.cuda.max_memory_allocated on CUDA; on CPU the resident tensors (weights, Adam
moments, EMA) plus the largest sum of live tensor bytes in the profiler's allocation events of one step (bench/lfq.py's
`peak_bytes`); both count tensors only (no allocator cache, no library scratch space). The entropy share: the LFQ's entropy
terms forward + backward timed alone on a latent of the step's shape (`b 18 5 16 16`: 1,280 tokens per clip),
divided by the step time.

Readers: decode 17 consecutive frames from a random start of a synthetic 320x240, 25 fps MPEG-4 Part 2 `.avi` (the
UCF-101 format), each reader in this process on one thread; clips/s over `--reader-clips` random starts.
torchvision 0.29 no longer has `torchvision.io.read_video`; torchcodec needs system FFmpeg libraries (absent here).
"""
from __future__ import annotations

import argparse
import contextlib
import importlib.util
import random
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
from lfq import peak_bytes  # noqa: E402

from openmagvit2 import VideoTokenizer  # noqa: E402
from openmagvit2.losses import NLayerDiscriminator3D  # noqa: E402
from openmagvit2.models.video_config import video_model_names, video_model_preset  # noqa: E402

MIB = 2 ** 20


def build_step(arch: str, batch: int, frames: int, size: int, device: str, channels_last: bool, bf16: bool,
               compile_model: bool) -> tuple[Callable[[], None], Callable[[], float], Callable[[], int]]:
    """One training step of the recipe as a closure, a timer of the entropy terms alone, and the resident bytes
    (weights, Adam moments, EMA copy: what lives between steps)."""
    torch.manual_seed(0)
    model = VideoTokenizer(**video_model_preset(arch)).to(device).train()
    discriminator = NLayerDiscriminator3D().to(device).train()
    clips = torch.rand(batch, 3, frames, size, size, device=device) * 2 - 1
    if channels_last:
        model, discriminator = model.to(memory_format=torch.channels_last_3d), discriminator.to(
            memory_format=torch.channels_last_3d)
        clips = clips.contiguous(memory_format=torch.channels_last_3d)
    generator = torch.compile(model) if compile_model else model
    opt_g = torch.optim.Adam(model.parameters(), lr=1e-4, betas=(0.5, 0.9))
    opt_d = torch.optim.Adam(discriminator.parameters(), lr=1e-4, betas=(0.5, 0.9))
    ema = [p.detach().clone() for p in model.parameters()]
    autocast = (lambda: torch.autocast(device, dtype=torch.bfloat16)) if bf16 else contextlib.nullcontext

    def step() -> None:
        discriminator.requires_grad_(False)
        with autocast():
            out = generator(clips)
            recon = out.reconstruction
            gan = F.softplus(-discriminator(recon).mean(dim=(1, 2, 3, 4))).mean()
            loss = ((clips - recon).abs().mean() + 0.3 * gan + 0.1 * out.quantizer.entropy_loss
                    + 0.25 * out.quantizer.commitment)
        opt_g.zero_grad(set_to_none=True)
        loss.backward()
        opt_g.step()
        discriminator.requires_grad_(True)
        with autocast():
            real, fake = discriminator(clips), discriminator(recon.detach())
            d_loss = 0.5 * (F.relu(1 - real).mean() + F.relu(1 + fake).mean())
        opt_d.zero_grad(set_to_none=True)
        d_loss.backward()
        opt_d.step()
        with torch.no_grad():
            torch._foreach_lerp_(ema, [p.detach() for p in model.parameters()], 1 - 0.999)

    latent_frames = model.config.latent_frames(frames)
    side = size // model.config.spatial_factor
    z = (torch.randn(batch, 18, latent_frames, side, side, device=device) * 0.05).requires_grad_()

    def entropy_s() -> float:
        sync(device)
        start = time.perf_counter()
        out = model.quantizer(z, compute_losses=True)
        out.entropy_loss.backward()
        sync(device)
        z.grad = None
        return time.perf_counter() - start

    def resident_bytes() -> int:
        tensors = [*model.parameters(), *discriminator.parameters(), *discriminator.buffers(), *ema]
        tensors += [value for opt in (opt_g, opt_d) for state in opt.state.values() for value in state.values()
                    if torch.is_tensor(value)]
        return sum(t.numel() * t.element_size() for t in tensors)

    return step, entropy_s, resident_bytes


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def best_s(fn: Callable[[], None], repeats: int, device: str) -> float:
    times = []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return min(times)


def train_rows(args: argparse.Namespace) -> list[dict]:
    variants = [("eager fp32", False, False, False)]
    if args.channels_last:
        variants.append(("channels_last_3d", True, False, False))
    if args.bf16:
        variants.append(("bf16 autocast", False, True, False))
    if args.compile:
        variants.append(("torch.compile", False, False, True))
    rows = []
    for arch in args.arch:
        for name, channels_last, bf16, compile_model in variants:
            step, entropy_s, resident_bytes = build_step(arch, args.batch, args.frames, args.size, args.device, channels_last,
                                            bf16, compile_model)
            for _ in range(args.warmup):
                step()
            step_s = best_s(step, args.repeats, args.device)
            if args.device == "cuda":
                torch.cuda.reset_peak_memory_stats()
                step()
                sync(args.device)
                peak = torch.cuda.max_memory_allocated()
            else:
                peak = resident_bytes() + peak_bytes(step, lambda: None, args.device)
            entropy = min(entropy_s() for _ in range(args.repeats + 1))
            rows.append({"arch": arch, "variant": name, "step_s": step_s, "peak": peak, "entropy_s": entropy})
            print(f"done {arch} {name}: {step_s:.2f} s", file=sys.stderr, flush=True)
    return rows


# --- readers --------------------------------------------------------------------------------------------------------

def write_test_video(path: Path, frames: int = 150, width: int = 320, height: int = 240) -> None:
    """A moving-gradient clip, MPEG-4 Part 2 in AVI at 25 fps (as UCF-101's xvid files), written with PyAV."""
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=25)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.bit_rate = 1_000_000
        x, y = np.meshgrid(np.arange(width), np.arange(height))
        for i in range(frames):
            image = np.stack([(x + 3 * i) % 256, (y + 2 * i) % 256, (x + y + i) % 256], axis=-1).astype(np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def read_ours(path: Path, start: int, length: int) -> np.ndarray:
    """The chosen reader: `openmagvit2.data.video_clips.decode_clip` on the file's bytes (as stored in a shard)."""
    from openmagvit2.data.video_clips import decode_clip

    return decode_clip(path.read_bytes(), length, start=start)


def read_decord(path: Path, start: int, length: int) -> np.ndarray:
    import decord

    return decord.VideoReader(str(path), num_threads=1).get_batch(list(range(start, start + length))).asnumpy()


def read_decord_all(path: Path, start: int, length: int) -> np.ndarray:
    """Upstream's way (ucf101.py): decode every frame with decord, then index."""
    import decord

    reader = decord.VideoReader(str(path), num_threads=1)
    return reader.get_batch(np.arange(len(reader))).asnumpy()[start:start + length]


def read_opencv(path: Path, start: int, length: int) -> np.ndarray:
    import cv2

    capture = cv2.VideoCapture(str(path))
    capture.set(cv2.CAP_PROP_POS_FRAMES, start)
    frames = [cv2.cvtColor(capture.read()[1], cv2.COLOR_BGR2RGB) for _ in range(length)]
    capture.release()
    return np.stack(frames)


READERS = {"decode_clip (ours: pyav seek + decode, from bytes)": ("av", read_ours),
           "decord (get_batch)": ("decord", read_decord),
           "decord (all frames, upstream)": ("decord", read_decord_all), "opencv": ("cv2", read_opencv)}


def reader_rows(clips: int, length: int = 17) -> list[dict]:
    torch.set_num_threads(1)
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "v_Synthetic_g01_c01.avi"
        write_test_video(path)
        starts = [random.Random(i).randint(0, 150 - length) for i in range(clips)]
        reference = read_ours(path, starts[0], length)
        for name, (module, reader) in READERS.items():
            if importlib.util.find_spec(module) is None:
                rows.append({"reader": name, "note": f"{module} not installed"})
                continue
            try:
                first = reader(path, starts[0], length)
                start = time.perf_counter()
                for s in starts:
                    reader(path, s, length)
                seconds = time.perf_counter() - start
            except Exception as error:  # report a broken reader, keep measuring the others
                rows.append({"reader": name, "note": f"failed: {type(error).__name__}: {str(error)[:80]}"})
                continue
            same = first.shape == reference.shape and np.abs(first.astype(int) - reference).max() <= 2
            rows.append({"reader": name, "clips_per_s": clips / seconds, "shape": first.shape,
                         "note": "frames match ours" if same else "frames differ from ours"})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", nargs="+", default=["video_tiny"], choices=video_model_names())
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--batch", type=int, default=2, help="clips per step (the recipe: 2 per device)")
    parser.add_argument("--frames", type=int, default=17)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--bf16", action="store_true")
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--no-train", action="store_true")
    parser.add_argument("--no-readers", action="store_true")
    parser.add_argument("--reader-clips", type=int, default=40)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if not args.no_train:
        rows = train_rows(args)
        print(f"\nVideo training step, batch {args.batch} x {args.frames} x {args.size} x {args.size}, {args.device} "
              f"({torch.get_num_threads()} threads), torch {torch.__version__}")
        print("| model | variant | step s | clips/s | peak MiB | entropy fwd+bwd ms | entropy share |")
        print("|---|---|---|---|---|---|---|")
        for row in rows:
            print(f"| {row['arch']} | {row['variant']} | {row['step_s']:.2f} | {args.batch / row['step_s']:.2f} | "
                  f"{row['peak'] / MIB:.0f} | {row['entropy_s'] * 1e3:.1f} | {row['entropy_s'] / row['step_s']:.1%} |")
    if not args.no_readers:
        print(f"\nVideo readers: 17 consecutive frames of a 320x240 MPEG-4 .avi, {args.reader_clips} random starts, "
              f"1 thread")
        print("| reader | clips/s | frames | note |")
        print("|---|---|---|---|")
        for row in reader_rows(args.reader_clips):
            rate = f"{row['clips_per_s']:.1f}" if "clips_per_s" in row else "-"
            print(f"| {row['reader']} | {rate} | {tuple(row.get('shape', ()))} | {row['note']} |")


if __name__ == "__main__":
    main()
