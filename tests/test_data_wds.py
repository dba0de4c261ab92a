"""WebDataset shards: the converter round trip and resume, the streaming loaders (DDP x workers, exact resume),
corrupt/odd samples, unreadable shards, and the ordered val stream."""

import io
import json
import logging
import os
import tarfile

import pytest
import torch
from PIL import Image

from conftest import compose_group
from openmagvit2.config import data_config
from openmagvit2.data import build_train_loader, build_val_loader
from openmagvit2.data.make_shards import convert, main
from synthetic_images import broken_images, odd_images
from openmagvit2.data.shards import ShardError, default_index_path, iter_shard

NUM_IMAGES = 80
NUM_CLASSES = 4


def _flat_png(identity: int) -> bytes:
    """A 20x30 PNG of one colour that encodes ``identity`` (any crop of it reveals which image it came from)."""
    buffer = io.BytesIO()
    Image.new("RGB", (30, 20), (identity, 255 - identity, 77)).save(buffer, format="PNG")
    return buffer.getvalue()


def identities(batch: torch.Tensor) -> list[int]:
    """Recover the image identities of a batch of flat-colour crops in [-1, 1]."""
    red = ((batch[:, 0] + 1) * 127.5).round()
    assert torch.all(red == red[:, :1, :1]), "crops of a flat image must be flat"
    return red[:, 0, 0].long().tolist()


def make_source(root) -> dict[str, tuple[bytes, int]]:
    """``NUM_IMAGES`` identity-coded PNGs in ``NUM_CLASSES`` class folders; returns path -> (bytes, label)."""
    expected = {}
    for identity in range(NUM_IMAGES):
        label = identity % NUM_CLASSES
        relative = os.path.join(f"class_{label}", f"img_{identity:03d}.png")
        os.makedirs(root / f"class_{label}", exist_ok=True)
        data = _flat_png(identity)
        (root / relative).write_bytes(data)
        expected[relative] = (data, label)
    return expected


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("wds")
    expected = make_source(root / "train")
    index = convert(str(root / "train"), str(root / "shards"), shard_size=10, workers=2)
    return root, expected, index


def wds_cfg(root, **overrides):
    cfg = {"name": "imagenet_wds", "image_size": 8, "num_workers": 0, "hflip": False,
           "shards": str(root / "shards" / "train-{000000..000007}.tar"), "val_shards": None, "shards_index": None,
           "epoch_samples": None, "shuffle_buffer": 7, "shard_shuffle": True, "jpeg_draft": False}
    cfg.update(overrides)
    return cfg


def take(loader, count):
    iterator = iter(loader)
    return [next(iterator) for _ in range(count)]


def test_round_trip_every_image_and_label_once(shards):
    root, expected, index = shards
    assert index["total"] == NUM_IMAGES and index["classes"] == [f"class_{c}" for c in range(NUM_CLASSES)]
    assert [shard["count"] for shard in index["shards"]] == [10] * 8
    with open(root / "shards" / "train.json") as handle:
        assert json.load(handle) == index
    seen = {}
    for shard in index["shards"]:
        for sample in iter_shard(str(root / "shards" / shard["name"])):
            path = sample["path"].decode()
            assert path not in seen
            seen[path] = (sample["png"], int(sample["cls"]))
    assert seen == expected


def test_conversion_resumes_without_redoing_finished_shards(shards, tmp_path):
    root, _, _ = shards
    out = tmp_path / "out"
    convert(str(root / "train"), str(out), shard_size=30, workers=1)
    kept = out / "train-000000.tar"
    os.utime(kept, (1, 1))
    (out / "train-000001.tar").unlink()
    convert(str(root / "train"), str(out), shard_size=30, workers=1)
    assert os.stat(kept).st_mtime == 1  # untouched
    assert sorted(p.name for p in out.glob("*.tar")) == ["train-000000.tar", "train-000001.tar", "train-000002.tar"]
    assert not list(out.glob(".*.tmp"))
    with pytest.raises(ValueError, match="other inputs or settings"):
        convert(str(root / "train"), str(out), shard_size=20, workers=1)


