"""Map-style sources (sample, imagenet_folder): exact resume, DDP splits, val coverage, corrupt files, config checks."""

import itertools
import logging
import os

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from conftest import compose_group
from openmagvit2.config import data_config
from openmagvit2.data import DataError, NoValidationSetError, build_train_loader, build_val_loader, has_validation_set
from openmagvit2.data.folder import scan_image_folder
from synthetic_images import broken_images, odd_images, write_image_folder



def sample_cfg(**overrides):
    cfg = compose_group("data", "sample")
    cfg.image_size = 16
    cfg.epoch_crops = 40
    cfg.val_crops = 12
    return OmegaConf.merge(cfg, overrides)


def take(loader, count):
    iterator = iter(loader)
    return [next(iterator) for _ in range(count)]


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    """A tiny ImageFolder: 3 classes x 8 photo-like JPEGs, plus odd files and broken files in class n00000001."""
    root = tmp_path_factory.mktemp("imagenet")
    write_image_folder(str(root / "train"), num_classes=3, per_class=8, size_range=(24, 48), seed=0)
    for name, data in {**odd_images(), **broken_images()}.items():
        (root / "train" / "n00000001" / name).write_bytes(data)
    val = root / "val"
    val.mkdir()
    write_image_folder(str(root / "val_src"), num_classes=2, per_class=5, size_range=(24, 48), seed=1)
    for index, path in enumerate(sorted((root / "val_src").rglob("*.JPEG"))):
        os.replace(path, val / f"ILSVRC2012_val_{index:08d}.JPEG")
    (val / "ILSVRC2012_val_99999999.JPEG").write_bytes(broken_images()["truncated.jpg"])
    return root


def folder_cfg(root, **overrides):
    cfg = compose_group("data", "imagenet_folder")
    cfg.root = str(root)
    cfg.image_size = 16
    cfg.num_workers = 0
    return OmegaConf.merge(cfg, overrides)


def test_sample_batches_shape_range_and_epoch_size():
    loader = build_train_loader(sample_cfg(), batch_size=4, rank=0, world_size=1, seed=0)
    assert loader.epoch_size == 10
    batch = take(loader, 1)[0]
    assert batch.shape == (4, 3, 16, 16) and batch.dtype == torch.float32
    assert batch.min() >= -1 and batch.max() <= 1 and batch.std() > 0.05


def test_sample_batches_do_not_depend_on_num_workers():
    single = take(build_train_loader(sample_cfg(num_workers=0), 4, 0, 1, seed=3), 12)
    multi = take(build_train_loader(sample_cfg(num_workers=2), 4, 0, 1, seed=3), 12)
    assert all(torch.equal(a, b) for a, b in zip(single, multi))


def test_seed_and_epoch_change_the_batches():
    base = take(build_train_loader(sample_cfg(), 4, 0, 1, seed=0), 20)
    other_seed = take(build_train_loader(sample_cfg(), 4, 0, 1, seed=1), 1)
    assert not torch.equal(base[0], other_seed[0])
    assert not torch.equal(base[0], base[10])  # epoch 1 starts at batch 10 with new crops and a new order


@pytest.mark.parametrize("workers", [0, 2])
def test_sample_resume_is_exact_across_an_epoch_boundary(workers):
    cfg = sample_cfg(num_workers=workers)
    straight = take(build_train_loader(cfg, 4, 0, 1, seed=7), 14)
    first = build_train_loader(cfg, 4, 0, 1, seed=7)
    head = take(first, 7)
    state = first.state_dict()
    assert (state["epoch"], state["position"]) == (0, 7)
    resumed = build_train_loader(cfg, 4, 0, 1, seed=7)
    resumed.load_state_dict(state)
    tail = take(resumed, 7)
    assert all(torch.equal(a, b) for a, b in zip(head + tail, straight))
    assert resumed.stats()["epoch"] == 1


def test_ranks_get_disjoint_equal_parts_of_every_epoch():
    cfg = sample_cfg(epoch_crops=43)
    loaders = [build_train_loader(cfg, 4, rank, 3, seed=0) for rank in range(3)]
    assert {loader.epoch_size for loader in loaders} == {3}
    for epoch in (0, 1):
        parts = [[index for batch in loader.epoch_batches(epoch) for _, index in batch] for loader in loaders]
        flat = list(itertools.chain(*parts))
        assert all(len(part) == 12 for part in parts)
        assert len(set(flat)) == len(flat) == 36
        assert set(flat) <= set(range(43))
    first_batches = [take(loader, 1)[0] for loader in loaders]
    assert not torch.equal(first_batches[0], first_batches[1])


