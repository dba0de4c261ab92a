"""task=video_tokenizer end to end through `train.py` on real video shards (camera-motion MP4s of the bundled photos,
converted by make_video_shards): exact resume N + N == 2N, learning, checkpoints VideoTokenizer loads (and Tokenizer
refuses), inflation through train.init_from, and the config refusals that keep image and video runs apart."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from conftest import compose_config
from openmagvit2 import Tokenizer, VideoTokenizer
from openmagvit2.config import ConfigError
from openmagvit2.data.camera_motion import write_camera_motion_videos
from openmagvit2.data.make_video_shards import convert_videos
from openmagvit2.models.loading import CheckpointMismatchError
from openmagvit2.train.checkpoint import latest_checkpoint, load
from openmagvit2.train.resume import ResumeMismatch

pytestmark = pytest.mark.slow

VIDEO_FAST = ["experiment=video_demo", "debug=fast", "data.frames=5", "data.image_size=32", "data.num_workers=0",
              "data.shuffle_buffer=4", "train.batch_size=2", "train.eval_images=4", "loss.disc_start=1",
              "train.ema_decay=0.9"]


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Train shards of 2 photos x 3 videos and test shards of a held-out photo, 13 frames of 40 x 40 each."""
    root = tmp_path_factory.mktemp("video")
    for split, photos, seed in (("train", ["astronaut", "chelsea"], 0), ("test", ["coffee"], 1)):
        write_camera_motion_videos(root / split, photos, 3 if split == "train" else 2, 13, 40, seed=seed)
        convert_videos(str(root / split), str(root / "shards"), prefix=split, shard_size=2)
    return root / "shards"


def run(shards: Path, run_dir: Path, *overrides: str) -> int:
    from train import train

    return train(compose_config([*VIDEO_FAST, f"data.root={shards}", *overrides]), run_dir)


def test_video_resume_is_exact(shards: Path, tmp_path: Path) -> None:
    straight, split = tmp_path / "straight", tmp_path / "split"
    assert run(shards, straight, "train.max_steps=4", "train.ckpt_every=4") == 0
    assert run(shards, split, "train.max_steps=2", "train.ckpt_every=2") == 0
    assert run(shards, split, "train.max_steps=4", "train.ckpt_every=2") == 0
    assert "resumed from" in (split / "train.log").read_text()
    a, b = load(latest_checkpoint(straight)), load(latest_checkpoint(split))
    assert a["step"] == b["step"] == 4 and a["tokenizer_kind"] == "video_tokenizer"
    for part in ("generator", "generator_ema", "discriminator", "loss"):
        assert a[part].keys() == b[part].keys(), part
        for key, value in a[part].items():
            assert torch.equal(value, b[part][key]), f"{part}.{key} differs after resume"
    for optimizer in ("opt_g", "opt_d"):
        for index, state in a[optimizer]["state"].items():
            assert torch.equal(state["exp_avg"], b[optimizer]["state"][index]["exp_avg"]), optimizer
    assert a["data"] == b["data"]
    assert a["discriminator"]["main.0.weight"].ndim == 5  # the 3D PatchGAN