def test_conversion_is_deterministic_and_cli_reports_errors(shards, tmp_path, capsys):
    root, _, _ = shards
    arguments = ["--src", str(root / "train"), "--out", str(tmp_path / "a"), "--shard-size", "10", "--workers", "1"]
    assert main(arguments) == 0
    with open(tmp_path / "a" / "train-000003.tar", "rb") as a, open(root / "shards" / "train-000003.tar", "rb") as b:
        assert a.read() == b.read()
    assert main(["--src", str(tmp_path / "missing"), "--out", str(tmp_path / "b")]) == 2
    assert "--src" in capsys.readouterr().err


def test_two_ranks_two_workers_see_disjoint_samples_covering_the_set(shards):
    root, _, _ = shards
    cfg = wds_cfg(root, num_workers=2)
    seen = []
    for rank in range(2):
        loader = build_train_loader(cfg, 4, rank, 2, seed=0)
        assert loader.epoch_size == NUM_IMAGES // 8
        seen.append([i for batch in take(loader, loader.epoch_size) for i in identities(batch)])
    assert len(seen[0]) == len(seen[1]) == NUM_IMAGES // 2
    assert not set(seen[0]) & set(seen[1])
    assert sorted(seen[0] + seen[1]) == list(range(NUM_IMAGES))


@pytest.mark.filterwarnings("ignore:This DataLoader will create")
def test_more_readers_than_shards_split_by_sample_counts(shards):
    root, _, _ = shards
    cfg = wds_cfg(root, num_workers=5)  # 2 ranks x 5 workers = 10 readers over 8 shards, 8 samples each
    seen = []
    for rank in range(2):
        loader = build_train_loader(cfg, 2, rank, 2, seed=4)
        seen += [i for batch in take(loader, loader.epoch_size) for i in identities(batch)]
    assert sorted(seen) == list(range(NUM_IMAGES))


def test_order_depends_on_seed_and_epoch_only(shards):
    root, _, _ = shards
    loader = build_train_loader(wds_cfg(root), 4, 0, 1, seed=0)
    two_epochs = [identities(batch) for batch in take(loader, 2 * loader.epoch_size)]
    again = [identities(batch) for batch in take(build_train_loader(wds_cfg(root), 4, 0, 1, seed=0), 20)]
    other = [identities(batch) for batch in take(build_train_loader(wds_cfg(root), 4, 0, 1, seed=1), 20)]
    assert again == two_epochs[:20]
    assert other != again
    assert two_epochs[:20] != two_epochs[20:]
    assert sorted(sum(two_epochs[20:], [])) == list(range(NUM_IMAGES))


@pytest.mark.parametrize("workers, consumed", [(0, 7), (2, 5), (2, 6)])
def test_resume_after_k_batches_continues_with_the_next_samples(shards, workers, consumed):
    root, _, _ = shards
    cfg = wds_cfg(root, num_workers=workers)
    uninterrupted = build_train_loader(cfg, 4, 0, 1, seed=3)
    straight = take(uninterrupted, 24)
    first = build_train_loader(cfg, 4, 0, 1, seed=3)
    head = take(first, consumed)
    state = first.state_dict()
    resumed = build_train_loader(cfg, 4, 0, 1, seed=3)
    resumed.load_state_dict(state)
    tail = take(resumed, 24 - consumed)
    assert all(torch.equal(a, b) for a, b in zip(head + tail, straight))
    assert resumed.state_dict() == uninterrupted.state_dict()  # offsets and counters too


def test_resume_with_other_worker_count_is_approximate_but_continues(shards, caplog):
    root, _, _ = shards
    first = build_train_loader(wds_cfg(root, num_workers=2), 4, 0, 1, seed=3)
    take(first, 6)
    resumed = build_train_loader(wds_cfg(root, num_workers=1), 4, 0, 1, seed=3)
    with caplog.at_level(logging.WARNING):
        resumed.load_state_dict(first.state_dict())
    assert "approximately" in caplog.text
    rest = [i for batch in take(resumed, resumed.epoch_size - 6) for i in identities(batch)]
    assert len(rest) == len(set(rest)) == NUM_IMAGES - 24
    assert resumed.stats()["epoch"] == 0 and resumed.stats()["batch_in_epoch"] == resumed.epoch_size


