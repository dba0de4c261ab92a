"""Tokenizer architecture: parameter counts, shapes at several resolutions, DCR upsampling, adaptive norm, configs."""
from __future__ import annotations

import dataclasses
import json

import pytest
import torch
import torch.nn.functional as F
from conftest import CONF_DIR, compose_config

from openmagvit2 import Tokenizer
from openmagvit2.config import ConfigError, ModelConfig, QuantizerConfig, model_preset
from openmagvit2.models.blocks import AdaptiveGroupNorm, depth_to_space_dcr

RELEASED = ["openmagvit2_v1_128_base", "openmagvit2_v1_256_base", "openmagvit2_v3_128_large",
            "openmagvit2_v3_256_large"]
# Encoder + decoder parameters of the released architectures (REFERENCE.md), in millions.
RELEASED_PARAMS_M = {"openmagvit2_v1_128_base": 63.57, "openmagvit2_v1_256_base": 65.49,
                     "openmagvit2_v3_128_large": 112.02, "openmagvit2_v3_256_large": 115.13}


def meta_tokenizer(name: str) -> Tokenizer:
    """The full-size architecture on the meta device: shapes without memory or compute."""
    with torch.device("meta"):
        return Tokenizer(**model_preset(name))


def tiny(**overrides) -> Tokenizer:
    torch.manual_seed(0)
    return Tokenizer(**{**model_preset("tiny"), **overrides})


@pytest.mark.parametrize("name", RELEASED)
def test_released_parameter_counts(name: str) -> None:
    tokenizer = meta_tokenizer(name)
    total = sum(p.numel() for p in tokenizer.parameters())
    assert round(total / 1e6, 2) == RELEASED_PARAMS_M[name]
    assert list(tokenizer.quantizer.parameters()) == []


@pytest.mark.parametrize(("name", "train_px"), [("openmagvit2_v1_128_base", 128), ("openmagvit2_v1_256_base", 256),
                                                ("openmagvit2_v3_128_large", 128), ("openmagvit2_v3_256_large", 256)])
