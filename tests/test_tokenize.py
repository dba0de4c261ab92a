"""Stage II data: labels from the image loaders, the token export (round trip, variants, 2 ranks == 1, resume after
a kill) and the ``data=tokens`` loaders (exact resume, one variant per image per epoch, config checks)."""

import os

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from conftest import compose_config, compose_group, run_entry_point
from openmagvit2.config import ConfigError, data_config, model_preset
from openmagvit2.data import build_train_loader, build_val_loader
from openmagvit2.data.make_shards import convert
from openmagvit2.data.sample import SampleVal
from openmagvit2.data.tokens import read_token_split
from openmagvit2.data.transforms import to_model_range
from openmagvit2.data.variants import SAMPLE_TOKENS_SEED, image_variants
from openmagvit2.models import Tokenizer
from test_data_wds import identities, make_source

PHOTOS = 7  # data.train_photos of data=sample
IMAGES = 20


def take(loader, count):
    iterator = iter(loader)
    return [next(iterator) for _ in range(count)]


def sample_cfg(**overrides):
    cfg = compose_group("data", "sample")
    cfg.image_size, cfg.epoch_crops, cfg.val_crops = 16, 40, 12
    return OmegaConf.merge(cfg, overrides)


# ---------------------------------------------------------------------------------------------- labels (priority 1)
def test_sample_labels_are_the_photo_and_leave_the_images_unchanged():
    plain = take(build_train_loader(sample_cfg(), 4, 0, 1, seed=3), 12)
    labelled = take(build_train_loader(sample_cfg(), 4, 0, 1, seed=3, labels=True), 12)
    for images, (same, labels) in zip(plain, labelled):
        assert torch.equal(images, same) and labels.dtype == torch.int64 and labels.shape == (4,)
    all_labels = torch.cat([labels for _, labels in labelled])
    assert set(all_labels.tolist()) <= set(range(PHOTOS)) and len(set(all_labels.tolist())) > 3


def test_sample_labelled_val_is_held_out_crops_of_the_train_photos():
    plain = torch.cat(list(build_val_loader(sample_cfg(), 5, 0, 1)))
    batches = list(build_val_loader(sample_cfg(), 5, 0, 1, labels=True))
    images = torch.cat([images for images, _ in batches])
    labels = torch.cat([labels for _, labels in batches])
    assert images.shape == plain.shape == (12, 3, 16, 16) and not torch.equal(images, plain)
    assert labels.tolist() == [i % PHOTOS for i in range(12)]
    again = torch.cat([images for images, _ in build_val_loader(sample_cfg(), 5, 0, 1, labels=True)])
    assert torch.equal(images, again)  # fixed seed, not the run's
    train = torch.cat([b for b, _ in take(build_train_loader(sample_cfg(), 4, 0, 1, seed=0, labels=True), 10)])
    assert not any(torch.equal(image, other) for image in images for other in train)


@pytest.fixture(scope="module")
def coded_folder(tmp_path_factory):
    """80 flat-colour PNGs whose colour encodes their identity, label = identity % 4, as folders and as shards."""
    root = tmp_path_factory.mktemp("coded")
    make_source(root / "train")
    convert(str(root / "train"), str(root / "shards"), shard_size=10, workers=1)
    return root


def folder_cfg(root, **overrides):
    return {"name": "imagenet_folder", "root": str(root), "train_dir": str(root / "train"),
            "val_dir": str(root / "train"), "image_size": 8, "num_workers": 0, **overrides}


def test_folder_and_shard_labels_are_the_class_index(coded_folder):
    wds = {"name": "imagenet_wds", "image_size": 8, "num_workers": 0,
           "shards": str(coded_folder / "shards" / "train-{000000..000007}.tar"),
           "val_shards": str(coded_folder / "shards" / "train-{000000..000007}.tar"), "shuffle_buffer": 7}
    for cfg in (folder_cfg(coded_folder), wds):
        for images, labels in take(build_train_loader(cfg, 8, 0, 1, seed=0, labels=True), 5):
            assert [i % 4 for i in identities(images)] == labels.tolist()
        seen = []
        for images, labels in build_val_loader(cfg, 16, 0, 1, labels=True):
            assert [i % 4 for i in identities(images)] == labels.tolist()
            seen += identities(images)
        assert sorted(seen) == list(range(80))
        assert isinstance(take(build_train_loader(cfg, 8, 0, 1, seed=0), 1)[0], torch.Tensor)  # default: images