def test_val_stream_sees_every_image_once_across_ranks(shards):
    root, _, _ = shards
    cfg = wds_cfg(root, val_shards=str(root / "shards" / "train-{000000..000007}.tar"), num_workers=2)
    parts = [[i for batch in build_val_loader(cfg, 3, rank, 2) for i in identities(batch)] for rank in range(2)]
    assert sorted(parts[0] + parts[1]) == list(range(NUM_IMAGES))
    again = [i for batch in build_val_loader(cfg, 3, 0, 2) for i in identities(batch)]
    assert again == parts[0]
    subset = [i for batch in build_val_loader(cfg, 4, 0, 1, max_images=16) for i in identities(batch)]
    assert len(subset) == len(set(subset)) == 16


@pytest.fixture(scope="module")
def messy_shards(tmp_path_factory):
    """Shards from a folder with odd-but-valid files, broken files, and unlabeled (loose) images."""
    root = tmp_path_factory.mktemp("messy")
    src = root / "train"
    for identity in range(16):
        (src / f"class_{identity % 2}").mkdir(parents=True, exist_ok=True)
        (src / f"class_{identity % 2}" / f"{identity:03d}.png").write_bytes(_flat_png(identity))
    for name, data in {**odd_images(), **broken_images()}.items():
        (src / "class_0" / f"odd_{name}").write_bytes(data)
    (src / "loose.png").write_bytes(_flat_png(200))
    strip = io.BytesIO()
    Image.new("RGB", (1, 40)).save(strip, format="PNG")
    (src / "class_1" / "strip.png").write_bytes(strip.getvalue())
    index = convert(str(src), str(root / "shards"), shard_size=8, workers=1, check=False)  # keep the broken files
    return root, index


def test_make_shards_skips_counts_and_names_files_that_do_not_decode(messy_shards, tmp_path, capsys):
    root, packed = messy_shards
    assert packed["skipped_corrupt"] == 0 and packed["checked"] is False
    arguments = ["--src", str(root / "train"), "--out", str(tmp_path / "checked"), "--shard-size", "8",
                 "--workers", "2"]
    assert main(arguments) == 0
    output = capsys.readouterr()
    index = json.loads((tmp_path / "checked" / "train.json").read_text())
    broken = {f"class_0/odd_{name}" for name in broken_images()}
    assert index["checked"] is True and index["skipped_corrupt"] == len(broken)
    assert {entry["path"] for entry in index["skipped"]} == broken
    assert index["total"] == packed["total"] - len(broken) == sum(shard["count"] for shard in index["shards"])
    assert f"{len(broken)} files skipped as corrupt" in output.out and "odd_truncated.jpg" in output.err
    shards = sorted((tmp_path / "checked").glob("train-*.tar"))
    assert sum(1 for shard in shards for _ in iter_shard(str(shard))) == index["total"]
    # Resuming the conversion keeps the counts (re-read from the finished shards' headers).
    shards[0].unlink()
    assert main(arguments) == 0
    again = json.loads((tmp_path / "checked" / "train.json").read_text())
    assert again["total"] == index["total"] and again["skipped_corrupt"] == index["skipped_corrupt"]


def test_odd_samples_decode_broken_are_skipped_and_counted(messy_shards, caplog):
    root, index = messy_shards
    count = len(index["shards"])
    assert index["unlabeled"] == 1
    pattern = str(root / "shards" / f"train-{{000000..{count - 1:06d}}}.tar")
    cfg = wds_cfg(root, shards=pattern, val_shards=pattern)
    val = build_val_loader(cfg, 5, 0, 1)
    images = torch.cat(list(val))
    assert images.shape[0] == 16 + len(odd_images()) + 1
    assert val.stats() == {"images": images.shape[0], "skipped_corrupt": len(broken_images()), "missing_files": 0,
                           "skipped_too_large": 0, "skipped_aspect": 1, "skipped_short": 0}

    train = build_train_loader(cfg, 4, 0, 1, seed=0)
    with caplog.at_level(logging.WARNING):
        batches = take(train, train.epoch_size)
    assert all(batch.shape == (4, 3, 8, 8) for batch in batches)  # skipped samples never shrink a batch
    stats = train.stats()
    assert stats["skipped_corrupt"] >= len(broken_images()) - 1  # the tail of the epoch may hold one
    assert stats["missing_label"] >= 1
    assert "skipped (skipped_corrupt)" in caplog.text


