"""eval.py on video data: a released-layout video .ckpt on camera-motion shards gives per-frame metrics, a frame grid
and side-by-side GIF/MP4; the reference protocol pads the train clips; missing I3D weights and image-only options
are refused in one line before any work."""
from __future__ import annotations

import json
from pathlib import Path

import av
import pytest
import torch

from conftest import run_entry_point
from openmagvit2 import VideoTokenizer
from openmagvit2.data.camera_motion import write_camera_motion_videos
from openmagvit2.data.make_video_shards import convert_videos
from openmagvit2.models import video_model_preset
from test_video_loading import randomised, released_layout

COMMON = ["data=video_wds", "data.frames=5", "data.image_size=32", "data.num_workers=0", "batch_size=2",
          "logger.mode=disabled"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Shards (3 train videos, 2 test videos of 9 frames at 40 px) and a released-layout video_tiny .ckpt."""
    root = tmp_path_factory.mktemp("video_eval")
    for split, photos, count in (("train", ["astronaut", "chelsea", "rocket"], 1), ("test", ["coffee"], 2)):
        write_camera_motion_videos(root / split, photos, count, 9, 40, seed=0)
        convert_videos(str(root / split), str(root / "shards"), prefix=split, shard_size=2)
    torch.manual_seed(0)
    tiny = video_model_preset("video_tiny")
    torch.save(released_layout(randomised(VideoTokenizer(**tiny), 1), randomised(VideoTokenizer(**tiny), 2)),
               root / "video.ckpt")
    return root / "shards", root / "video.ckpt"


def test_per_frame_metrics_grid_and_side_by_side_media(setup: tuple[Path, Path], tmp_path: Path) -> None:
    shards, ckpt = setup
    result = run_entry_point(["eval.py", f"ckpt={ckpt}", f"data.root={shards}", *COMMON, "metrics=[psnr,ssim,usage]",
                              "grid_images=2", f"hydra.run.dir={tmp_path}"])
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    saved = json.loads((tmp_path / "metrics.json").read_text())
    metrics = saved.get("metrics", saved)
    assert metrics["num_images"] == 2 and metrics["num_frames"] == 10  # both test clips, 5 frames each
    assert 0 < metrics["psnr"] < 60 and "per frame" in result.stdout
    # The EMA weights (use_ema defaults to true) reconstruct the clips the metrics saw.
    with av.open(str(tmp_path / "reconstructions.mp4")) as container:
        frames = [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]
    assert len(frames) == 5 and frames[0].shape[1] >= 2 * 32  # original | reconstruction, side by side
    assert (tmp_path / "reconstructions.gif").stat().st_size > 0 and (tmp_path / "reconstructions.png").exists()


def test_reference_protocol_pads_the_train_clips(setup: tuple[Path, Path], tmp_path: Path) -> None:
    shards, ckpt = setup
    result = run_entry_point(["eval.py", f"ckpt={ckpt}", f"data.root={shards}", *COMMON, "metrics=[psnr]",
                              "protocol=reference", "pad_to=7", "grid_images=0", f"hydra.run.dir={tmp_path}"])
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved.get("metrics", saved)["num_images"] == 7 and saved["protocol"] == "reference"


@pytest.mark.parametrize("video, extra, message", [
    (True, [], "i3d_pretrained_400.pt"),  # the default video metrics include rFVD: its I3D file is named
    (True, ["metrics=[rfid]"], "rfvd"),  # rFID on clips points to rFVD
    (False, ["data=sample", "data.image_size=32", "protocol=reference"], "protocol=reference"),  # images
])
def test_refusals_are_one_line_before_any_work(setup: tuple[Path, Path], tmp_path: Path, video: bool,
                                              extra: list[str], message: str) -> None:
    shards, ckpt = setup
    data = [f"data.root={shards}", *COMMON] if video else []
    result = run_entry_point(["eval.py", f"ckpt={ckpt}", *data, *extra, f"hydra.run.dir={tmp_path}"],
                             env={"TORCH_HOME": str(tmp_path / "empty_cache")})
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-2000:]
    assert message in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "metrics.json").exists()


@pytest.mark.parametrize("name, data, message", [
    ("hf://TencentARC/Open-MAGVIT2-Tokenizer-262144-Video", ["data=sample"], "holds a video tokenizer but data=sample"),
    ("hf://TencentARC/Open-MAGVIT2-Tokenizer-128-resolution", ["data=video_wds"],
     "holds an image tokenizer but data=video_wds holds clips"),
])
def test_a_released_name_of_the_other_kind_is_refused_before_any_download(setup: tuple[Path, Path], tmp_path: Path,
                                                                         name: str, data: list[str],
                                                                         message: str) -> None:
    shards, _ = setup
    extra = [f"data.root={shards}"] if data == ["data=video_wds"] else []
    result = run_entry_point(["eval.py", f"ckpt={name}", *data, *extra, f"hydra.run.dir={tmp_path}"],
                             env={"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "empty_hub")})
    assert result.returncode == 2 and message in result.stderr, result.stderr[-2000:]


def test_an_image_checkpoint_on_video_data_is_refused_in_one_line(setup: tuple[Path, Path], tmp_path: Path) -> None:
    from openmagvit2 import Tokenizer
    from test_video_loading import IMAGE_TINY

    shards, _ = setup
    torch.save(released_layout(randomised(Tokenizer(**IMAGE_TINY), 1), randomised(Tokenizer(**IMAGE_TINY), 2)),
               tmp_path / "image.ckpt")
    result = run_entry_point(["eval.py", f"ckpt={tmp_path / 'image.ckpt'}", f"data.root={shards}", *COMMON,
                              "metrics=[psnr]", f"hydra.run.dir={tmp_path / 'eval'}"])
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert "holds an image tokenizer" in result.stderr and "VideoTokenizer.inflate_from" in result.stderr
