"""Generate test images in memory (no binary fixtures in the repository)."""
from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from django.core.files.uploadedfile import SimpleUploadedFile
from PIL import Image, TiffImagePlugin


def encode(image: Image.Image, fmt: str, **params) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **params)
    return buffer.getvalue()


def pattern(size=(96, 64), seed: int = 0) -> Image.Image:
    """A deterministic RGB image with texture (so JPEGs are not trivially small)."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    return Image.fromarray(pixels, "RGB")


def jpeg(size=(96, 64), seed: int = 0, **params) -> bytes:
    return encode(pattern(size, seed), "JPEG", quality=90, **params)


def png(size=(96, 64), seed: int = 0) -> bytes:
    return encode(pattern(size, seed), "PNG")


def two_tone(size=(120, 60), left=(255, 0, 0), right=(0, 0, 255)) -> Image.Image:
    """Left half one colour, right half another: orientation is easy to check."""
    image = Image.new("RGB", size, right)
    image.paste(left, (0, 0, size[0] // 2, size[1]))
    return image


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_declaring(width: int, height: int) -> bytes:
    """A tiny PNG whose header declares huge dimensions (a decompression-bomb header)."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", zlib.compress(b"\0" * 64))
            + png_chunk(b"IEND", b""))


def zeros_png(width: int, height: int) -> bytes:
    """A real, valid PNG of black pixels: compresses to almost nothing however large it is."""
    row = b"\0" + b"\0" * (width * 3)
    raw = zlib.compress(row * height, 9)
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", raw) + png_chunk(b"IEND", b"")


def upload(name: str, data: bytes, content_type: str = "image/jpeg") -> SimpleUploadedFile:
    return SimpleUploadedFile(name, data, content_type=content_type)


def mpo(primary: Image.Image, *extras: Image.Image) -> bytes:
    """A JPEG with a multi-picture (MPO) index, as cameras and phones write: the primary image,
    then e.g. a large preview or a gain map."""
    return encode(primary.copy(), "MPO", save_all=True, append_images=[extra.copy() for extra in extras])


def tiff_pages(*pages: tuple[Image.Image, int]) -> bytes:
    """A multi-page TIFF: each page with its NewSubfileType (tag 254; 1 = a reduced-resolution copy)."""
    buffer = io.BytesIO()
    with TiffImagePlugin.AppendingTiffWriter(buffer, True) as writer:
        for image, subfile_type in pages:
            image.save(writer, format="TIFF", tiffinfo={254: subfile_type})
            writer.newFrame()
    return buffer.getvalue()