def test_labels_on_a_folder_with_loose_images_are_refused(coded_folder, tmp_path):
    mixed = tmp_path / "mixed"
    make_source(mixed)
    os.replace(mixed / "class_0" / "img_000.png", mixed / "loose.png")
    cfg = folder_cfg(tmp_path, train_dir=str(mixed), val_dir=None)
    take(build_train_loader(cfg, 8, 0, 1, seed=0), 1)  # without labels: fine
    with pytest.raises(ValueError, match=r"^data\.train_dir=.* 1 images outside class folders .*'loose\.png'"):
        build_train_loader(cfg, 8, 0, 1, seed=0, labels=True)


# -------------------------------------------------------------------------------------------------- token export
@pytest.fixture(scope="module")
def tiny_tokenizer(tmp_path_factory):
    torch.manual_seed(0)
    tokenizer = Tokenizer.from_config(model_preset("tiny"), {"codebook_bits": 18}).eval()
    return tokenizer.save_pretrained(tmp_path_factory.mktemp("tok") / "tiny"), tokenizer


def tokenize_overrides(ckpt, out, *extra):
    return [f"ckpt={ckpt}", f"out={out}", "data=sample", "data.image_size=16", f"data.epoch_crops={IMAGES}",
            "data.val_crops=6", "shard_size=6", "batch_size=16", "device=cpu", *extra]


def tokenize(ckpt, out, *extra):
    from openmagvit2.tokenize import run

    return run(compose_config(tokenize_overrides(ckpt, out, *extra), config_name="tokenize"))


@pytest.fixture(scope="module")
def flipped_tokens(tiny_tokenizer, tmp_path_factory):
    out = tmp_path_factory.mktemp("tokens")
    index = tokenize(tiny_tokenizer[0], out, "flip=true")
    tokenize(tiny_tokenizer[0], out, "split=val")
    return out, index


def test_token_shards_hold_the_encoded_centre_crops_and_their_mirrors(tiny_tokenizer, flipped_tokens):
    out, index = flipped_tokens
    assert (index["grid_size"], index["num_classes"], index["variants_per_image"]) == (4, PHOTOS, 2)
    assert (index["images"], index["samples"], len(index["shards"])) == (IMAGES, 2 * IMAGES, 4)
    assert index["tokenizer"]["codebook_bits"] == 18 and index["tokenizer"]["bit_order"] == "lsb_first"
    assert len(index["tokenizer"]["sha256"]) == 64 and index["tokenizer"]["use_ema"] is False
    split = read_token_split(str(out / "train.json"))
    rows = split.rows
    assert rows.tokens.dtype == np.int32 and rows.tokens.shape == (2 * IMAGES, 16)
    assert rows.images.tolist() == [i for i in range(IMAGES) for _ in range(2)]
    assert rows.variants.tolist() == [0, 1] * IMAGES and rows.labels.tolist() == [i % PHOTOS for i in rows.images]
    source = SampleVal([f"{n}" for n in compose_group("data", "sample").train_photos], 16, IMAGES, (0.25, 0.75),
                       SAMPLE_TOKENS_SEED)
    crops = torch.stack([source.val_photo_crop(i)[1] for i in range(IMAGES)])
    with torch.no_grad():
        centre = tiny_tokenizer[1].encode(to_model_range(crops)).indices.flatten(1)
        mirror = tiny_tokenizer[1].encode(to_model_range(crops.flip(-1))).indices.flatten(1)
    assert np.array_equal(rows.tokens[0::2], centre.numpy()) and np.array_equal(rows.tokens[1::2], mirror.numpy())
    assert 0 <= rows.tokens.min() and rows.tokens.max() < 2 ** 18


