"""Image decoding, conversion to 8-bit RGB and resizing: the one path that uploads, the training
cache and inference all take."""
from __future__ import annotations

import io
import logging
from functools import lru_cache

import numpy as np
from PIL import Image, ImageCms, ImageOps

log = logging.getLogger(__name__)

RESIZE_METHOD = "PIL.Image.resize BILINEAR (antialiased) to square input_size, no crop"


# modes a profile can be applied to, and the mode of the sRGB result (alpha kept for compositing)
COLOUR_MANAGED = {"RGB": "RGB", "RGBA": "RGBA", "CMYK": "RGB", "L": "RGB"}


class ImageDecodeError(ValueError):
    """Raised when bytes cannot be decoded into an image."""


@lru_cache(maxsize=1)
def _srgb() -> ImageCms.ImageCmsProfile:
    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB"))


def to_srgb(image: Image.Image, profile: bytes | None) -> Image.Image:
    """The pixels converted from the embedded ICC ``profile`` to sRGB (relative colorimetric, as
    browsers show them), before the metadata is dropped. No profile, a mode no profile applies to,
    or a profile that cannot be used (damaged, or for another colour space): the pixels as they are,
    never a rejection. The one implementation: uploads (cases.uploads) and every decode here
    (`to_rgb_uint8`) call it, so the app, the CLI and the evaluations see the same pixels."""
    if not profile:
        return image
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    output_mode = COLOUR_MANAGED.get(image.mode)
    if output_mode is None:
        return image
    try:
        source = ImageCms.ImageCmsProfile(io.BytesIO(profile))
        return ImageCms.profileToProfile(image, source, _srgb(), outputMode=output_mode,
                                         renderingIntent=ImageCms.Intent.RELATIVE_COLORIMETRIC)
    except Exception as exc:  # PyCMSError, OSError, ValueError, ...: keep the pixels
        log.warning("the image's colour profile could not be applied (%s); its pixels are kept as they are",
                    type(exc).__name__)
        return image


def to_rgb_image(img: Image.Image) -> Image.Image:
    """Any PIL mode -> 8-bit RGB, the one conversion the app and the pipeline use.

    16-bit and 32-bit integer greyscale are scaled (0..65535 -> 0..255, rounded), float images are
    stretched to their own range, palette and alpha images are composited on white, CMYK and the
    rest go through PIL's own conversion. EXIF orientation is not touched (see `to_rgb_uint8`)."""
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        pixels = np.asarray(img, dtype=np.float64)
        img = Image.fromarray(np.clip(np.rint(pixels / 257.0), 0, 255).astype(np.uint8), "L")
    elif mode == "F":
        pixels = np.asarray(img, dtype=np.float64)
        low, high = float(pixels.min()), float(pixels.max())
        scaled = (pixels - low) * (255.0 / (high - low)) if high > low else np.zeros_like(pixels)
        img = Image.fromarray(np.clip(np.rint(scaled), 0, 255).astype(np.uint8), "L")
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        rgba = img.convert("RGBA")
        img = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
    if img.mode != "RGB":
        img = img.convert("RGB")
    return img


def to_rgb_uint8(img: Image.Image) -> np.ndarray:
    """PIL image (any mode; EXIF orientation applied first, then its embedded ICC profile, as
    `to_srgb`) -> RGB uint8 HxWx3: the pixels an upload of the same file is stored with."""
    # read before the transpose, as the upload path does: the profile belongs to the file
    profile = img.info.get("icc_profile")
    try:
        img = ImageOps.exif_transpose(img)
    except Exception:  # broken EXIF must not break decoding
        pass
    # Applying the profile here did not bump the training cache key (training.cache.cache_key):
    # none of the dataset images carries an ICC profile (all 12,507 in the shared data checked when
    # it was added), so their decoded pixels, and the caches and the shipped model, are unchanged.
    arr = np.asarray(to_rgb_image(to_srgb(img, profile)), dtype=np.uint8)
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise ImageDecodeError(f"unexpected decoded shape {arr.shape}")
    return np.ascontiguousarray(arr)


def as_rgb_array(img: np.ndarray) -> np.ndarray:
    """An array image (uint8/uint16/float, 1, 3 or 4 channels) -> RGB uint8 HxWx3, with the same
    scaling and rounding as `to_rgb_image`: floats in 0..1 scaled to 0..255, 16-bit divided by
    257, alpha composited on white."""
    a = np.asarray(img)
    if a.dtype != np.uint8:
        if np.issubdtype(a.dtype, np.floating):
            a = a * (255.0 if a.size and a.max() <= 1.0 else 1.0)
        elif a.size and a.max() > 255:
            a = a.astype(np.float64) / 257.0
        a = np.clip(np.rint(a), 0, 255).astype(np.uint8)
    if a.ndim == 2:
        a = a[..., None]
    if a.ndim != 3:
        raise ImageDecodeError(f"expected HxWxC image, got shape {a.shape}")
    if a.shape[2] == 1:
        a = np.repeat(a, 3, axis=2)
    elif a.shape[2] == 4:
        alpha = a[..., 3:4].astype(np.float32) / 255.0
        a = np.clip(np.rint(a[..., :3] * alpha + 255.0 * (1 - alpha)), 0, 255).astype(np.uint8)
    elif a.shape[2] != 3:
        raise ImageDecodeError(f"expected 1, 3 or 4 channels, got {a.shape[2]}")
    return np.ascontiguousarray(a)


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
    """RGB uint8 pixels of an image file (as `decode_bytes`, in full)."""
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
