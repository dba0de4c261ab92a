"""Benchmark: the video tokenizer's training step as train.py runs it (clips/s, peak memory, the entropy's share), and
video readers.

    python bench/video.py --size 64 --channels-last --bf16          # CPU: video_tiny, 2 x 17 x 64 x 64, + readers
    python bench/video.py --device cuda --arch openmagvit2_video_128 --channels-last --bf16 --compile --no-readers

The step is train.py's own (`openmagvit2.train.step.training_step`, task=video_tokenizer), not a copy: the config is
composed from conf/ through Hydra (`task=video_tokenizer video_model=<arch> loss=recipe_video`, the model, loss and
optimiser groups of conf/experiment/ucf101_128_large.yaml, whose data=video_wds is not needed: the clips are one
fixed random batch, data loading is not timed), and the models are built as `TokenizerTask.build` builds them:
`VideoTokenizer`, `TokenizerLoss` (per-frame L1; LPIPS off, `loss.perceptual_weight=0`, because its VGG weights
cannot be fetched here; it would run VGG16 on every frame of the clips and of their reconstructions), the 3D PatchGAN of
`build_discriminator(loss, video=True)`, then `build_gan_training` (EMA 0.999, Adam (0.5, 0.9) at 1e-4 for both
players, `train.channels_last` -> the tokenizer's `memory_format`, channels_last_3d; `train.compile` compiles the
generator; `train.precision` through `Precision`). One step: generator forward, L1 + 0.3 non-saturating GAN (3D
discriminator frozen) + 0.1 entropy + 0.25 commitment, then hinge + 0.05 LeCam on the detached reconstruction, the
finite check, both backward passes and Adam steps, the EMA update. The step index is `loss.disc_start` (0 in the
video recipe), so the adversarial terms are on. Default batch: the recipe's per-GPU 2 clips of 17 x 128 x 128.

Rows: eager fp32 (the baseline), and each requested variant as the config key train.py reads
(`--channels-last`: train.channels_last=true; `--bf16`: train.precision=bf16; `--compile`: train.compile=true),
plus, when more than one is requested, all of them together (the recipe's GPU setting). Time: every row runs
`--warmup` untimed steps (a compiled row one more: its first step compiles), then the rows take turns, one step each
per round, for `--repeats` rounds, so that a change in the machine's load hits all rows alike; each row reports its
fastest step (the least noisy estimate on a shared machine), its median, and its best time over the baseline's.
Peak memory (one more, untimed step per row): the bytes a row holds between steps (weights, gradients, Adam moments,
EMA copy, BatchNorm and LeCam buffers) plus the step's largest rise above them (torch.cuda.max_memory_allocated on
CUDA; on CPU the largest running sum of the profiler's allocation events, bench/lfq.py's `peak_bytes`); tensors only
(no allocator cache, no library scratch space). Entropy share: the LFQ's forward with its losses and the entropy
loss's backward, timed alone (fp32, best of `--repeats` + 1) on a latent of the step's shape (`b 18 t' h' w'`, e.g.
`2 18 5 16 16` for 17 x 128 x 128 clips), divided by each row's best step.

Readers: decode 17 consecutive frames from a random start of a synthetic 320x240, 25 fps MPEG-4 Part 2 `.avi` (the
UCF-101 format), each reader in this process on one thread; clips/s over `--reader-clips` random starts. A reader
whose package is not installed is listed as such, not measured.
"""
from __future__ import annotations

import argparse
import importlib.util
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
from lfq import peak_bytes  # noqa: E402
from train_step import bench_device, compose_run_config, device_name  # noqa: E402

from openmagvit2.losses import TokenizerLoss, build_discriminator  # noqa: E402
from openmagvit2.models import VideoTokenizer  # noqa: E402
from openmagvit2.models.video_config import VideoModelConfig, video_model_names, video_model_preset  # noqa: E402
from openmagvit2.train.precision import Precision  # noqa: E402
from openmagvit2.train.step import build_gan_training, training_step  # noqa: E402
from train import seed_everything  # noqa: E402

MIB = 2 ** 20
# conf/experiment/ucf101_128_large.yaml's model, loss and optimiser groups (tests/test_bench_video.py checks them
# against that file); its data (video_wds), cluster and schedule play no part in one step's cost.
RECIPE = ["task=video_tokenizer", "loss=recipe_video", "loss.perceptual_weight=0", "optim.lr=1e-4"]
BASELINE = {"precision": "fp32", "channels_last": False, "compile": False}


def compose_video_config(arch: str, batch: int, device: str, **train: object) -> DictConfig:
    """The training config of the video recipe for `arch` with `train.<key>=<value>` overrides (precision,
    channels_last, compile), its typed groups checked as train.py checks them."""
    overrides = [*RECIPE, f"video_model={arch}", f"train.batch_size={batch}", f"device={device}",
                 *(f"train.{key}={str(value).lower() if isinstance(value, bool) else value}"
                   for key, value in {**BASELINE, **train}.items())]
    cfg = compose_run_config(overrides)
    OmegaConf.to_object(cfg)  # the schemas' range checks (validate_config also wants video data, not needed here)
    return cfg


