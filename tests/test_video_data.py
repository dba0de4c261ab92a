"""Video data: `<class>/<video>.avi` folder -> WebDataset shards -> `data=video_wds` clips of 17 consecutive frames
in [-1, 1] (exact resume, ranks, skips, the centre and reference val protocols), and the camera-motion videos."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

av = pytest.importorskip("av")

from conftest import compose_group  # noqa: E402
from openmagvit2.config import DATA_SOURCES, ConfigError, data_config  # noqa: E402
from openmagvit2.data import DataError, build_train_loader, build_val_loader  # noqa: E402
from openmagvit2.data import make_video_shards  # noqa: E402
from openmagvit2.data.camera_motion import camera_path, write_camera_motion_videos  # noqa: E402
from openmagvit2.data.camera_motion import main as camera_motion_main  # noqa: E402
from openmagvit2.data.decode import CorruptImageError  # noqa: E402
from openmagvit2.data.make_video_shards import convert_videos  # noqa: E402
from openmagvit2.data.video_clips import (ShortVideoError, decode_clip, reference_copies,  # noqa: E402
                                          resize_crop_clip, scan_video_folder)

STEP = 9  # frame i has a flat band of grey 9 i on top, so a frame's index can be read back from it
SIZE = 16  # clip side in the loader tests: 48x32 videos -> 24x16 -> 16x16 crops (9 horizontal positions)
NUM_VIDEOS = 12


def write_video(path: Path, frames: int, width: int = 48, height: int = 32, flat: bool = True, identity: int = 0,
                ) -> None:
    """An MPEG-4 Part 2 .avi (UCF-101's codec) at 25 fps with a short GOP. Frame i is a flat grey of STEP * i
    (`flat`), or has that grey in its top 8 rows above a texture that moves with i (so that crops differ)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    x = np.arange(width)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=25)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.codec_context.gop_size = 6
        stream.bit_rate = 8_000_000  # near-lossless at this size: the grey levels survive
        for i in range(frames):
            image = np.full((height, width, 3), STEP * i, dtype=np.uint8)
            if not flat:
                image[8:, :, 0] = ((5 * x + 7 * i) % 200)[None]
                image[8:, :, 1] = 40 + 10 * identity
                image[8:, :, 2] = (4 * x)[None]
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def frame_indices(clip: np.ndarray) -> list[int]:
    return [round(float(frame.mean()) / STEP) for frame in clip]


def clip_frame_indices(clip: torch.Tensor) -> list[int]:
    """Frame indices of a float `3 t s s` clip in [-1, 1] of a textured video, from its top band."""
    band = (clip[:, :, :2] + 1) * 127.5
    return [round(float(level) / STEP) for level in band.mean(dim=(0, 2, 3))]


def video_frames(label: int) -> int:
    return 20 + label % 8


@pytest.fixture
def video_folder(tmp_path: Path) -> Path:
    root = tmp_path / "train"
    write_video(root / "ApplyEyeMakeup" / "v_ApplyEyeMakeup_g01_c01.avi", 25)
    write_video(root / "ApplyEyeMakeup" / "v_ApplyEyeMakeup_g01_c02.avi", 20)
    write_video(root / "Archery" / "v_Archery_g01_c01.avi", 24)
    write_video(root / "Archery" / "v_Archery_g01_c02.avi", 10)  # too short for a 17-frame clip
    return root


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    """12 textured videos, each its own class (the label names the video), 20-27 frames, in 6 shards of 2."""
    root = tmp_path_factory.mktemp("video_shards")
    for label in range(NUM_VIDEOS):
        write_video(root / "train" / f"c{label:02d}" / f"v{label:02d}.avi", video_frames(label), flat=False,
                    identity=label)
    convert_videos(str(root / "train"), str(root / "shards"), shard_size=2, seed=0)
    return root / "shards"


@pytest.fixture(scope="module")
def messy_shards(tmp_path_factory) -> Path:
    """6 good videos, one too short and one broken (packed unchecked, as a converter without the check would)."""
    root = tmp_path_factory.mktemp("messy_video_shards")
    for label in range(6):
        write_video(root / "train" / f"c{label}" / f"v{label}.avi", 21, flat=False, identity=label)
    write_video(root / "train" / "c6" / "short.avi", 10, flat=False)
    good = (root / "train" / "c0" / "v0.avi").read_bytes()
    (root / "train" / "c7").mkdir()
    (root / "train" / "c7" / "broken.avi").write_bytes(good[:200])  # a truncated download
    patch = pytest.MonkeyPatch()
    patch.setattr(make_video_shards, "video_corruption", lambda data: None)
    try:
        convert_videos(str(root / "train"), str(root / "shards"), shard_size=3, seed=0)
    finally:
        patch.undo()
    return root / "shards"


