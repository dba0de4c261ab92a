"""Robust image decoding shared by every data source (folder, shards, converter checks).

Real data sets hold files that a plain ``Image.open(f).convert("RGB")`` gets wrong or dies on. This module turns
every *valid* image into an 8-bit RGB ``PIL.Image`` and raises :class:`CorruptImageError` for every *broken* one,
so that callers can skip and count it instead of crashing a run:

- CMYK / YCbCr / LAB JPEGs: converted to RGB by PIL's colour conversion.
- Grayscale (``L``, ``1``) and palette (``P``) images: expanded to RGB; palette transparency is honoured.
- RGBA / LA / palette with transparency: alpha-composited onto a white background (transparent pixels often hold
  garbage colour values that ``convert("RGB")`` would expose).
- 16-bit grayscale PNGs (``I;16``, ``I``): rescaled from 0..65535 to 0..255; PIL's own conversion clips them to 255.
- 32-bit float images (``F``): assumed in [0, 1] and rescaled.
- Truncated or corrupt files, zero-byte files, non-images: :class:`CorruptImageError`.
- A file that was listed but is gone when read: :class:`MissingImageError` (not corrupt: files are disappearing).
- Hostile sizes, checked from the header *before* any pixel is decoded (``ImageLimits``): more than ``max_pixels``
  pixels (:class:`ImageTooLargeError`; default PIL's own bomb threshold, whose warning PIL only *warns* about) or
  a side ratio above ``max_aspect_ratio`` (:class:`ExtremeAspectRatioError`; a 1x4000 strip would otherwise be
  resized to 1,024,000x256).

All four errors derive from :class:`UnusableImageError`, whose ``counter`` names the ``stats()`` key the loaders
count it under.

EXIF orientation is deliberately *not* applied, matching torchvision's ``ImageFolder`` and the reference recipe.
"""

from __future__ import annotations

import io
import os
import warnings
from dataclasses import dataclass
from typing import Union

import numpy as np
from PIL import Image, UnidentifiedImageError

ImageSource = Union[bytes, bytearray, memoryview, str, os.PathLike]

_WHITE = (255, 255, 255)


class UnusableImageError(Exception):
    """An input the loaders skip (and count under ``counter``) instead of training on it."""

    counter = "skipped_corrupt"


class CorruptImageError(UnusableImageError):
    """An input that cannot be decoded into an image (truncated, corrupt, empty, or not an image)."""

    counter = "skipped_corrupt"


class MissingImageError(UnusableImageError):
    """A file that was listed when the folder was scanned but does not exist any more."""

    counter = "missing_files"


class ImageTooLargeError(UnusableImageError):
    """An image whose header announces more than ``ImageLimits.max_pixels`` pixels (not decoded)."""

    counter = "skipped_too_large"


class ExtremeAspectRatioError(UnusableImageError):
    """An image whose long side is more than ``ImageLimits.max_aspect_ratio`` times its short side (not decoded)."""

    counter = "skipped_aspect"


# PIL's own decompression-bomb threshold (``Image.MAX_IMAGE_PIXELS``, ~89.5 MP): above it PIL only warns, at twice
# it PIL refuses. Our cap is checked from the header and acts as an error at the configured value.
DEFAULT_MAX_PIXELS = 89_478_485
DEFAULT_MAX_ASPECT_RATIO = 10.0


@dataclass(frozen=True)
class ImageLimits:
    """Caps checked from an image's header before decoding (``data.max_pixels``, ``data.max_aspect_ratio``)."""

    max_pixels: int = DEFAULT_MAX_PIXELS
    max_aspect_ratio: float = DEFAULT_MAX_ASPECT_RATIO

    def check(self, width: int, height: int) -> None:
        if width * height > self.max_pixels:
            raise ImageTooLargeError(f"{width}x{height} = {width * height:,} pixels, above data.max_pixels="
                                     f"{self.max_pixels:,}")
        if min(width, height) >= 1 and max(width, height) > self.max_aspect_ratio * min(width, height):
            raise ExtremeAspectRatioError(f"{width}x{height} has a side ratio of "
                                          f"{max(width, height) / min(width, height):.1f}, above "
                                          f"data.max_aspect_ratio={self.max_aspect_ratio:g}")


def _open(source: ImageSource) -> Image.Image:
    if isinstance(source, (bytes, bytearray, memoryview)):
        if len(source) == 0:
            raise CorruptImageError("empty file (0 bytes)")
        return Image.open(io.BytesIO(bytes(source)))
    return Image.open(source)


def _to_rgb(image: Image.Image) -> Image.Image:
    """Convert a loaded image of any PIL mode to 8-bit RGB (see the module docstring for the rules)."""
    mode = image.mode
    if mode == "RGB":
        return image
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        array = np.asarray(image, dtype=np.float64)
        # 16-bit PNGs hold 0..65535; ``I`` images from other formats may already be 0..255.
        peak = 65535.0 if array.max(initial=0) > 255 or mode.startswith("I;16") else 255.0
        array = np.clip(np.rint(array * (255.0 / peak)), 0, 255).astype(np.uint8)
        return Image.fromarray(array, mode="L").convert("RGB")
    if mode == "F":
        array = np.clip(np.rint(np.asarray(image, dtype=np.float64) * 255.0), 0, 255).astype(np.uint8)
        return Image.fromarray(array, mode="L").convert("RGB")
    if mode == "P":
        has_alpha = "transparency" in image.info or image.palette.mode == "RGBA"
        image = image.convert("RGBA" if has_alpha else "RGB")
        mode = image.mode
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, _WHITE + (255,))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def decode_image(source: ImageSource, draft_size: int | None = None,
                 limits: ImageLimits = ImageLimits()) -> Image.Image:
    """Decode ``source`` (encoded bytes or a file path) into an 8-bit RGB image.

    ``draft_size``: for JPEGs, let libjpeg downscale by 1/2, 1/4 or 1/8 while decoding (``PIL.Image.draft``) as long
    as both sides stay >= ``draft_size`` pixels; much faster for large photos that are resized down afterwards anyway,
    with slightly different (DCT-domain) filtering. ``None`` decodes at full resolution.

    ``limits``: size and side-ratio caps, checked from the header before decoding.

    Raises an :class:`UnusableImageError` (corrupt, missing, too large, extreme aspect ratio) for anything that is not
    a decodable image within the limits.
    """
    try:
        with warnings.catch_warnings():
            # A truncated file or a broken EXIF block warns before it fails; the failure is what we act on. PIL's
            # DecompressionBombWarning is replaced by ``limits`` (an error at the configured size), here only.
            warnings.simplefilter("ignore")
            image = _open(source)
            limits.check(*image.size)
            if draft_size is not None and image.format == "JPEG":
                image.draft("RGB", (draft_size, draft_size))
            image.load()
            rgb = _to_rgb(image)
    except UnusableImageError:
        raise
    except (FileNotFoundError, NotADirectoryError) as error:
        raise MissingImageError(f"file not found ({error.strerror})") from error
    except Image.DecompressionBombError as error:
        raise ImageTooLargeError(str(error)) from error
    except UnidentifiedImageError as error:
        raise CorruptImageError("not a recognised image file") from error
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError, ZeroDivisionError) as error:
        raise CorruptImageError(f"{type(error).__name__}: {error}") from error
    if rgb.width < 1 or rgb.height < 1:
        raise CorruptImageError(f"image has no pixels ({rgb.width}x{rgb.height})")
    return rgb
