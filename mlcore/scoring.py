"""Score derivation shared by evaluation and the app: logits -> calibrated probabilities ->
melanoma probability, malignancy score, flag decision with reasons.

Pure numpy, no TensorFlow: both `training.evaluate` and `mlcore.inference` call these.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .labels import CLASSES, MALIGNANT_INDICES, MELANOMA_INDEX


def softmax_with_temperature(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Row-wise softmax of logits / T in float64, returned as float64 (rows sum to 1)."""
    z = np.asarray(logits, dtype=np.float64) / float(temperature)
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def melanoma_probability(probs: np.ndarray) -> np.ndarray:
    return np.asarray(probs)[..., MELANOMA_INDEX]


# fixed bins of a probability for distribution checks ([0, 0.1) … [0.9, 1.0]): the validation
# histogram a model card carries and the production histograms it is compared with (PSI)
SCORE_BINS = 10
SCORE_HISTOGRAM_KEY = "melanoma_probability_histogram"


def score_bin(probability: float) -> int:
    """Fixed bin of a probability: [0, 0.1) → 0, …, [0.9, 1.0] → 9."""
    return min(max(int(probability * SCORE_BINS), 0), SCORE_BINS - 1)


def score_histogram(probabilities) -> list[int]:
    """Counts of the probabilities in the SCORE_BINS fixed bins."""
    counts = [0] * SCORE_BINS
    values = probabilities.ravel() if isinstance(probabilities, np.ndarray) else probabilities
    for p in values:  # any iterable (a generator of database values included)
        counts[score_bin(float(p))] += 1
    return counts


def malignancy_score(probs: np.ndarray) -> np.ndarray:
    """P(melanoma)+P(basal cell carcinoma)+P(squamous cell carcinoma)+P(actinic keratosis)."""
    p = np.asarray(probs)
    return np.clip(p[..., list(MALIGNANT_INDICES)].sum(axis=-1), 0.0, 1.0)


@dataclass(frozen=True)
class Thresholds:
    melanoma: float
    malignancy: float

    def to_dict(self) -> dict:
        return {"melanoma": float(self.melanoma), "malignancy": float(self.malignancy)}

    @classmethod
    def from_dict(cls, d: dict) -> "Thresholds":
        return cls(melanoma=float(d["melanoma"]), malignancy=float(d["malignancy"]))


@dataclass
class FlagDecision:
    flagged: bool
    reasons: list[str] = field(default_factory=list)


def flag_decision(mel_prob: float, malig_score: float, thresholds: Thresholds) -> FlagDecision:
    """Flag when either score reaches (>=) its operating threshold; reasons say which."""
    reasons: list[str] = []
    if mel_prob >= thresholds.melanoma:
        reasons.append(f"melanoma probability {mel_prob:.2f} \u2265 threshold {thresholds.melanoma:.2f}")
    if malig_score >= thresholds.malignancy:
        reasons.append(
            f"malignancy score {malig_score:.2f} \u2265 threshold {thresholds.malignancy:.2f}"
        )
    return FlagDecision(flagged=bool(reasons), reasons=reasons)


@dataclass
class Scores:
    probs: np.ndarray  # (N, 9)
    melanoma: np.ndarray  # (N,)
    malignancy: np.ndarray  # (N,)
    flagged: np.ndarray  # (N,) bool


def score_logits(logits: np.ndarray, temperature: float, thresholds: Thresholds) -> Scores:
    probs = softmax_with_temperature(logits, temperature)
    mel = melanoma_probability(probs)
    mal = malignancy_score(probs)
    flagged = (mel >= thresholds.melanoma) | (mal >= thresholds.malignancy)
    return Scores(probs=probs, melanoma=mel, malignancy=mal, flagged=flagged)


def class_probability_dict(prob_row: np.ndarray) -> dict[str, float]:
    return {c: float(p) for c, p in zip(CLASSES, prob_row)}


def set_nll(probs: np.ndarray, masks: np.ndarray, eps: float = 1e-12) -> float:
    """Mean of -log(sum_{c in allowed} p_c) (the ambiguous-label NLL)."""
    s = (np.asarray(probs) * np.asarray(masks)).sum(axis=-1)
    return float(-np.log(np.clip(s, eps, None)).mean())


def fit_temperature(logits: np.ndarray, masks: np.ndarray, bounds=(0.05, 20.0)) -> float:
    """Temperature T minimising the set-NLL of softmax(logits/T) (fit on validation only)."""
    from scipy.optimize import minimize_scalar

    logits = np.asarray(logits, dtype=np.float64)
    masks = np.asarray(masks, dtype=np.float64)

    def f(log_t: float) -> float:
        return set_nll(softmax_with_temperature(logits, float(np.exp(log_t))), masks)

    res = minimize_scalar(f, bounds=(np.log(bounds[0]), np.log(bounds[1])), method="bounded",
                          options={"xatol": 1e-4})
    t = float(np.exp(res.x))
    # never return something worse than T=1
    return t if f(np.log(t)) <= f(0.0) else 1.0


def threshold_for_sensitivity(scores: np.ndarray, positives: np.ndarray, target: float = 0.90) -> float:
    """Highest threshold t such that sensitivity of (score >= t) is >= target."""
    scores = np.asarray(scores, dtype=np.float64)
    positives = np.asarray(positives, dtype=bool)
    pos = np.sort(scores[positives])[::-1]
    if pos.size == 0:
        raise ValueError("no positive examples to choose a threshold from")
    k = int(np.ceil(target * pos.size - 1e-9))
    k = min(max(k, 1), pos.size)
    return float(pos[k - 1])
