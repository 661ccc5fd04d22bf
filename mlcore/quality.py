"""Image-quality checks run before an image's score is shown (OpenCV/NumPy, no Django).

Each check measures one thing on the model's own input (the decoded upload resized to the input
size, the pixels the CNN sees), so the thresholds fitted on the training images mean the same on
an upload. A check fails when its measure falls outside the range that holds
``QUALITY_PASS_TARGET`` (98 %) of the audited training images together
(``fit_thresholds``); each failure has a plain-language message for the clinician.

Measures (all on an RGB uint8 image):
- ``sharpness``: variance of the Laplacian of the grey image (low = blurred or out of focus);
- ``brightness``: mean luminance 0..255 (low = under-exposed, high = over-exposed);
- ``clipped``: fraction of pixels at the black or white limit (blown-out highlights, crushed shadows);
- ``skin``: fraction of the central pixels (an eighth of each side left out) whose colour is
  skin- or lesion-like (a wide YCrCb range);
- ``border``: fraction of the frame that is near-black (the dermatoscope's vignette / black ring).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

QUALITY_PASS_TARGET = 0.98
MEASURES = ("sharpness", "brightness_low", "brightness_high", "clipped", "skin", "border")

# measure -> (direction, message). "min": fails below the threshold; "max": fails above it.
CHECKS: dict[str, tuple[str, str]] = {
    "sharpness": ("min", "blurred: retake with the dermatoscope in contact and in focus"),
    "brightness_low": ("min", "too dark: retake with the dermatoscope's light on and nothing covering it"),
    "brightness_high": ("max", "over-exposed: retake with less light or a lower exposure"),
    "clipped": ("max", "large areas are pure black or white: retake with a balanced exposure"),
    "skin": ("min", "little of the image looks like skin or a lesion: is this a dermoscopic image of a lesion?"),
    "border": ("max", "most of the frame is the dermatoscope's black border: retake closer, with the lesion filling the field"),
}


@dataclass
class QualityResult:
    """The measures of one image and the checks it failed (codes and plain-language messages)."""

    measures: dict[str, float]
    failed: list[str] = field(default_factory=list)
    messages: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failed

    def to_dict(self) -> dict:
        return {**asdict(self), "ok": self.ok}


def measure(rgb: np.ndarray) -> dict[str, float]:
    """The quality measures of one RGB uint8 image (any size; the model input size is typical)."""
    import cv2

    a = np.ascontiguousarray(np.asarray(rgb, dtype=np.uint8))
    grey = cv2.cvtColor(a, cv2.COLOR_RGB2GRAY)
    lap = cv2.Laplacian(grey, cv2.CV_32F, ksize=3)
    mean_lum = float(grey.mean())
    clipped = float(np.mean((grey <= 3) | (grey >= 252)))
    dark = grey < 25
    h, w = grey.shape
    inner = np.zeros_like(dark)
    mh, mw = h // 8, w // 8
    inner[mh:h - mh, mw:w - mw] = True
    ycrcb = cv2.cvtColor(a, cv2.COLOR_RGB2YCrCb)
    y, cr, cb = ycrcb[..., 0], ycrcb[..., 1], ycrcb[..., 2]
    # a wide skin/lesion gamut: reddish-to-brown chroma, any but the darkest luminance
    skin = (cr >= 133) & (cr <= 185) & (cb >= 70) & (cb <= 135) & (y >= 20)
    return {
        "sharpness": float(lap[~dark].var()) if (~dark).sum() > 16 else 0.0,
        "brightness_low": mean_lum,
        "brightness_high": mean_lum,
        "clipped": clipped,
        "skin": float(skin[inner].mean()),
        "border": float(dark.mean()),
    }


def check(rgb: np.ndarray, thresholds: dict[str, float]) -> QualityResult:
    """Measure one image and compare each measure with its fitted threshold."""
    m = measure(rgb)
    failed = []
    for name, (direction, _msg) in CHECKS.items():
        t = thresholds.get(name)
        if t is None:
            continue
        if (direction == "min" and m[name] < t) or (direction == "max" and m[name] > t):
            failed.append(name)
    return QualityResult(measures={k: round(v, 4) for k, v in m.items()}, failed=failed,
                         messages=[CHECKS[f][1] for f in failed])


def fit_thresholds(measures: list[dict[str, float]], target: float = QUALITY_PASS_TARGET) -> dict:
    """Per-check thresholds at one common tail quantile, chosen (by bisection) so that at least
    ``target`` of these images pass every check together. Returns thresholds and the pass rate."""
    if not measures:
        raise ValueError("no images to fit the quality thresholds on")
    arr = {k: np.array([m[k] for m in measures], dtype=np.float64) for k in CHECKS}

    def at(q: float) -> dict[str, float]:
        return {k: float(np.quantile(v, q if CHECKS[k][0] == "min" else 1.0 - q)) for k, v in arr.items()}

    def pass_rate(th: dict[str, float]) -> float:
        ok = np.ones(len(measures), bool)
        for k, (direction, _) in CHECKS.items():
            ok &= arr[k] >= th[k] if direction == "min" else arr[k] <= th[k]
        return float(ok.mean())

    lo, hi = 0.0, (1.0 - target)  # q = tail fraction per check; q = 0 passes everything
    for _ in range(40):
        mid = (lo + hi) / 2
        if pass_rate(at(mid)) >= target:
            lo = mid
        else:
            hi = mid
    th = at(lo)
    return {"thresholds": th, "pass_rate": pass_rate(th), "target": target, "images": len(measures),
            "tail_quantile": lo}