def video_cfg(shards: Path, **overrides) -> dict:
    cfg = {"name": "video_wds", "root": str(shards), "val_shards": None, "image_size": SIZE, "frames": 17,
           "num_workers": 0, "shuffle_buffer": 3}
    cfg.update(overrides)
    return cfg


def take(loader, count: int) -> list:
    iterator = iter(loader)
    return [next(iterator) for _ in range(count)]


def test_decoding_17_consecutive_frames(video_folder: Path) -> None:
    data = (video_folder / "ApplyEyeMakeup" / "v_ApplyEyeMakeup_g01_c01.avi").read_bytes()
    centre = decode_clip(data, 17)
    assert centre.shape == (17, 32, 48, 3) and centre.dtype == np.uint8
    assert frame_indices(centre) == list(range(4, 21))  # (25 - 17) // 2 = 4
    assert frame_indices(decode_clip(data, 17, start=7)) == list(range(7, 24))  # seeks past a keyframe (GOP 6)
    starts = set()
    for seed in range(8):
        clip = decode_clip(data, 17, np.random.default_rng(seed))
        indices = frame_indices(clip)
        assert indices == list(range(indices[0], indices[0] + 17))
        starts.add(indices[0])
    assert len(starts) > 1 and max(starts) <= 8
    with pytest.raises(ShortVideoError, match="10 decodable frames") as short:
        decode_clip((video_folder / "Archery" / "v_Archery_g01_c02.avi").read_bytes(), 17)
    assert short.value.counter == "skipped_short"
    with pytest.raises(CorruptImageError, match="cannot decode the video"):
        decode_clip(b"not a video", 17)


def test_resize_crop_clip_resizes_the_short_side_to_uint8_and_crops() -> None:
    frames = np.zeros((17, 240, 320, 3), dtype=np.uint8)
    frames[..., 0] = 255
    frames[:, :, 160:, 1] = 200  # right half: crops and flips show where they are
    clip = resize_crop_clip(frames, 128, np.random.default_rng(0))
    assert clip.shape == (3, 17, 128, 128) and clip.dtype == torch.uint8  # 320x240 -> 170x128 (upstream's int())
    assert torch.all(clip[0] == 255) and torch.all(clip[2] == 0)
    centre = resize_crop_clip(frames, 128)
    assert torch.all(centre[1, :, :, :63] == 0) and torch.all(centre[1, :, :, 65:] == 200)  # centre: left = 21
    ramp = np.broadcast_to(np.arange(64, dtype=np.uint8)[None, None, :, None] * 4, (1, 32, 64, 3))
    half = resize_crop_clip(np.ascontiguousarray(ramp), 16)  # 64x32 -> 32x16, rounded, not truncated
    expected = torch.nn.functional.interpolate(torch.from_numpy(ramp[..., 0].astype(np.float32))[None], size=(16, 32),
                                               mode="bilinear", align_corners=False).round()[0, 0, :, 8:24]
    assert torch.equal(half[0, 0].float(), expected)
    flips = [resize_crop_clip(frames, 128, np.random.default_rng(seed), hflip=True) for seed in range(6)]
    plain = [resize_crop_clip(frames, 128, np.random.default_rng(seed)) for seed in range(6)]
    assert any(torch.equal(a, b.flip(-1)) and not torch.equal(a, b) for a, b in zip(flips, plain))


def test_folder_to_shards_and_converter_resume(video_folder: Path, tmp_path: Path) -> None:
    listing = scan_video_folder(str(video_folder))
    assert listing.classes == ["ApplyEyeMakeup", "Archery"] and len(listing) == 4
    index = convert_videos(str(video_folder), str(tmp_path / "shards"), shard_size=2, seed=0)
    assert index["total"] == 4 and len(index["shards"]) == 2
    assert json.loads((tmp_path / "shards" / "train.json").read_text())["kind"] == "video"
    # Re-running the converter resumes over finished shards; another plan is refused.
    assert convert_videos(str(video_folder), str(tmp_path / "shards"), shard_size=2, seed=0) == index
    with pytest.raises(ValueError, match="made from other inputs or settings"):
        convert_videos(str(video_folder), str(tmp_path / "shards"), shard_size=3, seed=0)


def test_broken_videos_are_skipped_and_counted_by_the_converter(video_folder: Path, tmp_path: Path) -> None:
    source = tmp_path / "videos"
    shutil.copytree(video_folder, source)
    good = next((source / "Archery").iterdir())
    (source / "Archery" / "broken.avi").write_bytes(good.read_bytes()[:200])  # a truncated download
    (source / "Archery" / "text.avi").write_bytes(b"not a video\n")
    index = convert_videos(str(source), str(tmp_path / "shards"), shard_size=2, seed=0)
    assert index["skipped_corrupt"] == 2 and index["total"] == 4
    assert sorted(Path(path).name for path, _ in index["skipped"]) == ["broken.avi", "text.avi"]


