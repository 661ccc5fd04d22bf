"""Validate uploaded images by their content and normalise them for storage.

Nothing here touches the database or storage: ``normalise_upload`` is a pure function from the
client's bytes to either a clean image or an ``UploadRejected`` with a message for the user.

Decisions:
- Only JPEG, PNG, TIFF and DICOM are accepted, identified from the bytes (never the name or
  Content-Type): images by Pillow, DICOM by its 128-byte preamble and "DICM" marker, read by
  ``cases.dicom_import``. Dimensions are checked from the header before any pixel is decoded.
- Animated or multi-page images (APNG, multi-page TIFF) are rejected rather than silently reduced
  to their first frame: the clinician should choose which still image is scored. Frames that only
  accompany the image are not a choice, and the first frame is taken: a camera or phone JPEG's
  MPO extras (a large preview, a gain map) and a TIFF's reduced-resolution pages (NewSubfileType
  bit 0). An MPO is stored as what it is to the user, a JPEG.
- The stored copy is a PNG re-encoded from the pixels: lossless, EXIF orientation applied, and no
  metadata at all (EXIF, GPS, ICC, text chunks), converted to 8-bit RGB. Pixels in an embedded
  colour profile's space (Display P3, Adobe RGB, a CMYK press profile) are first converted to
  sRGB, what a PNG without a profile means; a profile that cannot be applied leaves them as they
  are. For DICOM this drops every attribute (patient name and ID included); only the body site,
  laterality, acquisition date and the kind of image its SOP class states (dermoscopic, or a
  clinical photo) are kept, as fields of ``NormalisedImage``, never inside the stored file.
"""
from __future__ import annotations

import hashlib
import io
import logging
import re
import unicodedata
import warnings
from dataclasses import dataclass
from datetime import date

from django.conf import settings
from django.core.files.uploadedfile import UploadedFile

from PIL import Image, ImageOps, UnidentifiedImageError

# to_srgb: the one ICC -> sRGB conversion, the same every decode path of mlcore applies
from mlcore.imageio import to_rgb_image, to_srgb

log = logging.getLogger(__name__)

ALLOWED_FORMATS = ("JPEG", "PNG", "TIFF")


def megabytes(n: int) -> str:
    """A byte count the way the limits are stated: "20 MB", "20.5 MB" (decimal megabytes)."""
    value = n / 1_000_000
    return f"{value:.0f} MB" if abs(value - round(value)) < 0.05 else f"{value:.1f} MB"
STORED_FORMAT = "PNG"
NEW_SUBFILE_TYPE, OLD_SUBFILE_TYPE = 254, 255  # TIFF tags that mark a page as a reduced-resolution copy
MAX_NAME_LENGTH = 120

# Magic bytes of formats people commonly try, so the rejection can say what the file really is.
_SNIFF = (
    (b"GIF87a", "a GIF image"),
    (b"GIF89a", "a GIF image"),
    (b"BM", "a BMP image"),
    (b"%PDF", "a PDF document"),
    (b"PK\x03\x04", "a ZIP archive"),
)


class UploadRejected(Exception):
    """A file that cannot be accepted; ``str(exc)`` is the message shown to the user."""


@dataclass(frozen=True)
class NormalisedImage:
    """A validated image, ready to store."""

    content: bytes  # PNG bytes of the 8-bit RGB pixels, no metadata
    sha256: str  # of the decoded pixels (and size), so a re-encoded copy is still a duplicate
    width: int
    height: int
    original_format: str
    original_name: str
    # what the file itself stated (DICOM only, for now): never written into the stored PNG
    acquired_on: date | None = None
    body_site: str | None = None  # one of Lesion.Site's values
    laterality: str | None = None  # "left" or "right"
    # the image kind the file itself states (a DICOM SOP class: "dermoscopic" or "clinical"), which
    # overrides the upload form's; None when the file does not say (JPEG, PNG, TIFF)
    kind: str | None = None
    source_sop_class: str = ""  # the DICOM SOP class's name, for the audit trail