def test_unreadable_shard_is_an_error_naming_it(shards, tmp_path):
    bad = tmp_path / "bad-000000.tar"
    bad.write_bytes(b"definitely not a tar archive" * 100)
    with pytest.raises(ShardError, match="bad-000000.tar"):
        list(iter_shard(str(bad)))
    with pytest.raises(ShardError, match="missing-000000.tar"):
        list(iter_shard(str(tmp_path / "missing-000000.tar")))
    good = shards[0] / "shards" / "train-000000.tar"
    truncated = tmp_path / "cut-000000.tar"
    truncated.write_bytes(good.read_bytes()[:3000])
    with pytest.raises(ShardError, match="cut-000000.tar"):
        list(iter_shard(str(truncated)))


def test_config_validation_names_missing_shards_and_index(shards, tmp_path):
    root, _, _ = shards
    data_config(wds_cfg(root))
    with pytest.raises(ValueError, match=r"data\.shards.*train-000008\.tar.*1 more"):
        data_config(wds_cfg(root, shards=str(root / "shards" / "train-{000000..000009}.tar")))
    with pytest.raises(ValueError, match=r"data\.val_shards"):
        data_config(wds_cfg(root, val_shards=str(tmp_path / "val-{000000..000001}.tar")))
    (tmp_path / "x-000000.tar").write_bytes((root / "shards" / "train-000000.tar").read_bytes())
    with pytest.raises(ValueError, match=r"data\.shards_index"):
        data_config(wds_cfg(root, shards=str(tmp_path / "x-{000000..000000}.tar")))
    data_config(wds_cfg(root, shards=str(tmp_path / "x-{000000..000000}.tar"), epoch_samples=10))
    with pytest.raises(ValueError, match="num_workers"):
        build_train_loader(wds_cfg(root, num_workers=5, shards=str(tmp_path / "x-{000000..000000}.tar"),
                                   epoch_samples=10), 2, 0, 2, seed=0)


def test_default_index_path():
    assert default_index_path("/d/train-{000000..001281}.tar") == "/d/train.json"
    assert default_index_path(["/d/val-000003.tar"]) == "/d/val.json"


def test_shards_are_plain_deterministic_tars(shards):
    root, _, _ = shards
    with tarfile.open(root / "shards" / "train-000000.tar") as archive:
        members = archive.getmembers()
    assert len(members) == 30 and all(member.isreg() and member.mtime == 0 for member in members)
    keys = [member.name.split(".", 1)[0] for member in members]
    assert keys == sorted(keys) and all(keys.count(key) == 3 for key in keys)
    assert {member.name.split(".", 1)[1] for member in members} == {"png", "cls", "path"}


def test_shipped_config_names_the_missing_shards(tmp_path, monkeypatch):
    monkeypatch.setenv("IMAGENET_SHARDS", str(tmp_path / "nowhere"))
    cfg = compose_group("data", "imagenet_wds")
    assert cfg.shards == str(tmp_path / "nowhere" / "train.json")
    with pytest.raises(ValueError, match=r"data\.shards: no shard index at .*nowhere/train\.json.*make_shards"):
        data_config(cfg)
    cfg.shards = str(tmp_path / "nowhere" / "train-{000000..001281}.tar")  # a pattern names each missing shard
    with pytest.raises(ValueError, match=r"data\.shards: shard .*train-000000\.tar.*1281 more"):
        data_config(cfg)


def test_data_root_alone_reads_the_shards_the_index_lists(shards, monkeypatch):
    """Your own shards: data.root is enough, however many shards make_shards wrote (the index lists them)."""
    root, expected, index = shards
    cfg = compose_group("data", "imagenet_wds")
    cfg.root, cfg.val_shards, cfg.image_size, cfg.num_workers = str(root / "shards"), None, 8, 0
    data = data_config(cfg)
    loader = build_train_loader(data, 4, 0, 1, 0)
    assert len(loader.urls) == len(index["shards"]) == 8 and loader.epoch_size == len(expected) // 4


def test_make_shards_refuses_the_parent_of_the_splits(tmp_path):
    for split in ("train", "val"):
        (tmp_path / "imagenet" / split / "n01440764").mkdir(parents=True)
        (tmp_path / "imagenet" / split / "n01440764" / "a.png").write_bytes(_flat_png(1))
    with pytest.raises(ValueError, match=r"holds the splits train, val, which would become two classes"):
        convert(str(tmp_path / "imagenet"), str(tmp_path / "shards"))
