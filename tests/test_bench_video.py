"""bench/video.py: it times train.py's video step (the recipe's config, the real models and step), in seconds."""
from __future__ import annotations

import importlib.util

import pytest
import torch
from omegaconf import OmegaConf

from conftest import ROOT
from openmagvit2.losses import NLayerDiscriminator3D

spec = importlib.util.spec_from_file_location("bench_video", ROOT / "bench" / "video.py")
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)

# 9 frames, not 5: at 5 the 3D discriminator's last layers see 2 frames, where torch 2.14.1's oneDNN bf16 Conv3d
# weight gradient is wrong on the CPU (NaN within a step; docs/benchmarks.md, "Video tokenizer training step").
TINY = ["--batch", "1", "--frames", "9", "--size", "16", "--warmup", "0", "--repeats", "1"]


def test_the_benchmark_composes_the_video_recipe() -> None:
    recipe = OmegaConf.load(ROOT / "conf" / "experiment" / "ucf101_128_large.yaml")
    groups = {key.removeprefix("override /"): value for entry in recipe.defaults for key, value in entry.items()}
    assert f"task={groups['task']}" in bench.RECIPE and f"loss={groups['loss']}" in bench.RECIPE
    assert bench.parse_args([]).batch == recipe.train.batch_size == 2
    assert (bench.parse_args([]).frames, bench.parse_args([]).size) == (recipe.data.frames, recipe.data.image_size)
    cfg = bench.compose_video_config(groups["video_model"], 2, "cpu")
    assert cfg.video_model.name == "openmagvit2_video_128" and cfg.task.name == "video_tokenizer"
    loss = cfg.loss
    assert (loss.gen_loss_weight, loss.lecam_weight, loss.codebook_weight, loss.commit_weight) == (0.3, 0.05, 0.1, 0.25)
    assert loss.perceptual_weight == 0 and loss.disc_start == 0
    assert cfg.optim.lr == cfg.optim.disc_lr == recipe.optim.lr == 1e-4
    assert (cfg.train.ema_decay, list(cfg.optim.betas)) == (0.999, [0.5, 0.9])


def test_a_step_is_the_trainers_gan_step_on_clips() -> None:
    cfg = bench.compose_video_config("video_tiny", 1, "cpu", channels_last=True)
    step = bench.VideoTrainingStep(cfg, torch.device("cpu"))
    assert isinstance(step.gan.discriminator, NLayerDiscriminator3D)
    assert step.tokenizer.last_layer.is_contiguous(memory_format=torch.channels_last_3d)
    before = [p.detach().clone() for p in step.gan.discriminator.parameters()]
    clips = torch.rand(1, 3, 9, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    loss = step(clips)
    assert torch.isfinite(loss) and step.gan.ema.num_updates == 1
    assert float(step.gan.criterion.lecam.ema_real) != 0.0  # the LeCam EMA of the discriminator loss moved
    assert any(not torch.equal(a, b) for a, b in zip(before, step.gan.discriminator.parameters()))
    held = step.held_bytes()
    parameters = sum(p.numel() * 4 for p in [*step.tokenizer.parameters(), *step.gan.discriminator.parameters()])
    assert held > 4 * parameters  # weights, gradients and two Adam moments of both players, plus the EMA copy


def test_the_table_has_every_variant_against_the_baseline_of_the_same_run() -> None:
    report = bench.main([*TINY, "--channels-last", "--bf16", "--no-readers"])
    rows = {row["variant"]: row for row in report["train"]}
    assert list(rows) == ["eager fp32 (baseline)", "channels_last_3d", "bf16 autocast",
                          "channels_last_3d + bf16 autocast"]
    assert rows["eager fp32 (baseline)"]["vs_baseline"] == 1.0
    for row in rows.values():
        assert row["best_s"] > 0 and row["clips_per_s"] == pytest.approx(1 / row["best_s"])
        assert row["vs_baseline"] == pytest.approx(row["best_s"] / rows["eager fp32 (baseline)"]["best_s"])
        assert 0 < row["entropy_share"] < 1 and row["peak_bytes"] > 100 * 2 ** 20


def test_readers_measure_ours_and_name_the_missing_ones() -> None:
    pytest.importorskip("av")
    rows = {row["reader"]: row for row in bench.reader_rows(clips=2)}
    ours = rows["decode_clip (ours: pyav seek + decode, from bytes)"]
    assert ours["clips_per_s"] > 0 and ours["shape"] == (17, 240, 320, 3) and ours["note"] == "frames match ours"
    for name, (module, _) in bench.READERS.items():
        if importlib.util.find_spec(module) is None:
            assert rows[name]["note"] == f"{module} not installed"