def test_sample_val_is_fixed_held_out_and_split_across_ranks():
    cfg = sample_cfg()
    everything = torch.cat(list(build_val_loader(cfg, 5, 0, 1)))
    assert everything.shape == (12, 3, 16, 16)
    parts = [torch.cat(list(build_val_loader(cfg, 5, rank, 3))) for rank in range(3)]
    assert torch.equal(torch.cat(parts), everything)
    assert torch.equal(torch.cat(list(build_val_loader(cfg, 5, 0, 1))), everything)
    subset = torch.cat(list(build_val_loader(cfg, 5, 0, 1, max_images=4)))
    assert torch.equal(subset, everything[[0, 3, 6, 9]])
    assert "coffee" in cfg.val_photos and "coffee" not in cfg.train_photos


def test_folder_scan_labels_and_loose_images(image_folder):
    listing = scan_image_folder(str(image_folder / "train"))
    assert listing.classes == ["n00000000", "n00000001", "n00000002"]
    assert len(listing) == 24 + len(odd_images()) + len(broken_images())
    assert listing.labels.count(1) == 8 + len(odd_images()) + len(broken_images())
    flat = scan_image_folder(str(image_folder / "val"), "data.val_dir")
    assert flat.classes == [] and set(flat.labels) == {-1} and len(flat) == 11


def test_folder_training_skips_and_counts_corrupt_files(image_folder, caplog):
    cfg = folder_cfg(image_folder)
    loader = build_train_loader(cfg, 4, 0, 1, seed=0)
    total = 24 + len(odd_images()) + len(broken_images())
    assert loader.epoch_size == total // 4
    with caplog.at_level(logging.WARNING):
        batches = take(loader, loader.epoch_size)
    assert all(batch.shape == (4, 3, 16, 16) for batch in batches)
    # Every broken file sits somewhere in the epoch's permutation; the epoch drops total % 4 of the files.
    dropped = total - loader.epoch_size * 4
    assert len(broken_images()) - dropped <= loader.stats()["skipped_corrupt"]
    assert loader.stats()["skipped_corrupt"] >= 1
    assert "corrupt" in caplog.text


def test_folder_resume_is_exact_with_workers(image_folder):
    cfg = folder_cfg(image_folder, num_workers=2, skip_window=7, max_skip_rate=0.9)
    uninterrupted = build_train_loader(cfg, 4, 0, 1, seed=5)
    straight = take(uninterrupted, 10)
    first = build_train_loader(cfg, 4, 0, 1, seed=5)
    head = take(first, 4)
    resumed = build_train_loader(OmegaConf.merge(cfg, {"num_workers": 0}), 4, 0, 1, seed=5)
    resumed.load_state_dict(first.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(head + take(resumed, 6), straight))
    assert resumed.state_dict() == uninterrupted.state_dict()  # position, skip counters and the rate window


@pytest.fixture
def clean_folder(tmp_path):
    """2 classes x 16 photo-like JPEGs, nothing broken."""
    write_image_folder(str(tmp_path / "train"), num_classes=2, per_class=16, size_range=(24, 40), seed=2)
    return tmp_path


def test_deleting_half_the_folder_mid_run_stops_with_a_one_line_error(clean_folder, caplog):
    cfg = folder_cfg(clean_folder, max_skip_rate=0.01, skip_window=16, val_dir=None)
    loader = build_train_loader(cfg, 4, 0, 1, seed=0)
    iterator = iter(loader)
    for _ in range(3):
        next(iterator)
    for path in (clean_folder / "train" / "n00000001").iterdir():
        path.unlink()  # half of the folder disappears mid-run
    with caplog.at_level(logging.WARNING), pytest.raises(DataError) as caught:
        for _ in range(2 * loader.epoch_size):
            next(iterator)
    message = str(caught.value)
    assert "\n" not in message
    assert f"data.train_dir={str(clean_folder / 'train')!r}" in message and "max_skip_rate=0.01" in message
    assert "%" in message and "missing_files" in message
    stats = loader.stats()
    assert stats["missing_files"] > 0 and stats["skipped_corrupt"] == 0  # missing is not corrupt
    assert "skipped (missing_files)" in caplog.text and "n00000001" in caplog.text


def test_a_few_missing_files_are_counted_separately_below_the_cap(clean_folder):
    cfg = folder_cfg(clean_folder, max_skip_rate=0.5, skip_window=16, val_dir=None)
    loader = build_train_loader(cfg, 4, 0, 1, seed=0)
    (clean_folder / "train" / "n00000000" / "img_0000_00003.JPEG").unlink()
    batches = take(loader, loader.epoch_size)
    assert all(batch.shape == (4, 3, 16, 16) for batch in batches)  # replaced, never a smaller batch
    assert loader.stats()["missing_files"] == 1 and loader.stats()["skipped_corrupt"] == 0