class VideoTrainingStep:
    """The models, loss, optimisers and EMA that train.py builds for task=video_tokenizer (as `TokenizerTask.build`,
    one process), and train.py's own step. Calling it runs one step on clips `b 3 t h w`."""

    def __init__(self, cfg: DictConfig, device: torch.device) -> None:
        self.cfg = cfg
        seed_everything(cfg.seed)  # every row starts from the same weights
        criterion = TokenizerLoss(cfg.loss).to(device)
        self.tokenizer = VideoTokenizer.from_config(cfg.video_model).to(device)
        discriminator = build_discriminator(cfg.loss, video=True).to(device)
        self.gan = build_gan_training(cfg, self.tokenizer, discriminator, criterion,
                                      Precision(cfg.train.precision, device), distributed=False)
        self.step_index = int(cfg.loss.disc_start)  # the adversarial phase: both GAN terms are on

    def __call__(self, clips: torch.Tensor) -> torch.Tensor:
        return training_step(self.gan, clips, self.step_index).g_loss.detach()

    def held_bytes(self) -> int:
        """Bytes of the tensors that live between steps: weights and their gradients, Adam moments, the EMA copy,
        the discriminator's BatchNorm statistics and the LeCam EMA (each storage counted once)."""
        gan = self.gan
        tensors = [*gan.tokenizer.parameters(), *gan.discriminator.parameters(), *gan.discriminator.buffers(),
                   *gan.criterion.buffers()]
        tensors += [p.grad for p in tensors if isinstance(p, torch.nn.Parameter) and p.grad is not None]
        if gan.ema is not None:
            tensors += [*gan.ema.module.parameters(), *gan.ema.module.buffers()]
        tensors += [value for optimizer in gan.optimizers for state in optimizer.state.values()
                    for value in state.values() if torch.is_tensor(value)]
        storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tensors}
        return sum(storages.values())


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed_s(fn: Callable[[], object], device: torch.device) -> float:
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def entropy_seconds(tokenizer: VideoTokenizer, clip_shape: tuple[int, ...], device: torch.device,
                    repeats: int) -> float:
    """Fastest LFQ forward with losses + entropy-loss backward on a latent `b k t' h' w'` of clips `b 3 t h w`."""
    batch, _, frames, height, width = clip_shape
    config, side = tokenizer.config, tokenizer.config.spatial_factor
    generator = torch.Generator().manual_seed(0)
    z = (torch.randn(batch, config.codebook_bits, config.latent_frames(frames), height // side, width // side,
                     generator=generator) * 0.05).to(device).requires_grad_()

    def entropy_step() -> None:
        tokenizer.quantizer(z, compute_losses=True).entropy_loss.backward()
        z.grad = None

    return min(timed_s(entropy_step, device) for _ in range(repeats))


def variants(args: argparse.Namespace) -> list[tuple[str, dict]]:
    """(row name, train.* overrides) of every row: the baseline first."""
    requested = [(flag, name, change) for flag, name, change in (
        (args.channels_last, "channels_last_3d", {"channels_last": True}),
        (args.bf16, "bf16 autocast", {"precision": "bf16"}),
        (args.compile, "torch.compile(generator)", {"compile": True})) if flag]
    rows = [("eager fp32 (baseline)", {})] + [(name, change) for _, name, change in requested]
    if len(requested) > 1:
        rows.append((" + ".join(name for _, name, _ in requested),
                     {key: value for _, _, change in requested for key, value in change.items()}))
    return rows


def check_clip_size(arch: str, frames: int, size: int) -> None:
    """One-sentence errors for clip sizes the architecture cannot take, before anything is built."""
    config = VideoModelConfig.from_mapping(video_model_preset(arch))
    if (frames - 1) % config.temporal_factor or size % config.spatial_factor:
        sys.exit(f"--frames {frames} --size {size}: {arch} takes {config.temporal_factor}k + 1 frames of a side "
                 f"divisible by {config.spatial_factor} (e.g. --frames {4 * config.temporal_factor + 1} --size 128)")


