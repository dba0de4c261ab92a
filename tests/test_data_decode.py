"""Robust decoding and the deterministic transforms (openmagvit2/data/decode.py, transforms.py)."""

import io

import numpy as np
import pytest
import torch
from PIL import Image

import warnings

from openmagvit2.data.decode import (CorruptImageError, ExtremeAspectRatioError, ImageLimits, ImageTooLargeError,
                                     MissingImageError, decode_image)
from synthetic_images import broken_images, odd_images, png_rgb16
from openmagvit2.data.transforms import (center_crop_box, resize_short_side, sample_rng, to_model_range,
                                         train_transform, val_transform)


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.mark.parametrize("name", sorted(odd_images()))
def test_valid_but_odd_images_decode_to_rgb(name):
    data = odd_images()[name]
    image = decode_image(data)
    assert image.mode == "RGB"
    expected = (3, 5) if name == "tiny.jpg" else (48, 40)
    assert image.size == expected


@pytest.mark.parametrize("name", sorted(broken_images()))
def test_broken_images_raise_corrupt_image_error(name):
    with pytest.raises(CorruptImageError):
        decode_image(broken_images()[name])


def test_missing_file_is_missing_not_corrupt(tmp_path):
    with pytest.raises(MissingImageError, match="not found") as caught:
        decode_image(str(tmp_path / "absent.jpg"))
    assert not isinstance(caught.value, CorruptImageError) and caught.value.counter == "missing_files"


def test_pixel_cap_is_checked_from_the_header_before_decoding(monkeypatch):
    data = _png(Image.new("L", (400, 300)))
    loads, original_load = [], Image.Image.load
    monkeypatch.setattr(Image.Image, "load", lambda self: loads.append(self.size) or original_load(self))
    with pytest.raises(ImageTooLargeError, match=r"400x300 = 120,000 pixels.*data\.max_pixels=100,000") as caught:
        decode_image(data, limits=ImageLimits(max_pixels=100_000))
    assert caught.value.counter == "skipped_too_large"
    assert loads == []  # refused from the header: no pixel was decoded
    assert decode_image(data, limits=ImageLimits(max_pixels=120_000)).size == (400, 300)
    assert loads


def test_a_bomb_above_pils_threshold_is_refused_and_the_warning_filter_is_untouched():
    # 10000 x 10000 = 100 MP: above PIL's 89.5 MP warning threshold, below its 179 MP error: PIL would only warn.
    data = _png(Image.new("1", (10000, 10000)))
    with pytest.raises(ImageTooLargeError, match="100,000,000 pixels"):
        decode_image(data)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        Image.open(io.BytesIO(data))  # outside decode_image PIL's own warning still fires (nothing global changed)
    assert any(issubclass(w.category, Image.DecompressionBombWarning) for w in caught)


def test_aspect_ratio_cap_refuses_strips_before_resizing():
    strip = _png(Image.new("RGB", (1, 4000)))
    with pytest.raises(ExtremeAspectRatioError, match="side ratio of 4000.0.*max_aspect_ratio=10") as caught:
        decode_image(strip)
    assert caught.value.counter == "skipped_aspect"
    assert decode_image(_png(Image.new("RGB", (100, 1000)))).size == (100, 1000)  # exactly 10: allowed
    assert decode_image(strip, limits=ImageLimits(max_aspect_ratio=4000)).size == (1, 4000)


def test_16bit_grayscale_is_rescaled_not_clipped():
    ramp = np.linspace(0, 65535, 100 * 10).reshape(10, 100).astype(np.uint16)
    rgb = np.asarray(decode_image(_png(Image.fromarray(ramp))))
    # PIL's own convert("RGB") clips everything above 255 to white; a correct rescale keeps the ramp.
    assert rgb[..., 0].min() == 0 and rgb[..., 0].max() == 255
    assert abs(rgb[..., 0].mean() - 127.5) < 2
    assert np.array_equal(rgb[..., 0], rgb[..., 1])