def sanitize_filename(name: str | None) -> str:
    """A display-only version of the client's file name: no directories, no control characters,
    normalised unicode, bounded length. It is metadata; it never becomes a storage path."""
    name = (name or "").replace("\\", "/").rsplit("/", 1)[-1]
    name = unicodedata.normalize("NFKC", name)
    name = "".join(ch for ch in name if unicodedata.category(ch)[0] != "C")
    name = re.sub(r"\s+", " ", name).strip().lstrip(".") or "image"
    if len(name) > MAX_NAME_LENGTH:
        stem, dot, ext = name.rpartition(".")
        ext = ext[:10] if dot else ""
        name = f"{(stem if dot else name)[: MAX_NAME_LENGTH - len(ext) - 2]}…{'.' + ext if ext else ''}"
    return name


def _unidentified_message(head: bytes) -> str:
    """Why Pillow could not identify the file, in words a clinician can act on."""
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "The file starts like a PNG but the rest is not valid PNG data; it is damaged or disguised."
    if head.startswith(b"\xff\xd8"):
        return "The file starts like a JPEG but the rest is not valid JPEG data; it is damaged or disguised."
    what = "not a recognisable image"
    for magic, name in _SNIFF:
        if head.startswith(magic):
            what = name
            break
    else:
        text = head.lstrip(b"\xef\xbb\xbf \t\r\n").lower()
        if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
            what = "a WebP image"
        elif text.startswith((b"<svg", b"<?xml")) or b"<svg" in text[:512]:
            what = "an SVG or XML document"
        elif text.startswith((b"<!doctype html", b"<html")) or b"<html" in text[:512] or b"<script" in text[:512]:
            what = "an HTML document"
        else:
            try:
                head.decode("utf-8")
                what = "a text file"
            except UnicodeDecodeError:
                pass
    return f"Only JPEG, PNG, TIFF and DICOM images are accepted; this file is {what}."


def _megapixels(pixels: int) -> str:
    return f"{pixels / 1_000_000:.1f} MP"


def _read_limited(upload: UploadedFile, limit: int) -> bytes:
    """Read at most limit+1 bytes: enough to know the file is too big without buffering all of it."""
    upload.seek(0)
    chunks, total = [], 0
    for chunk in upload.chunks():
        chunks.append(chunk)
        total += len(chunk)
        if total > limit:
            break
    return b"".join(chunks)


def check_dimensions(width: int, height: int) -> None:
    """Refuse images over the pixel limit or under the minimum side, before any pixel is decoded."""
    max_pixels = settings.UPLOAD_MAX_PIXELS
    if width * height > max_pixels:
        raise UploadRejected(
            f"The image is {width}×{height} pixels ({_megapixels(width * height)}); "
            f"the limit is {_megapixels(max_pixels)}."
        )
    min_side = settings.UPLOAD_MIN_SIDE
    if min(width, height) < min_side:
        raise UploadRejected(
            f"The image is {width}×{height} pixels; each side must be at least {min_side} pixels."
        )


def _frame_count(image: Image.Image) -> int:
    """How many frames or pages the file declares. Counting walks a TIFF's page chain, so a damaged
    or truncated one fails here (TypeError, EOFError, KeyError, ...): a rejection, not a crash."""
    try:
        return getattr(image, "n_frames", 1)
    except Exception as exc:
        raise _pages_damaged(exc) from None


def _pages_damaged(exc: Exception) -> UploadRejected:
    return UploadRejected(
        f"The image's list of pages is damaged or truncated and cannot be read ({type(exc).__name__})."
    )


def _tiff_page_is_reduced(image: Image.Image, page: int) -> bool:
    """The TIFF page is a reduced-resolution copy of another (NewSubfileType bit 0, or the old
    SubfileType 2): a thumbnail or a pyramid level, not an image of its own."""
    image.seek(page)
    return bool(image.tag_v2.get(NEW_SUBFILE_TYPE, 0) & 1) or image.tag_v2.get(OLD_SUBFILE_TYPE) == 2


