"""Image decoding and batching for inference (same code path as the training cache)."""
from __future__ import annotations

import numpy as np

from mlcore.framing import DEFAULT_FRAMING, frame
from mlcore.imageio import ImageDecodeError, as_rgb_array, decode_bytes, resize_rgb, to_rgb_uint8

__all__ = ["ImageDecodeError", "decode_image", "prepare_batch", "prepare_image", "to_rgb_uint8", "resize_rgb"]

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


def prepare_image(img: np.ndarray, input_size: int, framing: str = DEFAULT_FRAMING) -> np.ndarray:
    """One image (any size) -> uint8 (input_size, input_size, 3): framed (mlcore.framing), then
    resized. The training cache calls this too, so training and inference cannot differ."""
    return resize_rgb(frame(as_rgb_array(img), framing), input_size)


def prepare_batch(images, input_size: int, framing: str = DEFAULT_FRAMING) -> np.ndarray:
    """List of RGB uint8 arrays (any size) -> float32 (N, input_size, input_size, 3) in 0..255."""
    out = np.empty((len(images), input_size, input_size, 3), dtype=np.float32)
    for i, img in enumerate(images):
        out[i] = prepare_image(img, input_size, framing)
    return out