def test_16bit_rgb_png_keeps_channel_values():
    array = np.zeros((4, 4, 3), dtype=np.uint16)
    array[..., 0], array[..., 1], array[..., 2] = 65535, 32896, 0  # 255, 128, 0 after scaling
    rgb = np.asarray(decode_image(png_rgb16(array)))
    assert rgb[0, 0].tolist() == [255, 128, 0]


def test_transparent_pixels_become_white():
    rgba = np.zeros((4, 4, 4), dtype=np.uint8)
    rgba[..., 3] = 0
    rgba[0, 0] = [10, 200, 30, 255]
    rgb = np.asarray(decode_image(_png(Image.fromarray(rgba, mode="RGBA"))))
    assert rgb[1, 1].tolist() == [255, 255, 255]
    assert rgb[0, 0].tolist() == [10, 200, 30]


def test_palette_transparency_is_honoured():
    palette = Image.new("P", (4, 4), 0)
    palette.putpalette([0, 0, 0, 200, 10, 10] + [0] * 762)
    palette.putpixel((0, 0), 1)
    palette.info["transparency"] = 0
    rgb = np.asarray(decode_image(_png(palette)))
    assert rgb[1, 1].tolist() == [255, 255, 255]
    assert rgb[0, 0].tolist() == [200, 10, 10]


def test_cmyk_jpeg_colours_are_converted():
    buffer = io.BytesIO()
    Image.new("CMYK", (16, 16), (0, 255, 255, 0)).save(buffer, format="JPEG", quality=95)  # pure red in CMYK
    red, green, blue = np.asarray(decode_image(buffer.getvalue())).reshape(-1, 3).mean(axis=0)
    assert red > 230 and green < 25 and blue < 25


def test_jpeg_draft_downscales_while_keeping_both_sides_large_enough():
    buffer = io.BytesIO()
    Image.new("RGB", (800, 600), (90, 120, 30)).save(buffer, format="JPEG")
    full = decode_image(buffer.getvalue())
    drafted = decode_image(buffer.getvalue(), draft_size=128)
    assert full.size == (800, 600)
    assert drafted.size == (200, 150)  # 1/4 scale: the smallest libjpeg scale keeping both sides >= 128
    assert drafted.mode == "RGB"


def test_resize_short_side_and_tiny_images():
    assert resize_short_side(Image.new("RGB", (400, 300)), 64).size == (85, 64)
    assert resize_short_side(Image.new("RGB", (3, 5)), 64).size == (64, 107)


def test_train_transform_is_a_function_of_the_rng_key():
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (90, 120, 3), dtype=np.uint8))
    first = train_transform(image, 32, sample_rng(0, 1, 2), hflip=False)
    again = train_transform(image, 32, sample_rng(0, 1, 2), hflip=False)
    other = train_transform(image, 32, sample_rng(0, 1, 3), hflip=False)
    assert first.shape == (3, 32, 32) and first.dtype == torch.uint8
    assert torch.equal(first, again)
    assert not torch.equal(first, other)


def test_hflip_flips_the_same_crop():
    image = Image.fromarray(np.random.default_rng(1).integers(0, 256, (40, 60, 3), dtype=np.uint8))
    # Find a key whose coin says "flip": the crop must then be the mirror of the unflipped one.
    for key in range(20):
        plain = train_transform(image, 40, sample_rng(key), hflip=False)
        flipped = train_transform(image, 40, sample_rng(key), hflip=True)
        if not torch.equal(plain, flipped):
            assert torch.equal(flipped, plain.flip(-1))
            return
    pytest.fail("no key in 0..19 flipped the crop")


def test_val_transform_is_the_centre_crop():
    array = np.random.default_rng(2).integers(0, 256, (32, 48, 3), dtype=np.uint8)
    crop = val_transform(Image.fromarray(array), 32)
    left, top = center_crop_box(48, 32, 32)
    assert (left, top) == (8, 0)
    assert torch.equal(crop, torch.from_numpy(array[:, 8:40]).permute(2, 0, 1))


def test_model_range():
    values = to_model_range(torch.tensor([[[[0, 255, 128]]]], dtype=torch.uint8))
    assert values.dtype == torch.float32
    assert torch.allclose(values, torch.tensor([[[[-1.0, 1.0, 128 / 127.5 - 1]]]]), atol=1e-6)
