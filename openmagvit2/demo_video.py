"""`make demo-video`: the causal video tokenizer on a CPU in a few minutes, end to end with the real entry points.

    python -m openmagvit2.demo_video [run_dir=runs/demo-video-<time>] [any train.py override ...]

1. videos: smooth pans and zooms over the photos bundled with scikit-image (real pixels, synthetic camera motion),
   written as real MP4 files in UCF-101's `<class>/<video>` layout; the held-out photo's videos are the test split;
2. `python -m openmagvit2.data.make_video_shards` on both splits (the converter users run on UCF-101);
3. `train.py experiment=video_demo` (video_tiny, task=video_tokenizer) on those shards;
4. `eval.py` on the test clips with the final EMA weights: per-frame PSNR/SSIM and codebook usage, a frame grid and a
   side-by-side GIF and MP4 of originals against reconstructions;
5. prints PSNR at step 0 next to the end. Exits non-zero when PSNR did not rise by at least 1 dB.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

from openmagvit2.demo import demo_arguments, report_psnr_gain, run_entry
from openmagvit2.paths import entry_script

VIDEO_FRAMES, VIDEO_SIZE, VIDEOS_PER_PHOTO = 24, 56, 4  # 56 px videos, cropped to the experiment's 48 px clips
TEST_PHOTOS = ["coffee"]  # held out, as in `make demo`


def make_shards(run_dir: Path) -> Path:
    """Camera-motion videos of the training photos (train) and the held-out photo (test), then their shards."""
    from openmagvit2.config import SampleDataConfig
    from openmagvit2.data.camera_motion import write_camera_motion_videos

    shards = run_dir / "shards"
    for split, photos in (("train", SampleDataConfig().train_photos), ("test", TEST_PHOTOS)):
        videos = write_camera_motion_videos(run_dir / "videos" / split, photos, VIDEOS_PER_PHOTO, VIDEO_FRAMES,
                                            VIDEO_SIZE, seed=0 if split == "train" else 1)
        print(f"wrote {len(videos)} {split} videos under {run_dir / 'videos' / split}", flush=True)
        run_entry(["-m", "openmagvit2.data.make_video_shards", "--src", str(run_dir / "videos" / split), "--out",
              str(shards), "--prefix", split, "--shard-size", "4"])
    return shards


def main(argv: list[str]) -> int:
    run_dir, overrides = demo_arguments(argv, f"runs/demo-video-{time.strftime('%Y%m%d-%H%M%S')}")
    shards = make_shards(run_dir)
    train_dir, eval_dir = run_dir / "train", run_dir / "eval"
    run_entry([str(entry_script("train")), "experiment=video_demo", f"data.root={shards}",
               f"hydra.run.dir={train_dir}", *overrides])
    checkpoints = sorted((train_dir / "checkpoints").glob("step_*.pt"))
    run_entry([str(entry_script("eval")), f"ckpt={checkpoints[-1]}", "data=video_wds", f"data.root={shards}",
               "data.frames=9", "data.image_size=48", "data.num_workers=0", "metrics=[psnr,ssim,usage]",
               "batch_size=4", "grid_images=2", f"hydra.run.dir={eval_dir}"])
    media = ", ".join(str(eval_dir / name) for name in ("reconstructions.png", "reconstructions.gif",
                                                        "reconstructions.mp4") if (eval_dir / name).exists())
    return report_psnr_gain(train_dir, eval_dir, f"demo-video: video_tiny, 9-frame test clips of a held-out photo "
                            f"({run_dir})", "PSNR per frame (dB)",
                            {"videos": str(run_dir / "videos"), "shards": str(shards),
                             "checkpoints": str(train_dir / "checkpoints"), "originals | reconstructions": media,
                             "training frame grids": str(train_dir / "images")})


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
