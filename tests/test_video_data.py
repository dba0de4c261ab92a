"""Video data: `<class>/<video>.avi` folder -> WebDataset shards -> clips of 17 consecutive frames in [-1, 1]."""
from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch

av = pytest.importorskip("av")

from openmagvit2.data.make_video_shards import convert_videos  # noqa: E402
from openmagvit2.data.video_clips import (ShortVideoError, VideoClipShards, clip_to_tensor, decode_clip,  # noqa: E402
                                          scan_video_folder)

STEP = 10  # frame i is a flat grey of 10 i, so a frame's index can be read back from its mean


def write_video(path: Path, frames: int, width: int = 48, height: int = 32) -> None:
    """An MPEG-4 Part 2 .avi (UCF-101's codec) at 25 fps with a short GOP, frame i a flat grey of STEP * i."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=25)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.codec_context.gop_size = 6
        for i in range(frames):
            image = np.full((height, width, 3), STEP * i, dtype=np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def frame_indices(clip: np.ndarray) -> list[int]:
    return [round(float(frame.mean()) / STEP) for frame in clip]


@pytest.fixture
def video_folder(tmp_path: Path) -> Path:
    root = tmp_path / "train"
    write_video(root / "ApplyEyeMakeup" / "v_ApplyEyeMakeup_g01_c01.avi", 25)
    write_video(root / "ApplyEyeMakeup" / "v_ApplyEyeMakeup_g01_c02.avi", 20)
    write_video(root / "Archery" / "v_Archery_g01_c01.avi", 24)
    write_video(root / "Archery" / "v_Archery_g01_c02.avi", 10)  # too short for a 17-frame clip
    return root


def test_decoding_17_consecutive_frames(video_folder: Path) -> None:
    data = (video_folder / "ApplyEyeMakeup" / "v_ApplyEyeMakeup_g01_c01.avi").read_bytes()
    centre = decode_clip(data, 17)
    assert centre.shape == (17, 32, 48, 3) and centre.dtype == np.uint8
    assert frame_indices(centre) == list(range(4, 21))  # (25 - 17) // 2 = 4
    assert frame_indices(decode_clip(data, 17, start=7)) == list(range(7, 24))  # seeks past a keyframe (GOP 6)
    starts = set()
    for seed in range(8):
        clip = decode_clip(data, 17, random.Random(seed))
        indices = frame_indices(clip)
        assert indices == list(range(indices[0], indices[0] + 17))
        starts.add(indices[0])
    assert len(starts) > 1 and max(starts) <= 8
    with pytest.raises(ShortVideoError, match="10 decodable frames"):
        decode_clip((video_folder / "Archery" / "v_Archery_g01_c02.avi").read_bytes(), 17)


def test_clip_to_tensor_resizes_the_short_side_and_crops() -> None:
    frames = np.zeros((17, 240, 320, 3), dtype=np.uint8)
    frames[..., 0] = 255
    clip = clip_to_tensor(frames, 128, random.Random(0))
    assert clip.shape == (3, 17, 128, 128)
    torch.testing.assert_close(clip[0], torch.ones(17, 128, 128))
    torch.testing.assert_close(clip[1], -torch.ones(17, 128, 128))


def test_folder_to_shards_to_clips(video_folder: Path, tmp_path: Path) -> None:
    listing = scan_video_folder(str(video_folder))
    assert listing.classes == ["ApplyEyeMakeup", "Archery"] and len(listing) == 4
    index = convert_videos(str(video_folder), str(tmp_path / "shards"), shard_size=2, seed=0)
    assert index["total"] == 4 and len(index["shards"]) == 2
    assert json.loads((tmp_path / "shards" / "train.json").read_text())["kind"] == "video"
    urls = [str(tmp_path / "shards" / shard["name"]) for shard in index["shards"]]

    evaluation = VideoClipShards(urls, frames=17, size=32, train=False)
    items = list(evaluation)
    assert len(items) == 3 and evaluation.skipped == 1  # the 10-frame video is skipped
    assert sorted(label for _, label in items) == [0, 0, 1]
    for clip, _ in items:
        assert clip.shape == (3, 17, 32, 32) and clip.min() >= -1 and clip.max() <= 1
        levels = ((clip.mean(dim=(0, 2, 3)) + 1) * 127.5 / STEP).round()
        assert torch.equal(levels.diff(), torch.ones(16))  # consecutive frames

    loader = torch.utils.data.DataLoader(VideoClipShards(urls, size=32, train=True, seed=1), batch_size=3)
    clips, labels = next(iter(loader))
    assert clips.shape == (3, 3, 17, 32, 32) and labels.shape == (3,)
    # Re-running the converter resumes over finished shards; another plan is refused.
    assert convert_videos(str(video_folder), str(tmp_path / "shards"), shard_size=2, seed=0) == index
    with pytest.raises(ValueError, match="made from other inputs or settings"):
        convert_videos(str(video_folder), str(tmp_path / "shards"), shard_size=3, seed=0)


def test_broken_videos_are_skipped_and_counted_by_the_converter(video_folder: Path, tmp_path: Path) -> None:
    import shutil

    source = tmp_path / "videos"
    shutil.copytree(video_folder, source)
    good = next((source / "Archery").iterdir())
    (source / "Archery" / "broken.avi").write_bytes(good.read_bytes()[:200])  # a truncated download
    (source / "Archery" / "text.avi").write_bytes(b"not a video\n")
    index = convert_videos(str(source), str(tmp_path / "shards"), shard_size=2, seed=0)
    assert index["skipped_corrupt"] == 2 and index["total"] == 4
    assert sorted(Path(path).name for path, _ in index["skipped"]) == ["broken.avi", "text.avi"]