def _only_previews_follow(image: Image.Image) -> bool:
    """The frames after the first only accompany it (an MPO's, or a TIFF's reduced-resolution
    pages); the image is left on its first frame. Reading a damaged TIFF page is a rejection."""
    if image.format == "MPO":  # Pillow's JPEG with a multi-picture index: the primary image is frame 0
        image.seek(0)
        return True
    if image.format != "TIFF":
        return False
    try:
        full_first = not _tiff_page_is_reduced(image, 0)
        previews = full_first and all(_tiff_page_is_reduced(image, page) for page in range(1, image.n_frames))
        image.seek(0)
    except Exception as exc:
        raise _pages_damaged(exc) from None
    return previews


def _open_checked(data: bytes) -> Image.Image:
    """Open (header only) with the allowed formats; refuse bombs before decoding."""
    max_pixels = settings.UPLOAD_MAX_PIXELS
    try:
        with warnings.catch_warnings():
            # Pillow warns (and at twice the limit, raises) on huge images; both mean "reject".
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        declared = re.search(r"\((\d+) pixels\)", str(exc))
        size = f" ({_megapixels(int(declared.group(1)))})" if declared else ""
        raise UploadRejected(
            f"The image declares too many pixels{size}; the limit is {_megapixels(max_pixels)}. "
            "It may be a decompression bomb."
        ) from None
    except UnidentifiedImageError:
        raise UploadRejected(_unidentified_message(data[:1024])) from None
    except Exception as exc:  # malformed headers raise a zoo of types (SyntaxError, struct.error, ...)
        raise UploadRejected(f"The image header is corrupt ({type(exc).__name__}).") from None

    check_dimensions(*image.size)
    if _frame_count(image) > 1 and not _only_previews_follow(image):
        raise UploadRejected(
            "Animated or multi-page images are not accepted; upload a single still image."
        )
    return image


def normalise_upload(upload: UploadedFile) -> NormalisedImage:
    """Validate one uploaded file by content and return it normalised, or raise UploadRejected."""
    max_bytes = settings.UPLOAD_MAX_BYTES
    size = upload.size or 0
    if size == 0:
        raise UploadRejected("The file is empty (0 bytes).")
    if size > max_bytes:
        raise UploadRejected(f"The file is {megabytes(size)}; the limit is {megabytes(max_bytes)}.")
    data = _read_limited(upload, max_bytes)
    if len(data) > max_bytes:
        raise UploadRejected(f"The file is larger than the {megabytes(max_bytes)} limit.")
    if not data:
        raise UploadRejected("The file is empty (0 bytes).")

    name = sanitize_filename(upload.name)
    # imported here: cases.dicom_import uses this module's checks and exception
    from cases.dicom_import import is_dicom, read_dicom

    if is_dicom(data):
        dicom = read_dicom(data)
        return _normalised(dicom.image, original_format="DICOM", original_name=name, acquired_on=dicom.acquired_on,
                           body_site=dicom.body_site, laterality=dicom.laterality, kind=dicom.kind,
                           source_sop_class=dicom.sop_class_name)

    image = _open_checked(data)
    original_format = "JPEG" if image.format == "MPO" else image.format or ""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image.load()  # decodes every pixel: truncated or corrupt data fails here
            profile = image.info.get("icc_profile")
            image = ImageOps.exif_transpose(image)
    except Exception as exc:
        detail = "truncated" if "truncated" in str(exc).lower() else "corrupt"
        raise UploadRejected(f"The image data is {detail} and cannot be read ({type(exc).__name__}).") from None

    return _normalised(to_srgb(image, profile), original_format=original_format, original_name=name)


def _normalised(image: Image.Image, **fields) -> NormalisedImage:
    """8-bit RGB pixels re-encoded as a metadata-free PNG, with the digest of the pixels."""
    rgb = to_rgb_image(image)
    raw = rgb.tobytes()
    # A fresh image from raw pixels carries no info dict: no EXIF, ICC profile or text chunks.
    clean = Image.frombytes("RGB", rgb.size, raw)
    buffer = io.BytesIO()
    clean.save(buffer, format=STORED_FORMAT, optimize=False, compress_level=6)
    digest = hashlib.sha256(f"{clean.width}x{clean.height}:".encode() + raw).hexdigest()
    return NormalisedImage(content=buffer.getvalue(), sha256=digest, width=clean.width, height=clean.height, **fields)