def test_ten_crop_stores_ten_variants_per_image(tiny_tokenizer, tmp_path):
    index = tokenize(tiny_tokenizer[0], tmp_path, "crops=10", "data.epoch_crops=4")
    assert (index["variants_per_image"], index["images"], index["samples"]) == (10, 4, 40)
    photo = SampleVal(["astronaut"], 17, 1, (0.5, 0.5)).val_photo_crop(0)[1]
    from PIL import Image

    views = image_variants(Image.fromarray(photo.permute(1, 2, 0).numpy()), 16, 10, False)
    assert views.shape == (10, 3, 16, 16)
    assert torch.equal(views[0], photo[:, :16, :16]) and torch.equal(views[3], photo[:, 1:, 1:])
    assert torch.equal(views[5], photo.flip(-1)[:, :16, :16])  # 5..9: the crops of the mirror image
    with pytest.raises(ConfigError, match="crops=10 already holds the mirrored crops"):
        tokenize(tiny_tokenizer[0], tmp_path / "other", "crops=10", "flip=true")


def test_two_gloo_ranks_write_the_same_shards_as_one(tiny_tokenizer, flipped_tokens, tmp_path):
    result = run_entry_point(["-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29547", "-m",
                              "openmagvit2.tokenize", *tokenize_overrides(tiny_tokenizer[0], tmp_path, "flip=true"),
                              f"hydra.run.dir={tmp_path / 'hydra'}"], timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    one, two = read_token_split(str(flipped_tokens[0] / "train.json")), read_token_split(str(tmp_path / "train.json"))
    for name in ("tokens", "images", "variants", "labels"):
        assert np.array_equal(getattr(one.rows, name), getattr(two.rows, name))
    for shard in one.index["shards"]:  # deterministic tars: byte-identical
        assert (flipped_tokens[0] / shard["name"]).read_bytes() == (tmp_path / shard["name"]).read_bytes()


def test_a_killed_export_resumes_without_rewriting_finished_shards(tiny_tokenizer, flipped_tokens, tmp_path,
                                                                   monkeypatch):
    import openmagvit2.tokenize as module

    real, calls = module.encode_token_shard, []

    def dies_on_the_second_shard(rows, stream):
        calls.append(len(rows))
        if len(calls) == 2:
            raise KeyboardInterrupt  # the job is killed while writing shard 1
        real(rows, stream)

    monkeypatch.setattr(module, "encode_token_shard", dies_on_the_second_shard)
    with pytest.raises(KeyboardInterrupt):
        tokenize(tiny_tokenizer[0], tmp_path, "flip=true")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["train-000000.tar", "train.plan.json"]  # no partial file
    first = os.stat(tmp_path / "train-000000.tar")
    monkeypatch.setattr(module, "encode_token_shard", real)
    written = []
    monkeypatch.setattr(module, "encode_token_shard", lambda rows, stream: (written.append(rows[0][0]),
                                                                           real(rows, stream)))
    index = tokenize(tiny_tokenizer[0], tmp_path, "flip=true")
    again = os.stat(tmp_path / "train-000000.tar")
    assert (again.st_ino, again.st_mtime_ns) == (first.st_ino, first.st_mtime_ns) and written == [6, 12, 18]
    assert index["images"] == IMAGES
    for shard in index["shards"]:
        assert (flipped_tokens[0] / shard["name"]).read_bytes() == (tmp_path / shard["name"]).read_bytes()
    with pytest.raises(ConfigError, match=r"other settings \(crops, flip differ"):
        tokenize(tiny_tokenizer[0], tmp_path, "crops=10")


# ---------------------------------------------------------------------------------------------- data=tokens loaders
def tokens_cfg(root, **overrides):
    cfg = compose_group("data", "tokens")
    cfg.root = str(root)
    return OmegaConf.merge(cfg, overrides)


def test_data_tokens_composes_validates_and_names_a_bad_root(flipped_tokens, tmp_path):
    out = flipped_tokens[0]
    data = data_config(tokens_cfg(out, val_index=str(out / "val.json")))
    assert (data.grid_size, data.num_classes, data.image_size) == (4, PHOTOS, 16)
    cfg = compose_config(["data=tokens", f"data.root={out}"])
    assert cfg.data.train_index == f"{out}/train.json"
    with pytest.raises(ConfigError, match=r"^data\.train_index='.*/nowhere/train\.json' does not exist: tokenize") as e:
        data_config(tokens_cfg(tmp_path / "nowhere"))
    assert "\n" not in str(e.value)
    with pytest.raises(ConfigError, match=r"data\.hflip=True is invalid"):
        data_config(tokens_cfg(out, hflip=True))


def test_token_train_loader_resumes_exactly_and_draws_one_variant_per_image(flipped_tokens):
    cfg = tokens_cfg(flipped_tokens[0])
    straight = take(build_train_loader(cfg, 3, 0, 1, seed=5), 14)  # epoch_size 6: crosses two epoch ends
    loader = build_train_loader(cfg, 3, 0, 1, seed=5)
    assert (loader.grid_size, loader.num_tokens, loader.num_classes, loader.epoch_size) == (4, 16, PHOTOS, 6)
    first = take(loader, 7)
    state = loader.state_dict()
    resumed = build_train_loader(cfg, 3, 0, 1, seed=5)
    resumed.load_state_dict(state)
    for (a, la), (b, lb) in zip(straight, first + take(resumed, 7)):
        assert torch.equal(a, b) and torch.equal(la, lb)
    indices, labels = straight[0]
    assert indices.dtype == labels.dtype == torch.int64 and indices.shape == (3, 16) and labels.shape == (3,)

    rows = read_token_split(str(flipped_tokens[0] / "train.json")).rows
    chosen = {}
    for epoch in range(6):
        picked = loader.epoch_rows(epoch)
        images = rows.images[picked]
        assert len(set(images.tolist())) == len(images) == 18  # each image at most once per epoch
        for image, variant in zip(images, rows.variants[picked]):
            chosen.setdefault(int(image), set()).add(int(variant))
    assert sum(len(v) == 2 for v in chosen.values()) > IMAGES // 2  # both variants get drawn over the epochs
    batch = [torch.from_numpy(rows.tokens[loader.epoch_rows(0)[:3]]).long(),
             torch.from_numpy(rows.labels[loader.epoch_rows(0)[:3]])]
    assert torch.equal(straight[0][0], batch[0]) and torch.equal(straight[0][1], batch[1])


def test_loaders_memory_map_the_arrays_and_fall_back_to_the_shards(flipped_tokens, tmp_path):
    out = flipped_tokens[0]
    mapped = read_token_split(str(out / "train.json"))
    assert isinstance(mapped.rows.tokens, np.memmap)
    for path in out.iterdir():  # the shards and the index alone, as a copy without the arrays
        if not path.name.endswith(".npy"):
            (tmp_path / path.name).write_bytes(path.read_bytes())
    from_tars = read_token_split(str(tmp_path / "train.json"))
    assert not isinstance(from_tars.rows.tokens, np.memmap)
    for name in ("tokens", "images", "variants", "labels"):
        assert np.array_equal(getattr(mapped.rows, name), getattr(from_tars.rows, name))
    a = take(build_train_loader(tokens_cfg(out), 4, 1, 2, seed=2), 5)
    b = take(build_train_loader(tokens_cfg(tmp_path), 4, 1, 2, seed=2), 5)
    assert all(torch.equal(x, y) and torch.equal(lx, ly) for (x, lx), (y, ly) in zip(a, b))


def test_token_ranks_are_disjoint_and_val_sees_every_sample_once(flipped_tokens):
    out = flipped_tokens[0]
    cfg = tokens_cfg(out, val_index=str(out / "val.json"))
    rows = read_token_split(str(out / "train.json")).rows
    parts = [build_train_loader(cfg, 2, rank, 2, seed=0).epoch_rows(0) for rank in (0, 1)]
    assert not set(rows.images[parts[0]].tolist()) & set(rows.images[parts[1]].tolist())
    val_rows = read_token_split(str(out / "val.json")).rows
    seen = [torch.cat([i for i, _ in build_val_loader(cfg, 4, rank, 2)]) for rank in (0, 1)]
    assert torch.equal(torch.cat(seen), torch.from_numpy(np.array(val_rows.tokens)).long()) and len(val_rows) == 6
    assert val_rows.labels.tolist() == [i % PHOTOS for i in range(6)]


def test_cli_refuses_a_missing_ckpt_in_one_line(tmp_path):
    result = run_entry_point(["-m", "openmagvit2.tokenize", f"out={tmp_path}", f"hydra.run.dir={tmp_path / 'h'}"],
                             timeout=120)
    assert result.returncode == 2 and result.stderr.strip().splitlines() == [
        "tokenize: ckpt is required: python -m openmagvit2.tokenize ckpt=<tokenizer> data=<source> out=<output "
        "folder>."]