def test_video_training_learns_and_writes_loadable_checkpoints(shards: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    assert run(shards, run_dir, "train.max_steps=40", "train.ckpt_every=40", "train.eval_every=20",
               "train.image_every=40", "optim.lr=1e-3") == 0
    history = [json.loads(line) for line in (run_dir / "eval_history.jsonl").read_text().splitlines()]
    assert history[0]["step"] == 0 and history[-1]["step"] == 40
    assert history[-1]["val/psnr"] > history[0]["val/psnr"] + 1.0, history  # per-frame PSNR on held-out clips
    assert list((run_dir / "images").glob("step_*.png")), "no frame grid was written"
    log = (run_dir / "train.log").read_text()
    assert "video generator" in log and "3D discriminator" in log and "clips_per_s" in (run_dir / "metrics.jsonl"
                                                                                         ).read_text()

    checkpoint = latest_checkpoint(run_dir)
    video = VideoTokenizer.from_checkpoint(checkpoint)  # the EMA weights, in eval mode
    clips = torch.rand(1, 3, 5, 32, 32) * 2 - 1
    assert video(clips).reconstruction.shape == clips.shape
    with pytest.raises(CheckpointMismatchError, match="holds a video tokenizer: load it with VideoTokenizer"):
        Tokenizer.from_checkpoint(checkpoint)


def test_init_from_an_image_checkpoint_inflates_it(shards: Path, tmp_path: Path) -> None:
    from test_video_loading import IMAGE_TINY, randomised, released_layout

    image_raw, image_ema = randomised(Tokenizer(**IMAGE_TINY), 3), randomised(Tokenizer(**IMAGE_TINY), 4)
    torch.save(released_layout(image_raw, image_ema), tmp_path / "image.ckpt")
    run_dir = tmp_path / "run"
    assert run(shards, run_dir, "train.max_steps=1", "train.ckpt_every=1", f"train.init_from={tmp_path / 'image.ckpt'}",
               "train.ema_decay=null", "optim.lr=1e-12", "optim.disc_lr=1e-12") == 0
    assert "inflated from the image tokenizer's ema weights" in (run_dir / "train.log").read_text()
    trained = VideoTokenizer.from_checkpoint(latest_checkpoint(run_dir), use_ema=False)
    inflated = VideoTokenizer.inflate_from(image_ema)
    for key, value in inflated.state_dict().items():  # one step at lr 1e-12 leaves the inflated weights in place
        torch.testing.assert_close(trained.state_dict()[key], value, rtol=0, atol=1e-9, msg=key)


def test_a_resume_with_another_video_architecture_is_refused(shards: Path, tmp_path: Path) -> None:
    assert run(shards, tmp_path, "train.max_steps=1", "train.ckpt_every=1") == 0
    with pytest.raises(ResumeMismatch, match="video_model.ch=32 in the checkpoint but 64 now"):
        run(shards, tmp_path, "train.max_steps=2", "video_model.ch=64")


def test_image_data_for_a_video_model_and_the_reverse_are_refused(shards: Path, tmp_path: Path) -> None:
    from openmagvit2.config import validate_config

    with pytest.raises(ConfigError, match="task=video_tokenizer trains on video clips but data=sample"):
        validate_config(compose_config(["experiment=demo", "debug=fast", "task=video_tokenizer"]))
    with pytest.raises(ConfigError, match="holds video clips but task=tokenizer"):
        validate_config(compose_config([*VIDEO_FAST, f"data.root={shards}", "task=tokenizer"]))
    with pytest.raises(ConfigError, match="data.frames=7"):
        validate_config(compose_config([*VIDEO_FAST, f"data.root={shards}", "data.frames=7"]))


def test_two_rank_torchrun_resume_is_exact(shards: Path, tmp_path: Path) -> None:
    """2 ranks under torchrun (gloo): the checkpoint holds each rank's data state, and N + N == 2N bitwise."""
    from conftest import run_entry_point

    def torchrun(run_dir: Path, max_steps: int, port: int) -> None:
        result = run_entry_point(["-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={port}",
                                  "train.py", *VIDEO_FAST, f"data.root={shards}", "train.batch_size=1",
                                  f"train.max_steps={max_steps}", "train.ckpt_every=2", f"hydra.run.dir={run_dir}"],
                                 timeout=600)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    torchrun(tmp_path / "straight", 4, 29561)
    torchrun(tmp_path / "split", 2, 29562)
    torchrun(tmp_path / "split", 4, 29563)
    a, b = load(latest_checkpoint(tmp_path / "straight")), load(latest_checkpoint(tmp_path / "split"))
    assert a["step"] == b["step"] == 4 and len(a["data"]) == 2 and a["data"] == b["data"]
    for part in ("generator", "generator_ema", "discriminator", "loss"):
        for key, value in a[part].items():
            assert torch.equal(value, b[part][key]), f"{part}.{key} differs after a 2-rank resume"