def test_config_takes_4k_plus_1_frames_and_says_it_is_video(shards: Path, monkeypatch) -> None:
    with pytest.raises(ConfigError, match=r"data\.frames=16 is invalid: expected 4k \+ 1 .*17.*9.*5"):
        data_config(video_cfg(shards, frames=16))
    monkeypatch.setenv("VIDEO_SHARDS", str(shards))
    cfg = compose_group("data", "video_wds")
    assert cfg.shards == str(shards / "train.json") and cfg.val_shards == str(shards / "test.json")
    with pytest.raises(ConfigError, match=r"data\.val_shards: no shard index .*test\.json.*make_video_shards"):
        data_config(cfg)
    cfg.val_shards = None
    data = data_config(cfg)
    assert (data.frames, data.image_size, data.is_video) == (17, 128, True)
    assert [name for name, source in DATA_SOURCES.items() if source.is_video] == ["video_wds"]
    assert not data_config({"name": "sample"}).is_video


def test_train_loader_yields_float_clips_of_consecutive_frames(shards: Path) -> None:
    loader = build_train_loader(video_cfg(shards), 3, 0, 1, seed=0, labels=True)
    assert loader.epoch_size == NUM_VIDEOS // 3
    batches = take(loader, loader.epoch_size)
    seen = []
    for clips, labels in batches:
        assert clips.shape == (3, 3, 17, SIZE, SIZE) and clips.dtype == torch.float32
        assert clips.min() >= -1 and clips.max() <= 1
        for clip, label in zip(clips, labels.tolist()):
            indices = clip_frame_indices(clip)
            assert indices == list(range(indices[0], indices[0] + 17))
            assert 0 <= indices[0] <= video_frames(label) - 17
            seen.append(label)
    assert sorted(seen) == list(range(NUM_VIDEOS))  # each video once per epoch


@pytest.mark.parametrize("workers", [0, 2])
def test_resume_after_n_batches_gives_the_uninterrupted_runs_next_n(shards: Path, workers: int) -> None:
    cfg, batches = video_cfg(shards, num_workers=workers), 4  # 6 batches per epoch: the resume crosses an epoch end
    straight = take(build_train_loader(cfg, 2, 0, 1, seed=5), 2 * batches)
    first = build_train_loader(cfg, 2, 0, 1, seed=5)
    head = take(first, batches)
    resumed = build_train_loader(cfg, 2, 0, 1, seed=5)
    resumed.load_state_dict(first.state_dict())
    tail = take(resumed, batches)
    assert all(torch.equal(a, b) for a, b in zip(head + tail, straight))
    assert not torch.equal(straight[0], straight[6])  # a new epoch: other starts and crops


def test_two_ranks_see_disjoint_videos(shards: Path) -> None:
    seen = []
    for rank in range(2):
        # 2 ranks x 2 workers = 4 readers of 3 videos each, one batch of 3 each (a batch of slack per reader otherwise)
        loader = build_train_loader(video_cfg(shards, num_workers=2), 3, rank, 2, seed=1, labels=True)
        seen.append([label for _, labels in take(loader, loader.epoch_size) for label in labels.tolist()])
    assert len(seen[0]) == len(seen[1]) == NUM_VIDEOS // 2
    assert not set(seen[0]) & set(seen[1]) and sorted(seen[0] + seen[1]) == list(range(NUM_VIDEOS))


def test_broken_and_short_videos_are_skipped_and_counted(messy_shards: Path) -> None:
    loader = build_train_loader(video_cfg(messy_shards), 2, 0, 1, seed=0)
    assert all(clips.shape == (2, 3, 17, SIZE, SIZE) for clips in take(loader, loader.epoch_size))
    stats = loader.stats()
    assert stats["skipped_corrupt"] == 1 and stats["skipped_short"] == 1
    val = build_val_loader(video_cfg(messy_shards, val_shards=str(messy_shards / "train.json")), 4, 0, 1)
    assert sum(len(clips) for clips in val) == 6
    assert val.stats() == {"images": 6, "skipped_corrupt": 1, "missing_files": 0, "skipped_too_large": 0,
                           "skipped_aspect": 0, "skipped_short": 1}
    strict = build_train_loader(video_cfg(messy_shards, max_skip_rate=0.1, skip_window=4), 2, 0, 1, seed=0)
    with pytest.raises(DataError, match=r"unusable .*skipped_short.*above data\.max_skip_rate=0\.1"):
        take(strict, 2 * strict.epoch_size)


