"""Synthetic image files for tests and benchmarks (imported by tests/ and bench/, not part of the package):
photo-like JPEG folders and the odd/broken files real data has.

Photo-like content: crops of the bundled scikit-image photographs plus a little noise, so JPEG sizes and decode
costs resemble real photographs (ImageNet's average is ~400x350 px, ~110 kB).
"""

from __future__ import annotations

import io
import multiprocessing
import os
import struct
import zlib

import numpy as np
from PIL import Image

from openmagvit2.data.sample import PHOTOS, load_photos


def png_rgb16(array: np.ndarray) -> bytes:
    """Encode uint16 ``h w 3`` as a 16-bit-per-channel RGB PNG (PIL cannot write those)."""
    height, width, _ = array.shape
    raw = b"".join(b"\x00" + array[row].astype(">u2").tobytes() for row in range(height))

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    header = struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


def _encode(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def odd_images(seed: int = 0) -> dict[str, bytes]:
    """Valid but unusual files, by file name: CMYK JPEG, grayscale/palette/RGBA/16-bit PNGs, a tiny image."""
    rng = np.random.default_rng(seed)
    rgb = Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8))
    gray16 = (np.linspace(0, 65535, 40 * 48).reshape(40, 48)).astype(np.uint16)
    palette = rgb.convert("P", palette=Image.ADAPTIVE, colors=16)
    palette.info["transparency"] = 0
    rgba = rgb.convert("RGBA")
    rgba.putalpha(Image.fromarray(rng.integers(0, 256, (40, 48), dtype=np.uint8)))
    return {
        "cmyk.jpg": _encode(rgb.convert("CMYK"), "JPEG"),
        "gray.png": _encode(rgb.convert("L"), "PNG"),
        "gray.jpg": _encode(rgb.convert("L"), "JPEG"),
        "palette.png": _encode(palette, "PNG"),
        "palette.gif": _encode(rgb.convert("P", palette=Image.ADAPTIVE, colors=32), "GIF"),
        "rgba.png": _encode(rgba, "PNG"),
        "gray16.png": _encode(Image.fromarray(gray16), "PNG"),
        "rgb16.png": png_rgb16(np.stack([gray16, gray16 // 2, 65535 - gray16], axis=-1)),
        "tiny.jpg": _encode(rgb.resize((3, 5)), "JPEG"),
        "bilevel.png": _encode(rgb.convert("1"), "PNG"),
    }


def broken_images(seed: int = 0) -> dict[str, bytes]:
    """Files that cannot be decoded, by file name: truncated JPEG/PNG, empty, random bytes, text named .jpg."""
    rng = np.random.default_rng(seed)
    jpeg = _encode(Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)), "JPEG")
    png = _encode(Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)), "PNG")
    return {
        "truncated.jpg": jpeg[: len(jpeg) // 2],
        "truncated.png": png[: len(png) // 2],
        "empty.jpg": b"",
        "garbage.jpg": rng.integers(0, 256, 2000, dtype=np.uint8).tobytes(),
        "text.jpg": b"this is not an image\n",
    }


def photo_like(rng: np.random.Generator, photos: list[Image.Image], width: int, height: int) -> Image.Image:
    """A ``width`` x ``height`` photo-like image: a random region of a bundled photo, resized, with mild noise."""
    photo = photos[int(rng.integers(len(photos)))]
    scale = rng.uniform(0.5, 1.0)
    box_w, box_h = int(photo.width * scale), int(photo.height * scale)
    left = int(rng.integers(0, photo.width - box_w + 1))
    top = int(rng.integers(0, photo.height - box_h + 1))
    image = photo.resize((width, height), Image.BILINEAR, box=(left, top, left + box_w, top + box_h))
    noisy = np.asarray(image, dtype=np.int16) + rng.integers(-6, 7, (height, width, 3), dtype=np.int16)
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))


def _write_class(root: str, label: int, per_class: int, size_range: tuple[int, int], seed: int,
                 quality: int) -> list[str]:
    rng = np.random.default_rng([seed, label])
    photos = load_photos(sorted(PHOTOS))
    directory = os.path.join(root, f"n{label:08d}")
    os.makedirs(directory, exist_ok=True)
    paths = []
    for number in range(per_class):
        width, height = (int(v) for v in rng.integers(size_range[0], size_range[1] + 1, 2))
        path = os.path.join(directory, f"img_{label:04d}_{number:05d}.JPEG")
        photo_like(rng, photos, width, height).save(path, format="JPEG", quality=quality)
        paths.append(path)
    return paths


def write_image_folder(root: str, num_classes: int, per_class: int, size_range: tuple[int, int] = (300, 500),
                       seed: int = 0, quality: int = 90, workers: int = 1) -> list[str]:
    """Write ``num_classes`` x ``per_class`` photo-like JPEGs as ``root/nXXXXXXXX/<i>.JPEG``; returns their paths.

    Sides are drawn from ``size_range``; ``(333, 500)`` at quality 95 gives ImageNet-like files (~400 px, ~100 kB).
    The content depends only on the arguments, not on ``workers`` (processes writing classes in parallel).
    """
    jobs = [(root, label, per_class, size_range, seed, quality) for label in range(num_classes)]
    if workers > 1:
        with multiprocessing.get_context("fork").Pool(workers) as pool:
            results = pool.starmap(_write_class, jobs)
    else:
        results = [_write_class(*job) for job in jobs]
    return [path for paths in results for path in paths]
