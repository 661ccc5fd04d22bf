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


# sRGB's primaries as an ICC profile states them (XYZ, adapted to D50)
SRGB_PRIMARIES = ((0.4361, 0.2225, 0.0139), (0.3851, 0.7169, 0.0971), (0.1431, 0.0606, 0.7141))


def rgb_icc_profile(primaries=SRGB_PRIMARIES, gamma: float = 2.2, description: str = "test RGB") -> bytes:
    """A minimal ICC v2 RGB matrix/TRC display profile: the red, green and blue colorants (XYZ,
    D50) and one gamma for all three channels. With other primaries than sRGB's it stands for a
    wide-gamut or simply wrong profile, which a colour-managed reader must apply."""
    def s15(value: float) -> bytes:
        return struct.pack(">i", round(value * 65536))

    def xyz(values) -> bytes:
        return b"XYZ " + b"\0" * 4 + b"".join(s15(v) for v in values)

    ascii_text = description.encode("ascii") + b"\0"
    desc = b"desc" + b"\0" * 4 + struct.pack(">I", len(ascii_text)) + ascii_text + b"\0" * 8 + b"\0" * 3 + b"\0" * 67
    curve = b"curv" + b"\0" * 4 + struct.pack(">IH", 1, round(gamma * 256)) + b"\0\0"
    tags = [(b"desc", desc), (b"wtpt", xyz((0.9642, 1.0, 0.8249))), (b"cprt", b"text" + b"\0" * 4 + b"none\0"),
            (b"rXYZ", xyz(primaries[0])), (b"gXYZ", xyz(primaries[1])), (b"bXYZ", xyz(primaries[2])),
            (b"rTRC", curve), (b"gTRC", curve), (b"bTRC", curve)]
    offset = 128 + 4 + 12 * len(tags)
    table, body = b"", b""
    for signature, data in tags:
        data += b"\0" * (-len(data) % 4)
        table += signature + struct.pack(">II", offset + len(body), len(data))
        body += data
    size = offset + len(body)
    header = (struct.pack(">I", size) + b"\0" * 4 + bytes((2, 0x10, 0, 0)) + b"mntrRGB XYZ " + b"\0" * 12 + b"acsp"
              + b"\0" * 24 + struct.pack(">I", 0) + xyz((0.9642, 1.0, 0.8249))[8:] + b"\0" * 48)
    assert len(header) == 128
    return header + struct.pack(">I", len(tags)) + table + body
