"""Split-conformal prediction sets (no Django): the diagnoses the model cannot rule out.

Calibrated on the validation split with the score s = 1 - (the highest calibrated probability of a
class the label allows; HAM akiec and bkl allow two). With q the ceil((n + 1)(1 - alpha)) / n
empirical quantile of s, the set {c : p_c >= 1 - q} holds the true diagnosis for at least
1 - alpha of exchangeable images (Vovk et al.; Angelopoulos & Bates, 2021). The floor 1 - q is
taken directly as the k-th largest true-class probability, k = ceil((n + 1)(1 - alpha)); with
k > n (too few images for the level) every class is in every set. The set is never empty:
the most probable class is always in it. Coverage on other data (held-out test, PH2) is measured,
not promised: images from another device are not exchangeable with the validation split.
"""
from __future__ import annotations

import math

import numpy as np

DEFAULT_COVERAGE = 0.90


def fit_threshold(probs: np.ndarray, masks: np.ndarray, coverage: float = DEFAULT_COVERAGE) -> float:
    """The probability floor 1 - q of the prediction sets, from calibration ``probs`` (N, K) and
    multi-hot ``masks`` of the allowed classes: the k-th largest of the images' true-class
    probabilities, k = ceil((n + 1) * coverage), or 0.0 (every class in every set) when k > n."""
    probs = np.asarray(probs, np.float64)
    masks = np.asarray(masks) > 0.5
    if len(probs) == 0:
        raise ValueError("no calibration images")
    true_p = np.where(masks, probs, -np.inf).max(axis=1)
    n = len(true_p)
    k = math.ceil((n + 1) * coverage)
    if k > n:
        # the finite-sample guarantee needs a set larger than any calibration score allows; capping
        # the level at 1 would promise coverage that n images cannot back
        return 0.0
    # the probability itself, not 1 - (1 - p): that can round above p and drop the image that set
    # the floor out of its own set
    floor = float(np.sort(true_p)[::-1][k - 1])
    return max(0.0, floor)


def prediction_sets(probs: np.ndarray, floor: float) -> np.ndarray:
    """Boolean (N, K): class c is in image i's set when p_ic >= floor, and the top class always is."""
    probs = np.asarray(probs, np.float64)
    sets = probs >= floor
    sets[np.arange(len(probs)), probs.argmax(axis=1)] = True
    return sets


def coverage_and_size(probs: np.ndarray, masks: np.ndarray, floor: float) -> dict:
    """Empirical coverage (the set meets the allowed classes) and mean set size."""
    sets = prediction_sets(probs, floor)
    hit = (sets & (np.asarray(masks) > 0.5)).any(axis=1)
    return {"coverage": float(hit.mean()) if len(hit) else float("nan"),
            "mean_set_size": float(sets.sum(axis=1).mean()) if len(hit) else float("nan"),
            "images": int(len(hit))}
