"""How an image is framed before it is resized to the model input: the whole frame squashed to the
square ("squash"), or a square crop centred on the lesion ("lesion").

Dermatoscopes and clinics frame lesions differently: HAM10000 images show a lesion with skin
around it, PH2's lesions fill most of the frame, the ISIC archive has both. A lesion-centred crop
makes the lesion's size in the model input the same whichever device took it, so the model cannot
learn "large in the frame = melanoma" from one collection's habits.

The lesion is found the way dermoscopy pipelines usually do it, cheaply on a small copy: Otsu's
threshold on a blurred darkness map (the lesion is darker than the skin), restricted to the
region inside the dark vignette of the dermatoscope; the connected component that covers most of
the central part of the frame is the lesion. Its bounding box, enlarged by `MARGIN` and made
square, is cropped from the full-resolution image. When nothing plausible is found (a uniform
image, a lesion lighter than its skin) the whole frame is kept, squashed as before.
"""
from __future__ import annotations

import cv2
import numpy as np

FRAMINGS = ("squash", "lesion")
DEFAULT_FRAMING = "squash"  # what a model card without a "framing" field was trained with

ANALYSIS_SIDE = 128  # the lesion is located on a copy this long on its longer side
MARGIN = 1.5  # the crop's side over the lesion's bounding box's longer side (skin around it)
MIN_CROP = 0.35  # never crop tighter than this share of the image's shorter side
MIN_AREA = 0.01  # a component smaller than this share of the frame is not a lesion
VIGNETTE_LUMINANCE = 30  # pixels darker than this (0..255) are the dermatoscope's black border


def lesion_box(rgb: np.ndarray) -> tuple[int, int, int, int] | None:
    """(x0, y0, x1, y1) of the lesion's bounding box in ``rgb``'s pixels, or None when none is found."""
    h, w = rgb.shape[:2]
    scale = ANALYSIS_SIDE / max(h, w)
    small = cv2.resize(rgb, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
    grey = cv2.GaussianBlur(cv2.cvtColor(small, cv2.COLOR_RGB2GRAY), (5, 5), 0)
    inside = grey > VIGNETTE_LUMINANCE
    if inside.mean() < 0.2:
        return None
    values = grey[inside]
    if int(values.max()) - int(values.min()) < 20:  # flat: no lesion to see
        return None
    threshold, _ = cv2.threshold(values.reshape(-1, 1), 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    dark = ((grey <= threshold) & inside).astype(np.uint8)
    dark = cv2.morphologyEx(dark, cv2.MORPH_OPEN, np.ones((3, 3), np.uint8))
    count, labels, stats, _ = cv2.connectedComponentsWithStats(dark, connectivity=8)
    sh, sw = dark.shape
    centre = np.zeros_like(dark, dtype=bool)
    centre[sh // 4: sh - sh // 4, sw // 4: sw - sw // 4] = True
    best, best_cover = None, 0
    for label in range(1, count):
        if stats[label, cv2.CC_STAT_AREA] < MIN_AREA * sh * sw:
            continue
        cover = int(np.count_nonzero(centre & (labels == label)))
        if cover > best_cover:
            best, best_cover = label, cover
    if best is None:
        return None
    x, y, bw, bh = (int(v) for v in stats[best, :4])
    return (int(x / scale), int(y / scale), int(np.ceil((x + bw) / scale)), int(np.ceil((y + bh) / scale)))


def lesion_crop_box(rgb: np.ndarray) -> tuple[int, int, int, int]:
    """The square (as far as the image allows) crop around the lesion, or the whole frame."""
    h, w = rgb.shape[:2]
    box = lesion_box(rgb)
    if box is None:
        return (0, 0, w, h)
    x0, y0, x1, y1 = box
    side = max(MARGIN * max(x1 - x0, y1 - y0), MIN_CROP * min(h, w))
    side = int(min(side, max(h, w)))
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    cw, ch = min(side, w), min(side, h)  # the image's own edges bound the crop
    left = int(round(min(max(cx - cw / 2, 0), w - cw)))
    top = int(round(min(max(cy - ch / 2, 0), h - ch)))
    return (left, top, left + cw, top + ch)


def crop_box(rgb: np.ndarray, framing: str = DEFAULT_FRAMING) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1): the part of ``rgb`` a model with this framing sees."""
    if framing not in FRAMINGS:
        raise ValueError(f"framing must be one of {FRAMINGS}, not {framing!r}")
    return lesion_crop_box(rgb) if framing == "lesion" else (0, 0, rgb.shape[1], rgb.shape[0])


def frame(rgb: np.ndarray, framing: str = DEFAULT_FRAMING) -> np.ndarray:
    """``rgb`` (uint8 HxWx3) framed the model's way, before the resize to its input."""
    if framing == "squash":
        return rgb
    x0, y0, x1, y1 = crop_box(rgb, framing)
    return np.ascontiguousarray(rgb[y0:y1, x0:x1])