def test_token_grid_at_training_size_and_at_512(name: str, train_px: int) -> None:
    tokenizer = meta_tokenizer(name).eval()
    for size_px, grid in [(train_px, 16), (512, 512 // tokenizer.downsample_factor)]:
        images = torch.zeros(2, 3, size_px, size_px, device="meta")
        quantized, indices = tokenizer.encode(images)
        assert quantized.shape == (2, 18, grid, grid) and indices.shape == (2, grid, grid)
        assert tokenizer.decode(quantized).shape == (2, 3, size_px, size_px)
    assert tokenizer.downsample_factor == train_px // 16


def test_tiny_runs_at_several_sizes_and_trains() -> None:
    tokenizer = tiny().train()
    for height, width in [(16, 16), (16, 48), (64, 32)]:
        with torch.no_grad():
            out = tokenizer(torch.rand(1, 3, height, width) * 2 - 1)
        assert out.reconstruction.shape == (1, 3, height, width)
        assert out.quantizer.indices.shape == (1, height // 4, width // 4)
    out = tokenizer(torch.rand(2, 3, 32, 32) * 2 - 1)
    loss = out.reconstruction.abs().mean() + 0.1 * out.quantizer.entropy_loss + 0.25 * out.quantizer.commitment
    loss.backward()
    assert tokenizer.decoder.conv_out.weight.grad.abs().sum() > 0
    assert tokenizer.encoder.conv_in.weight.grad.abs().sum() > 0  # the straight-through path reaches the encoder


@pytest.mark.slow
def test_tiny_overfits_one_batch() -> None:
    """A few Adam steps on one batch must cut the L1 error well below the start: the model learns."""
    tokenizer = tiny().train()
    images = torch.nn.functional.interpolate(torch.rand(2, 3, 4, 4) * 2 - 1, size=16, mode="bilinear")
    optimizer = torch.optim.Adam(tokenizer.parameters(), lr=2e-3)
    losses = []
    for _ in range(25):
        out = tokenizer(images, compute_losses=True)
        l1 = (out.reconstruction - images).abs().mean()
        (l1 + 0.25 * out.quantizer.commitment).backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(l1.item())
    assert losses[-1] < 0.5 * losses[0]


@pytest.mark.parametrize("adaptive_norm", [False, True])
@pytest.mark.parametrize("bit_order", ["lsb_first", "msb_first"])
def test_decode_indices_equals_decode_quantized(adaptive_norm: bool, bit_order: str) -> None:
    tokenizer = tiny(adaptive_norm=adaptive_norm, bit_order=bit_order).eval()
    images = torch.rand(2, 3, 32, 48) * 2 - 1
    with torch.no_grad():
        quantized, indices = tokenizer.encode(images)
        torch.testing.assert_close(tokenizer.decode_indices(indices), tokenizer.decode(quantized))
        torch.testing.assert_close(tokenizer(images).reconstruction, tokenizer.decode(quantized))


def test_depth_to_space_is_dcr_not_pixel_shuffle() -> None:
    channels, height, width = 3, 2, 3
    x = torch.randn(1, 4 * channels, height, width)
    y = depth_to_space_dcr(x)
    assert y.shape == (1, channels, 2 * height, 2 * width)
    for c in range(channels):
        for a in range(2):
            for b in range(2):
                torch.testing.assert_close(y[0, c, a::2, b::2], x[0, (2 * a + b) * channels + c])
    assert not torch.equal(y, F.pixel_shuffle(x, 2))
    # the two orders agree after permuting input channels new[4c + k] = old[k * C + c] (REFERENCE-DETAILED §1.2)
    permuted = x.reshape(1, 4, channels, height, width).transpose(1, 2).reshape(1, 4 * channels, height, width)
    torch.testing.assert_close(F.pixel_shuffle(permuted, 2), y)


def test_adaptive_group_norm_uses_unbiased_spatial_statistics() -> None:
    torch.manual_seed(0)
    norm = AdaptiveGroupNorm(z_channels=4, channels=32)
    x, quantized = torch.randn(2, 32, 8, 8), torch.randn(2, 4, 3, 5)
    std = (quantized.flatten(2).var(dim=-1, unbiased=True) + 1e-6).sqrt()
    mean = quantized.flatten(2).mean(dim=-1)
    expected = (F.group_norm(x, 32, eps=1e-6) * norm.gamma(std)[:, :, None, None] + norm.beta(mean)[:, :, None, None])
    torch.testing.assert_close(norm(x, quantized), expected)
    assert dict(norm.named_parameters()).keys() == {"gamma.weight", "gamma.bias", "beta.weight", "beta.bias"}


def test_hparams_are_json_and_rebuild_the_model() -> None:
    tokenizer = tiny(adaptive_norm=True, bit_order="msb_first")
    hparams = json.loads(json.dumps(tokenizer.hparams))
    assert hparams["bit_order"] == "msb_first" and hparams["adaptive_norm"] is True
    assert hparams["codebook_bits"] == 18 and hparams["entropy_temperature"] == 0.01
    rebuilt = Tokenizer(**hparams)
    assert rebuilt.hparams == tokenizer.hparams
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {k: v.shape for k, v in
                                                                     tokenizer.state_dict().items()}


@pytest.mark.parametrize("name", sorted(p.stem for p in (CONF_DIR / "model").glob("*.yaml")))
def test_every_shipped_model_builds_from_its_name(name: str) -> None:
    with torch.device("meta"):
        tokenizer = Tokenizer(**model_preset(name))
    assert tokenizer.hparams == {**model_preset(name), **dataclasses.asdict(QuantizerConfig())}


@pytest.mark.parametrize(("experiment", "model"), [("in128_base", "openmagvit2_v1_128_base"),
                                                   ("in256_base", "openmagvit2_v1_256_base"),
                                                   ("in128_large", "openmagvit2_v3_128_large"),
                                                   ("in256_large", "openmagvit2_v3_256_large"), ("demo", "tiny")])
def test_composed_experiments_build_their_tokenizer(experiment: str, model: str) -> None:
    cfg = compose_config([f"experiment={experiment}"])
    with torch.device("meta"):
        tokenizer = Tokenizer.from_config(cfg.model, cfg.quantizer)
    assert tokenizer.hparams == {**model_preset(model), **dataclasses.asdict(QuantizerConfig())}


def test_from_config_applies_quantizer_options() -> None:
    for quantizer in (QuantizerConfig(codebook_bits=10, entropy_across_ranks=True),
                      {"codebook_bits": 10, "entropy_across_ranks": True}):
        tokenizer = Tokenizer.from_config(ModelConfig(ch=32, ch_mult=[1, 2], num_res_blocks=1), quantizer)
        assert tokenizer.encoder.conv_out.out_channels == 10 and tokenizer.decoder.conv_in.in_channels == 10
        assert tokenizer.quantizer.codebook_bits == 10 and tokenizer.quantizer.entropy_across_ranks


def test_user_errors_say_what_to_fix() -> None:
    with pytest.raises(ConfigError, match=r"^model\.ch=48 is invalid: expected a positive multiple of 32"):
        Tokenizer(ch=48, ch_mult=[1, 2], num_res_blocks=1)
    with pytest.raises(TypeError, match="dropout"):
        Tokenizer(ch=32, ch_mult=[1, 2], num_res_blocks=1, dropout=0.1)
    with pytest.raises(TypeError, match="positional"):
        Tokenizer(32, [1, 2], 1)
    with pytest.raises(ValueError, match="multiple of the downsampling factor 4"):
        tiny().encode(torch.zeros(1, 3, 30, 32))
    with pytest.raises(ValueError, match="shape"):
        tiny().encode(torch.zeros(1, 1, 32, 32))
    with pytest.raises(ConfigError, match="model='imagenet_256_L' is unknown: use one of .*openmagvit2_v3_256_large"):
        model_preset("imagenet_256_L")