def test_hostile_images_are_skipped_before_decoding_and_counted(clean_folder):
    from PIL import Image

    Image.new("RGB", (1, 400)).save(clean_folder / "train" / "n00000000" / "strip.png")
    Image.new("RGB", (300, 300)).save(clean_folder / "train" / "n00000001" / "huge.png")
    cfg = folder_cfg(clean_folder, max_pixels=300 * 300 - 1, max_aspect_ratio=10, max_skip_rate=1.0, val_dir=None)
    loader = build_train_loader(cfg, 2, 0, 1, seed=0)
    take(loader, loader.epoch_size)
    stats = loader.stats()
    assert stats["skipped_aspect"] == 1 and stats["skipped_too_large"] == 1 and stats["skipped_corrupt"] == 0
    val = build_val_loader(folder_cfg(clean_folder, val_dir=str(clean_folder / "train"), max_pixels=300 * 300 - 1),
                           4, 0, 1)
    assert sum(len(batch) for batch in val) == 32
    assert val.stats()["skipped_aspect"] == 1 and val.stats()["skipped_too_large"] == 1


def test_no_validation_set_is_allowed_and_named(clean_folder):
    cfg = folder_cfg(clean_folder, val_dir=None)
    data_config(cfg)  # "null = no validation set" is a valid config
    assert not has_validation_set(cfg) and has_validation_set(sample_cfg())
    assert len(build_train_loader(cfg, 4, 0, 1, seed=0)) == 8
    with pytest.raises(NoValidationSetError, match=r"data\.val_dir is null.*no validation set"):
        build_val_loader(cfg, 4, 0, 1)


def test_skip_limits_are_checked_with_the_config(image_folder):
    with pytest.raises(ValueError, match=r"data\.max_skip_rate"):
        data_config(folder_cfg(image_folder, max_skip_rate=2))
    with pytest.raises(ValueError, match=r"data\.max_pixels"):
        data_config(folder_cfg(image_folder, max_pixels=0))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="pinned memory needs CUDA")
def test_pin_memory_returns_page_locked_batches(image_folder):
    loader = build_train_loader(folder_cfg(image_folder), 4, 0, 1, seed=0, pin_memory=True)
    pinned = take(loader, 2)
    plain = take(build_train_loader(folder_cfg(image_folder), 4, 0, 1, seed=0), 2)
    assert all(batch.is_pinned() for batch in pinned) and not plain[0].is_pinned()
    assert all(torch.equal(a, b) for a, b in zip(pinned, plain))
    val = next(iter(build_val_loader(folder_cfg(image_folder), 4, 0, 1, pin_memory=True)))
    assert val.is_pinned()


def test_folder_val_sees_every_image_once_across_ranks(image_folder):
    cfg = folder_cfg(image_folder)
    single = build_val_loader(cfg, 4, 0, 1)
    everything = torch.cat(list(single))
    assert everything.shape == (10, 3, 16, 16) and single.stats() == {
        "images": 10, "skipped_corrupt": 1, "missing_files": 0, "skipped_too_large": 0, "skipped_aspect": 0,
        "skipped_short": 0}
    parts = [torch.cat(list(build_val_loader(cfg, 3, rank, 2))) for rank in range(2)]
    assert torch.equal(torch.cat(parts), everything)
    subset = torch.cat(list(build_val_loader(cfg, 4, 0, 1, max_images=5)))
    assert subset.shape[0] == 5


def test_shipped_configs_validate(image_folder):
    data_config(compose_group("data", "sample"))
    data_config(folder_cfg(image_folder))


@pytest.mark.parametrize("overrides, key", [
    ({"name": "imagenet"}, "data.name"),
    ({"image_size": 0}, "data.image_size"),
    ({"num_workers": -1}, "data.num_workers"),
    ({"val_photos": ["astronaut"]}, "data.val_photos"),
    ({"train_photos": ["lena"]}, "data.train_photos"),
    ({"crop_scale": [0.8, 0.2]}, "data.crop_scale"),
])
def test_bad_sample_config_names_the_key(overrides, key):
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        data_config(sample_cfg(**overrides))


def test_missing_folders_name_the_key(tmp_path, image_folder):
    with pytest.raises(ValueError, match=r"data\.train_dir"):
        data_config(folder_cfg(tmp_path / "nowhere"))
    with pytest.raises(ValueError, match=r"data\.val_dir"):
        data_config(folder_cfg(image_folder, val_dir=str(tmp_path / "nowhere")))
    empty = tmp_path / "empty"
    (empty / "n00000000").mkdir(parents=True)  # a class folder without images is still empty
    for key in ("train_dir", "val_dir"):
        with pytest.raises(ValueError, match=rf"data\.{key}='{empty}' holds no images") as caught:
            data_config(folder_cfg(image_folder, **{key: str(empty)}))
        assert "\n" not in str(caught.value)


def test_too_little_data_for_the_batch_is_a_clear_error():
    with pytest.raises(ValueError, match="train.batch_size"):
        build_train_loader(sample_cfg(epoch_crops=6), 4, 0, 2, seed=0)


def test_val_subset_is_spread_evenly():
    from openmagvit2.data.loaders import val_subset

    assert val_subset(10, 4).tolist() == [0, 2, 5, 7]
    assert val_subset(3, 10).tolist() == [0, 1, 2]
    assert np.array_equal(val_subset(5, None), np.arange(5))
