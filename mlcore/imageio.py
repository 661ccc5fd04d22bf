"""Image decoding and resizing shared by the training cache and inference (same code path)."""
from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageOps

RESIZE_METHOD = "PIL.Image.resize BILINEAR (antialiased) to square input_size, no crop"


class ImageDecodeError(ValueError):
    """Raised when bytes cannot be decoded into an image."""


def to_rgb_uint8(img: Image.Image) -> np.ndarray:
    """PIL image (any mode, EXIF orientation applied first) -> RGB uint8 HxWx3."""
    try:
        img = ImageOps.exif_transpose(img)
    except Exception:  # broken EXIF must not break decoding
        pass
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        arr = np.asarray(img, dtype=np.float64)
        mx = arr.max() if arr.size else 0
        scale = 255.0 / (65535.0 if mx > 255 else 255.0)
        arr = np.clip(arr * scale, 0, 255).astype(np.uint8)
        return np.repeat(arr[..., None], 3, axis=2)
    if mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        arr = (arr - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(arr)
        return np.repeat(arr.astype(np.uint8)[..., None], 3, axis=2)
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in img.info):
        img = img.convert("RGBA")
        bg = Image.new("RGBA", img.size, (255, 255, 255, 255))
        img = Image.alpha_composite(bg, img)
    if img.mode != "RGB":
        img = img.convert("RGB")
    arr = np.asarray(img, dtype=np.uint8)
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise ImageDecodeError(f"unexpected decoded shape {arr.shape}")
    return np.ascontiguousarray(arr)


def decode_bytes(data: bytes, draft_min_side: int | None = None) -> np.ndarray:
    """RGB uint8 pixels of an encoded image. With ``draft_min_side``, a large JPEG is decoded at a
    reduced size (PIL draft mode) that keeps both sides at least that long."""
    if not data:
        raise ImageDecodeError("empty image data")
    try:
        with Image.open(io.BytesIO(data)) as img:
            if draft_min_side and img.format == "JPEG" and min(img.size) >= 2 * draft_min_side:
                img.draft(img.mode, (draft_min_side, draft_min_side))
            img.load()
            return to_rgb_uint8(img)
    except ImageDecodeError:
        raise
    except Exception as exc:  # PIL raises many types
        raise ImageDecodeError(f"cannot decode image: {exc}") from exc


def decode_file(path) -> np.ndarray:
    try:
        with Image.open(path) as img:
            img.load()
            return to_rgb_uint8(img)
    except Exception as exc:
        raise ImageDecodeError(f"cannot decode {path}: {exc}") from exc


def resize_rgb(arr: np.ndarray, size: int) -> np.ndarray:
    """Resize RGB uint8 to size x size with PIL bilinear (antialiased on downscale)."""
    if arr.shape[0] == size and arr.shape[1] == size:
        return arr
    img = Image.fromarray(arr, mode="RGB") if arr.dtype == np.uint8 else Image.fromarray(arr.astype(np.uint8))
    return np.asarray(img.resize((size, size), Image.BILINEAR), dtype=np.uint8)
