"""Video checkpoints: a released-layout file built here from our modules (EMA and raw, strict), our own format,
inflation from an image tokenizer (in memory, and from released 2D files with EMA or raw weights), and init_from."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from openmagvit2 import Tokenizer, VideoTokenizer
from openmagvit2.losses import NLayerDiscriminator3D
from openmagvit2.models import video_model_preset
from openmagvit2.io.safe_load import UnsafeCheckpointError
from openmagvit2.models.loading import CheckpointMismatchError
from openmagvit2.models.inflate import inflate_state
from openmagvit2.models.loading import ema_key
from openmagvit2.models.video_init import initialise_video_from_checkpoint

TINY = video_model_preset("video_tiny")
IMAGE_TINY = {"ch": 32, "ch_mult": [1, 2, 2, 2], "num_res_blocks": 1, "adaptive_norm": True}


def randomised(module: nn.Module, seed: int) -> nn.Module:
    """Every parameter moved by seeded noise, so that copies, norms and biases are all distinguishable."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.05)
    return module


def released_layout(raw: nn.Module, ema: nn.Module, discriminator: nn.Module | None = None) -> dict:
    """`{"state_dict": ...}` as the released Lightning files store it (REFERENCE-VIDEO §3): raw generator keys,
    LPIPS and discriminator keys, and `model_ema.<dot-less name>` for every trainable generator/D parameter."""
    state = dict(raw.state_dict())
    state["loss.perceptual_loss.scaling_layer.shift"] = torch.zeros(1, 3, 1, 1)
    if discriminator is not None:
        state.update({f"loss.discriminator.{key}": value for key, value in discriminator.state_dict().items()})
        state.update({ema_key(f"loss.discriminator.{key}"): value.clone()
                      for key, value in discriminator.named_parameters()})
    state["model_ema.decay"] = torch.tensor(0.999)
    state["model_ema.num_updates"] = torch.tensor(-1, dtype=torch.int32)
    state.update({ema_key(key): value for key, value in ema.state_dict().items()})
    return {"state_dict": state}


def same_weights(a: nn.Module, b: nn.Module) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))


@pytest.fixture
def video_pair() -> tuple[VideoTokenizer, VideoTokenizer]:
    torch.manual_seed(0)
    return randomised(VideoTokenizer(**TINY), 1), randomised(VideoTokenizer(**TINY), 2)


@pytest.mark.parametrize("model", [None, "video_tiny", dict(TINY)])
def test_released_layout_loads_ema_and_raw_strictly(tmp_path: Path, video_pair, model) -> None:
    raw, ema = video_pair
    torch.manual_seed(3)
    path = tmp_path / "video.ckpt"
    torch.save(released_layout(raw, ema, NLayerDiscriminator3D(channels=8)), path)
    loaded_ema = VideoTokenizer.from_checkpoint(path, model=model)
    loaded_raw = VideoTokenizer.from_checkpoint(path, model=model, use_ema=False)
    assert same_weights(loaded_ema, ema) and same_weights(loaded_raw, raw)
    assert not loaded_ema.training and loaded_ema.hparams == raw.hparams


def test_missing_and_unexpected_generator_keys_are_named(tmp_path: Path, video_pair) -> None:
    raw, ema = video_pair
    checkpoint = released_layout(raw, ema)
    del checkpoint["state_dict"]["decoder.adaptive.0.beta.bias"]
    torch.save(checkpoint, tmp_path / "missing.ckpt")
    with pytest.raises(CheckpointMismatchError, match=r"lacks decoder\.adaptive\.0\.beta\.bias \(1 missing generator key"):
        VideoTokenizer.from_checkpoint(tmp_path / "missing.ckpt", use_ema=False)
    del checkpoint["state_dict"][ema_key("decoder.adaptive.0.beta.bias")]
    torch.save(checkpoint, tmp_path / "missing_ema.ckpt")
    with pytest.raises(CheckpointMismatchError, match=r"model_ema\.decoderadaptive0betabias"):
        VideoTokenizer.from_checkpoint(tmp_path / "missing_ema.ckpt", model="video_tiny")

    checkpoint = released_layout(raw, ema)
    checkpoint["state_dict"]["encoder.extra.conv_1.weight"] = torch.zeros(1)
    torch.save(checkpoint, tmp_path / "unexpected.ckpt")
    with pytest.raises(CheckpointMismatchError, match=r"has encoder\.extra\.conv_1\.weight which the model lacks"):
        VideoTokenizer.from_checkpoint(tmp_path / "unexpected.ckpt", use_ema=False)
    torch.save(released_layout(raw, ema), tmp_path / "ok.ckpt")
    with pytest.raises(CheckpointMismatchError, match="has shape"):
        VideoTokenizer.from_checkpoint(tmp_path / "ok.ckpt", model={**TINY, "ch": 64}, use_ema=False)


def test_our_format_loads_ema_and_raw(tmp_path: Path, video_pair) -> None:
    raw, ema = video_pair
    path = tmp_path / "step_00000010.pt"
    torch.save({"format": "openmagvit2", "tokenizer_hparams": raw.hparams, "generator": raw.state_dict(),
                "generator_ema": {f"module.{key}": value for key, value in ema.state_dict().items()}}, path)
    assert same_weights(VideoTokenizer.from_checkpoint(path), ema)
    assert same_weights(VideoTokenizer.from_checkpoint(path, use_ema=False), raw)


def test_an_image_checkpoint_is_pointed_to_inflation(tmp_path: Path) -> None:
    image = Tokenizer(**IMAGE_TINY)
    torch.save({"state_dict": image.state_dict()}, tmp_path / "image.ckpt")
    with pytest.raises(ValueError, match=r"holds an image tokenizer .* VideoTokenizer\.inflate_from"):
        VideoTokenizer.from_checkpoint(tmp_path / "image.ckpt")


