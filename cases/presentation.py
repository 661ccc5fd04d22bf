"""Numbers → display data for the result view (bars, thresholds), kept out of templates."""
from __future__ import annotations

from dataclasses import dataclass


from cases.context import age_at_visit  # noqa: F401  (the pages' import of the one age rule)
from cases.models import Case, Prediction
from mlcore.labels import CLASSES, MALIGNANT_CLASSES
from training.subgroups import age_band

# A subgroup whose held-out melanoma AUC (or sensitivity, specificity) is this much below the
# overall figure gets a caveat.
CAVEAT_GAP = 0.03


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


def age_caveat(metrics: dict, age: int | None) -> str | None:
    """A sentence for the result page when the model measured worse (or could not be measured) on
    held-out patients of this age band; None when it did about as well as overall, or when the
    model card has no subgroup figures."""
    by_age = (metrics.get("subgroups") or {}).get("age")
    if not by_age or age is None:
        return None
    band = age_band(age)
    row = by_age.get(band) or {}
    overall = metrics.get("melanoma_auc")
    auc = row.get("melanoma_auc")
    if auc is None:
        return (f"The held-out test data had too few melanomas in patients aged {band} "
                f"({row.get('n_melanoma_positive', 0)}) to measure this model's accuracy for them.")
    if overall is None or overall - auc < CAVEAT_GAP:
        return None
    text = f"For patients aged {band}, this model's held-out melanoma AUC is {auc:.2f} (overall {overall:.2f})"
    overall_point = (metrics.get("operating_points") or {}).get("melanoma", {})
    # a missed melanoma matters more than a false alarm, so the sensitivity caveat comes first
    worse = []
    for what, key in (("misses more melanomas", "sensitivity"), ("flags more benign lesions", "specificity")):
        value, overall_value = row.get(f"melanoma_{key}"), overall_point.get(key)
        if value is not None and overall_value is not None and value < overall_value - CAVEAT_GAP:
            worse.append(f"{what} ({key} {value:.2f}, overall {overall_value:.2f})")
    if worse:
        text += "; at its threshold it " + " and ".join(worse)
    return text + "."