def train_rows(args: argparse.Namespace, arch: str, device: torch.device) -> list[dict]:
    clips = torch.rand(args.batch, 3, args.frames, args.size, args.size,
                       generator=torch.Generator().manual_seed(0)).to(device) * 2 - 1
    steps = [(name, VideoTrainingStep(compose_video_config(arch, args.batch, args.device, **change), device))
             for name, change in variants(args)]
    for name, step in steps:
        warm_start = time.perf_counter()
        for _ in range(args.warmup + int(step.cfg.train.compile)):
            step(clips)
        sync(device)
        print(f"warm-up {arch} {name}: {time.perf_counter() - warm_start:.1f} s", file=sys.stderr, flush=True)
    times: dict[str, list[float]] = {name: [] for name, _ in steps}
    for round_index in range(args.repeats):
        for name, step in steps:
            times[name].append(timed_s(lambda: step(clips), device))
        print(f"round {round_index + 1}: " + ", ".join(f"{name} {times[name][-1]:.2f} s" for name, _ in steps),
              file=sys.stderr, flush=True)
    entropy_s = entropy_seconds(steps[0][1].tokenizer, tuple(clips.shape), device, args.repeats + 1)
    base_s = min(times[steps[0][0]])
    rows = []
    for name, step in steps:
        peak = step.held_bytes() + peak_bytes(lambda: step(clips), lambda: None, args.device)
        best = min(times[name])
        rows.append({"arch": arch, "variant": name, "best_s": best, "median_s": statistics.median(times[name]),
                     "clips_per_s": args.batch / best, "vs_baseline": best / base_s, "peak_bytes": peak,
                     "entropy_s": entropy_s, "entropy_share": entropy_s / best})
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


def read_torchcodec(path: Path, start: int, length: int) -> np.ndarray:
    from torchcodec.decoders import VideoDecoder

    decoder = VideoDecoder(str(path), dimension_order="NHWC", num_ffmpeg_threads=1)
    return decoder.get_frames_in_range(start, start + length).data.numpy()


READERS = {"decode_clip (ours: pyav seek + decode, from bytes)": ("av", read_ours),
           "decord (get_batch)": ("decord", read_decord),
           "decord (all frames, upstream)": ("decord", read_decord_all), "opencv": ("cv2", read_opencv),
           "torchcodec (get_frames_in_range)": ("torchcodec", read_torchcodec)}


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
    if importlib.util.find_spec("torchvision") is not None:
        import torchvision
        import torchvision.io

        if not hasattr(torchvision.io, "read_video"):
            rows.append({"reader": "torchvision.io.read_video",
                         "note": f"absent from torchvision {torchvision.__version__}"})
    return rows


# --- driver ---------------------------------------------------------------------------------------------------------

def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", nargs="+", default=["video_tiny"], choices=video_model_names())
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--batch", type=int, default=2, help="clips per step (the recipe: 2 per device)")
    parser.add_argument("--frames", type=int, default=17)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps per row (a compiled row: one more)")
    parser.add_argument("--repeats", type=int, default=3, help="timed steps per row (rounds of the round robin)")
    parser.add_argument("--channels-last", action="store_true", help="add a train.channels_last=true row")
    parser.add_argument("--bf16", action="store_true", help="add a train.precision=bf16 row")
    parser.add_argument("--compile", action="store_true", help="add a train.compile=true row (slow to compile)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 is stabler on a loaded machine)")
    parser.add_argument("--no-train", action="store_true")
    parser.add_argument("--no-readers", action="store_true")
    parser.add_argument("--reader-clips", type=int, default=40)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    device = bench_device(args.device, args.threads)
    report: dict = {"train": [], "readers": []}
    if not args.no_train:
        for arch in args.arch:
            check_clip_size(arch, args.frames, args.size)
        for arch in args.arch:
            report["train"] += train_rows(args, arch, device)
        print(f"\nVideo training step (train.py's, task=video_tokenizer; G fwd+bwd+Adam, 3D D fwd+bwd+Adam, EMA), "
              f"batch {args.batch} x {args.frames} x {args.size} x {args.size}, LPIPS off, {device.type} "
              f"({device_name(device)}), torch {torch.__version__}; fastest of {args.repeats} interleaved steps")
        print("| model | variant | best s | median s | clips/s | time vs baseline | peak MiB | entropy ms | "
              "entropy share |")
        print("|---" * 9 + "|")
        for row in report["train"]:
            print(f"| {row['arch']} | {row['variant']} | {row['best_s']:.2f} | {row['median_s']:.2f} | "
                  f"{row['clips_per_s']:.2f} | {row['vs_baseline']:.2f}x | {row['peak_bytes'] / MIB:.0f} | "
                  f"{row['entropy_s'] * 1e3:.1f} | {row['entropy_share']:.1%} |")
        print("time vs baseline = best step / best eager fp32 step of the same model in this run (< 1 is faster)")
    if not args.no_readers:
        report["readers"] = reader_rows(args.reader_clips)
        print(f"\nVideo readers: 17 consecutive frames of a 320x240 MPEG-4 .avi, {args.reader_clips} random starts, "
              f"1 thread")
        print("| reader | clips/s | frames | note |")
        print("|---|---|---|---|")
        for row in report["readers"]:
            rate = f"{row['clips_per_s']:.1f}" if "clips_per_s" in row else "-"
            print(f"| {row['reader']} | {rate} | {tuple(row.get('shape', ()))} | {row['note']} |")
    return report


if __name__ == "__main__":
    main()
