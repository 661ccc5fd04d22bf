"""Numbers → display data for the result view (bars, thresholds), kept out of templates."""
from __future__ import annotations

from dataclasses import dataclass

from cases.models import Prediction
from training.labels import CLASSES, MALIGNANT_CLASSES


@dataclass(frozen=True)
class Bar:
    label: str
    value: float  # 0..1
    percent: float  # 0..100, for CSS widths
    malignant: bool = False


@dataclass(frozen=True)
class ThresholdBar:
    label: str
    value: float
    percent: float
    threshold: float | None
    threshold_percent: float | None
    above: bool


def _pct(value: float | None) -> float:
    return round(max(0.0, min(1.0, float(value or 0.0))) * 100, 1)


def class_bars(probabilities: dict[str, float]) -> list[Bar]:
    """All nine classes, most probable first (missing classes show as 0)."""
    bars = [Bar(label=c.capitalize(), value=float(probabilities.get(c, 0.0)), percent=_pct(probabilities.get(c)),
                malignant=c in MALIGNANT_CLASSES) for c in CLASSES]
    return sorted(bars, key=lambda bar: -bar.value)


def threshold_bar(label: str, value: float | None, threshold: float | None) -> ThresholdBar:
    """A score with its flagging threshold marked."""
    value = float(value or 0.0)
    return ThresholdBar(label=label, value=value, percent=_pct(value), threshold=threshold,
                        threshold_percent=None if threshold is None else _pct(threshold),
                        above=threshold is not None and value >= threshold)


def prediction_context(prediction: Prediction) -> dict:
    """Template context for a done prediction's charts (empty lists while it is not done)."""
    if prediction.status != Prediction.Status.DONE:
        return {"bars": [], "score_bars": []}
    version = prediction.model_version
    return {
        "bars": class_bars(prediction.class_probabilities),
        "score_bars": [
            threshold_bar("Melanoma probability", prediction.melanoma_probability, version.melanoma_threshold),
            threshold_bar("Malignancy score", prediction.malignancy_score, version.malignancy_threshold),
        ],
    }