def test_val_loader_centre_clips_once_across_ranks(shards: Path) -> None:
    cfg = video_cfg(shards, val_shards=str(shards / "train.json"), num_workers=2)
    parts = [list(build_val_loader(cfg, 4, rank, 2, labels=True)) for rank in range(2)]
    labels = [[label for _, batch in part for label in batch.tolist()] for part in parts]
    assert not set(labels[0]) & set(labels[1]) and sorted(labels[0] + labels[1]) == list(range(NUM_VIDEOS))
    for clips, batch in parts[0] + parts[1]:
        assert clips.shape[1:] == (3, 17, SIZE, SIZE)
        for clip, label in zip(clips, batch.tolist()):
            start = (video_frames(label) - 17) // 2
            assert clip_frame_indices(clip) == list(range(start, start + 17))
    again = list(build_val_loader(cfg, 4, 0, 2, labels=True))
    assert all(torch.equal(a, b) and torch.equal(x, y) for (a, x), (b, y) in zip(again, parts[0]))
    subset = build_val_loader(cfg, 4, 0, 1, max_images=5)
    assert sum(len(clips) for clips in subset) == 5 == subset.stats()["images"]


def test_reference_protocol_pads_with_seeded_duplicates_and_crops(shards: Path) -> None:
    cfg = video_cfg(shards, val_shards=str(shards / "train.json"), num_workers=2)

    def run(rank: int, world_size: int, **options) -> tuple[torch.Tensor, list[int]]:
        batches = list(build_val_loader(cfg, 4, rank, world_size, labels=True, **options))
        return torch.cat([clips for clips, _ in batches]), [label for _, b in batches for label in b.tolist()]

    parts = [run(rank, 2, protocol="reference", pad_to=20) for rank in range(2)]
    labels = parts[0][1] + parts[1][1]
    assert len(labels) == 20 and set(labels) == set(range(NUM_VIDEOS))
    assert max(labels.count(label) for label in labels) == 2  # 8 duplicates, drawn without replacement
    again = run(0, 2, protocol="reference", pad_to=20)
    assert torch.equal(again[0], parts[0][0]) and again[1] == parts[0][1]
    centre = dict(zip(*reversed(run(0, 1))))
    reference = list(zip(parts[0][1] + parts[1][1], torch.cat([parts[0][0], parts[1][0]])))
    assert any(not torch.equal(clip, centre[label]) for label, clip in reference)  # random crops
    for label, clip in reference:  # the centre frames all the same
        start = (video_frames(label) - 17) // 2
        assert clip_frame_indices(clip) == list(range(start, start + 17))
    assert reference_copies([2, 0, 3], 8) == reference_copies([2, 0, 3], 8)
    assert sum(reference_copies([2, 0, 3], 8).values()) == 3 and reference_copies([2, 3], 4) == {}
    with pytest.raises(ValueError, match="max_images=5 does not combine with protocol='reference'"):
        build_val_loader(cfg, 4, 0, 1, max_images=5, protocol="reference")
    with pytest.raises(ValueError, match="protocol='reference' is the video evaluation protocol"):
        build_val_loader({"name": "sample"}, 4, 0, 1, protocol="reference")


def test_camera_motion_videos_are_decodable_and_move_smoothly(tmp_path: Path) -> None:
    paths = write_camera_motion_videos(tmp_path / "videos", ["astronaut", "coffee"], 2, frames=9, size=32, seed=0)
    assert [p.relative_to(tmp_path / "videos").as_posix() for p in paths] == [
        "astronaut/astronaut_0.mp4", "astronaut/astronaut_1.mp4", "coffee/coffee_0.mp4", "coffee/coffee_1.mp4"]
    for path in paths:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            assert float(stream.average_rate) == 25
            frames = np.stack([frame.to_ndarray(format="rgb24") for frame in container.decode(stream)]).astype(float)
        assert frames.shape == (9, 32, 32, 3)
        steps = np.abs(np.diff(frames, axis=0)).mean(axis=(1, 2, 3))
        assert steps.max() < 12 and np.abs(frames[-1] - frames[0]).mean() > 2 * steps.max()
    assert decode_clip(paths[0].read_bytes(), 5, start=3).shape == (5, 32, 32, 3)
    rng = lambda seed: np.random.default_rng(seed)  # noqa: E731
    assert np.array_equal(camera_path(512, 400, 9, rng(1)), camera_path(512, 400, 9, rng(1)))
    assert not np.array_equal(camera_path(512, 400, 9, rng(1)), camera_path(512, 400, 9, rng(2)))
    with pytest.raises(SystemExit):
        camera_motion_main(["--out", str(tmp_path / "odd"), "--size", "33"])