def check_equals_image_model(video: VideoTokenizer, image: Tokenizer) -> None:
    """On t = 1 the inflated model is the 2D model: same latent (to rounding), same tokens, same reconstruction."""
    images = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(5)) * 2 - 1
    video.eval(), image.eval()
    with torch.no_grad():
        torch.testing.assert_close(video.encoder(images[:, :, None])[:, :, 0], image.encoder(images),
                                   rtol=1e-5, atol=1e-5)
        quantized, indices = video.encode(images[:, :, None])
        image_quantized, image_indices = image.encode(images)
        assert torch.equal(indices[:, 0], image_indices)
        torch.testing.assert_close(video.decode(quantized)[:, :, 0], image.decode(image_quantized),
                                   rtol=1e-5, atol=1e-5)


def test_inflated_model_on_one_frame_equals_the_image_model() -> None:
    torch.manual_seed(0)
    image = randomised(Tokenizer(**IMAGE_TINY), 4)
    video = VideoTokenizer.inflate_from(image)
    check_equals_image_model(video, image)
    state = video.state_dict()
    kernel = state["encoder.down.0.block.0.conv1.conv_1.weight"]
    assert torch.equal(kernel[:, :, 2], image.state_dict()["encoder.down.0.block.0.conv1.weight"])
    assert not kernel[:, :, :2].any()
    # Temporal upsampler (bt = 2): the 2D [4C] block is repeated for both temporal sub-positions (§4.3).
    up_2d = image.state_dict()["decoder.up.3.upsample.conv1.weight"]
    up_3d = state["decoder.up.3.upsample.conv1.conv_1.weight"]
    assert torch.equal(up_3d[:, :, 2], up_2d.repeat(2, 1, 1, 1)) and not up_3d[:, :, :2].any()
    assert torch.equal(state["decoder.up.3.upsample.conv1.conv_1.bias"],
                       image.state_dict()["decoder.up.3.upsample.conv1.bias"].repeat(2))
    clip = torch.rand(1, 3, 9, 16, 16) * 2 - 1
    with torch.no_grad():
        assert video(clip).reconstruction.shape == clip.shape


@pytest.mark.parametrize("use_ema", [True, False])
def test_inflation_from_a_released_image_file(tmp_path: Path, use_ema: bool) -> None:
    torch.manual_seed(0)
    raw, ema = randomised(Tokenizer(**IMAGE_TINY), 6), randomised(Tokenizer(**IMAGE_TINY), 7)
    path = tmp_path / "imagenet_128_L.ckpt"
    torch.save(released_layout(raw, ema), path)
    video = VideoTokenizer.inflate_from(path, use_ema=use_ema)
    check_equals_image_model(video, ema if use_ema else raw)
    assert same_weights(video, VideoTokenizer.inflate_from(ema if use_ema else raw))


def test_inflation_refuses_mismatched_image_tokenizers() -> None:
    with pytest.raises(ValueError, match="no adaptive GroupNorm"):
        VideoTokenizer.inflate_from(Tokenizer(**{**IMAGE_TINY, "adaptive_norm": False}))
    with pytest.raises(CheckpointMismatchError, match=r"lacks encoder\.down\.2\.downsample\.weight"):
        inflate_state(Tokenizer(**{**IMAGE_TINY, "ch_mult": [1, 2, 2]}).state_dict(), VideoTokenizer(**TINY))


def test_init_from_inflates_an_image_file_and_loads_a_video_file(tmp_path: Path, video_pair) -> None:
    torch.manual_seed(0)
    image_raw, image_ema = randomised(Tokenizer(**IMAGE_TINY), 8), randomised(Tokenizer(**IMAGE_TINY), 9)
    torch.save(released_layout(image_raw, image_ema), tmp_path / "image.ckpt")
    target, discriminator = VideoTokenizer(**TINY), NLayerDiscriminator3D(channels=8)
    message = initialise_video_from_checkpoint(tmp_path / "image.ckpt", target, discriminator)
    assert "inflated from the image tokenizer's ema weights" in message
    assert same_weights(target, VideoTokenizer.inflate_from(image_ema))

    raw, ema = video_pair
    source_discriminator = randomised(NLayerDiscriminator3D(channels=8), 10)
    torch.save(released_layout(raw, ema, source_discriminator), tmp_path / "video.ckpt")
    message = initialise_video_from_checkpoint(tmp_path / "video.ckpt", target, discriminator, use_ema=False)
    assert message.startswith("video generator (raw weights) and 3D discriminator")
    assert same_weights(target, raw) and same_weights(discriminator, source_discriminator)


class Hostile:
    """Unpickling this would run a shell command (it must never be called)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        import os

        return os.system, (f"touch {self.marker}",)


def test_foreign_objects_load_inert_and_code_never_runs(tmp_path: Path, video_pair) -> None:
    raw, ema = video_pair
    checkpoint = released_layout(raw, ema)
    checkpoint["hyper_parameters"] = Path("not/a/tensor")  # stands in for the Lightning objects of a real .ckpt
    torch.save(checkpoint, tmp_path / "lightning.ckpt")
    loaded = VideoTokenizer.from_checkpoint(tmp_path / "lightning.ckpt", use_ema=False)
    for key, value in raw.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key

    marker = tmp_path / "ran"
    checkpoint["hyper_parameters"] = Hostile(marker)
    torch.save(checkpoint, tmp_path / "hostile.ckpt")
    with pytest.raises(UnsafeCheckpointError):
        VideoTokenizer.from_checkpoint(tmp_path / "hostile.ckpt")
    assert not marker.exists()
