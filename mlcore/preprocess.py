"""Image decoding and batching for inference (same code path as the training cache)."""
from __future__ import annotations

import numpy as np

from mlcore.imageio import ImageDecodeError, decode_bytes, resize_rgb, to_rgb_uint8

__all__ = ["ImageDecodeError", "decode_image", "prepare_batch", "to_rgb_uint8", "resize_rgb"]

MAX_PIXELS = 80_000_000
# JPEG DCT-domain downscaling ("draft") only while the decoded image stays >= this many times the
# model input on both sides; the antialiased bilinear resize of mlcore.imageio does the rest.
# Images up to 4x the input size (all of the training data: 180 and 224 px for 112) are decoded in
# full, so their pixels are bit-identical to the training preprocessing.
DRAFT_MARGIN = 4


def decode_image(data: bytes, target_size: int | None = None) -> np.ndarray:
    """Bytes (JPEG/PNG/TIFF/..., any mode, EXIF-rotated) -> RGB uint8 HxWx3.
    With ``target_size`` (the model input), a large JPEG is decoded at a reduced scale (1/2..1/8,
    still >= DRAFT_MARGIN x target_size per side), which is much faster for camera-sized uploads.
    Raises ImageDecodeError on empty, truncated or non-image input."""
    from PIL import Image

    Image.MAX_IMAGE_PIXELS = MAX_PIXELS
    return decode_bytes(data, draft_min_side=int(target_size) * DRAFT_MARGIN if target_size else None)


def _as_rgb(img: np.ndarray) -> np.ndarray:
    a = np.asarray(img)
    if a.dtype != np.uint8:
        if np.issubdtype(a.dtype, np.floating):
            a = np.clip(a * (255.0 if a.max() <= 1.0 else 1.0), 0, 255).astype(np.uint8)
        else:
            a = np.clip(a.astype(np.float64) * (255.0 / 65535.0 if a.max() > 255 else 1.0), 0, 255).astype(np.uint8)
    if a.ndim == 2:
        a = np.repeat(a[..., None], 3, axis=2)
    if a.ndim != 3:
        raise ImageDecodeError(f"expected HxWxC image, got shape {a.shape}")
    if a.shape[2] == 1:
        a = np.repeat(a, 3, axis=2)
    elif a.shape[2] == 4:
        alpha = a[..., 3:4].astype(np.float32) / 255.0
        a = (a[..., :3] * alpha + 255.0 * (1 - alpha)).astype(np.uint8)
    elif a.shape[2] != 3:
        raise ImageDecodeError(f"expected 1, 3 or 4 channels, got {a.shape[2]}")
    return np.ascontiguousarray(a)


def prepare_batch(images, input_size: int) -> np.ndarray:
    """List of RGB uint8 arrays (any size) -> float32 (N, input_size, input_size, 3) in 0..255."""
    out = np.empty((len(images), input_size, input_size, 3), dtype=np.float32)
    for i, img in enumerate(images):
        out[i] = resize_rgb(_as_rgb(img), input_size)
    return out
