"""Numbers → display data for the result view (bars, thresholds), kept out of templates."""
from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

from django.utils import timezone

from cases.context import age_at_visit  # noqa: F401  (the pages' import of the one age rule)
from cases.models import Case, Lesion, Patient, Prediction
from classifier.models import ModelVersion
from mlcore.conformal import DEFAULT_COVERAGE
from mlcore.labels import CLASSES, MALIGNANT_CLASSES, MELANOMA
from training.subgroups import age_band

# A subgroup whose held-out melanoma or malignancy AUC (or sensitivity, specificity) is this much
# below the overall figure gets a caveat.
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


# The two scores a subgroup caveat speaks of: (metrics key prefix, what its positives are called).
_SUBGROUP_SCORES = (("melanoma", "melanomas"), ("malignancy", "malignant lesions"))


def _subgroup_caveat(metrics: dict, row: dict, band: str, score: str, positives: str) -> str | None:
    """The caveat for one score (melanoma or malignancy) in one age band, or None."""
    overall = metrics.get(f"{score}_auc")
    auc = row.get(f"{score}_auc")
    if auc is None:
        what = "this model's accuracy" if score == "melanoma" else "its malignancy score's accuracy"
        return (f"The held-out test data had too few {positives} in patients aged {band} "
                f"({row.get(f'n_{score}_positive', 0)}) to measure {what} for them.")
    if overall is None or overall - auc < CAVEAT_GAP:
        return None
    text = f"For patients aged {band}, this model's held-out {score} AUC is {auc:.2f} (overall {overall:.2f})"
    overall_point = (metrics.get("operating_points") or {}).get(score, {})
    # a missed malignancy matters more than a false alarm, so the sensitivity caveat comes first
    worse = []
    for what, key in ((f"misses more {positives}", "sensitivity"), ("flags more benign lesions", "specificity")):
        value, overall_value = row.get(f"{score}_{key}"), overall_point.get(key)
        if value is not None and overall_value is not None and value < overall_value - CAVEAT_GAP:
            worse.append(f"{what} ({key} {value:.2f}, overall {overall_value:.2f})")
    if worse:
        text += "; at its threshold it " + " and ".join(worse)
    return text + "."


def age_caveat(metrics: dict, age: int | None) -> str | None:
    """A sentence (or two) for the result page when the model measured worse (or could not be
    measured) on held-out patients of this age band, for the melanoma probability and, where the
    metrics have malignancy figures by age, for the malignancy score; None when it did about as
    well as overall, or when the model card has no subgroup figures."""
    by_age = (metrics.get("subgroups") or {}).get("age")
    if not by_age or age is None:
        return None
    band = age_band(age)
    row = by_age.get(band) or {}
    texts = [_subgroup_caveat(metrics, row, band, score, positives) for score, positives in _SUBGROUP_SCORES
             # older metrics have no malignancy figures by subgroup: no caveat from their absence
             if score == "melanoma" or (f"{score}_auc" in row and metrics.get(f"{score}_auc") is not None)]
    return " ".join(t for t in texts if t) or None


# Fitzpatrick types the training and test data barely hold (statements.MODEL_LIMITS, first item).
DARK_SKIN_TYPES = (Patient.Fitzpatrick.V, Patient.Fitzpatrick.VI)


def skin_type_caveat(fitzpatrick_type: int | None) -> str | None:
    """A sentence for a patient of Fitzpatrick type V or VI: the model's accuracy for them is unknown."""
    if fitzpatrick_type not in DARK_SKIN_TYPES:
        return None
    label = Patient.Fitzpatrick(fitzpatrick_type).label
    return (f"This patient's skin type (Fitzpatrick {label}) is barely represented in the images this model was "
            "trained and tested on, so its accuracy for this skin type is unknown.")


def reliability_caveats(prediction: Prediction, case: Case) -> list[str]:
    """The "Reliability:" notes of a result, on the result page and in the report: the patient's
    age band (measured subgroup figures) and skin type."""
    caveats = [age_caveat(prediction.model_version.metrics or {}, age_at_visit(case)),
               skin_type_caveat(case.patient.fitzpatrick_type)]
    return [c for c in caveats if c]


# --- The model card, where the version's artifact is on this host ---------------------------------

@functools.lru_cache(maxsize=8)
def _card(model_dir: str) -> dict:
    """The parts of the version's model card the pages and the report use, where its artifact is on
    this host (workers may hold it elsewhere). Only those parts are kept: the whole card lists every
    split id."""
    from mlcore.artifact import CardError, read_card

    try:
        card = read_card(Path(model_dir), required=())
    except (CardError, OSError):
        return {}
    kept = {key: card[key] for key in ("external", "limitations") if key in card}
    assessment = card.get("assessment") or {}
    kept_assessment = {key: assessment[key] for key in ("measured", "conformal") if assessment.get(key)}
    if kept_assessment:
        kept["assessment"] = kept_assessment
    return kept


def card_of(version: ModelVersion) -> dict:
    return _card(version.artifact_path) if version.artifact_path else {}


# --- Diagnoses the model cannot rule out ----------------------------------------------------------

ADDED_MARK = "added: above the flag threshold"


@dataclass(frozen=True)
class SetMember:
    name: str  # the class, capitalised
    added: bool = False  # not in the conformal set: shown because a flag threshold was reached

    def __str__(self) -> str:
        return f"{self.name} ({ADDED_MARK})" if self.added else self.name


def _reached(value: float | None, threshold: float | None) -> bool:
    return threshold is not None and value is not None and value >= threshold


def displayed_set(prediction: Prediction) -> list[SetMember]:
    """The stored conformal set as the result page and the report show it ([] without one).

    The set holds the classes at or above one probability floor (mlcore.conformal), which is
    higher than the flag thresholds: a lesion flagged for melanoma could show a set without it
    and read as "melanoma ruled out". So melanoma is added when the melanoma threshold is reached,
    and the most probable malignant class when the malignancy threshold is; the stored set is
    never changed."""
    stored = [str(c) for c in (prediction.prediction_set or [])]
    if not stored:
        return []
    version = prediction.model_version
    added: list[str] = []
    if _reached(prediction.melanoma_probability, version.melanoma_threshold) and MELANOMA not in stored:
        added.append(MELANOMA)
    probabilities = prediction.class_probabilities or {}
    if _reached(prediction.malignancy_score, version.malignancy_threshold):
        top = max(sorted(MALIGNANT_CLASSES), key=lambda c: float(probabilities.get(c) or 0.0))
        if top not in stored and top not in added:
            added.append(top)
    return ([SetMember(c.capitalize()) for c in stored]
            + [SetMember(c.capitalize(), added=True) for c in added])


def set_coverage_text(version: ModelVersion) -> str:
    """How often the version's sets held the true diagnosis: the coverage measured on the held-out
    test images (the model card) where recorded, else the validation target the sets were fitted to."""
    assessment = card_of(version).get("assessment") or {}
    measured = ((assessment.get("measured") or {}).get("test") or {}).get("conformal") or {}
    coverage, images = measured.get("coverage"), measured.get("images")
    if isinstance(coverage, (int, float)):
        size = f" ({images} images the model never trained on)" if isinstance(images, int) else ""
        return f"on held-out test images{size}, the true diagnosis was in the set for {coverage:.1%} of images."
    target = (assessment.get("conformal") or {}).get("coverage_target") or DEFAULT_COVERAGE
    return (f"fitted so that on validation images the true diagnosis was in the set for {target:.0%} of images "
            "(no coverage on held-out test images is recorded for this version).")


SET_ADDED_TEXT = ("A class marked \"added\" is not in the conformal set; it is shown because its score "
                  "reached a flag threshold, so it is not ruled out.")
SET_MEANING_TEXT = "It is a statement about the model's uncertainty, not a differential diagnosis."


def set_note(prediction: Prediction, members: list[SetMember]) -> str:
    """The sentence(s) under the set."""
    parts = ["A conformal prediction set: " + set_coverage_text(prediction.model_version)]
    if any(m.added for m in members):
        parts.append(SET_ADDED_TEXT)
    parts.append(SET_MEANING_TEXT)
    return " ".join(parts)


# --- Whether the lesion went to a dermatologist -----------------------------------------------------

FLAGGED_AWAITING = "Flagged — awaiting dermatologist review"
FLAGGED_REVIEWED = "Flagged — reviewed"


def flag_badge_text(lesion: Lesion) -> str:
    """The words of the lesion's flag badge on the case page ("" when it was never flagged): the
    page and its status poll both use them, so a lesion flagged again after its review reads
    "awaiting" as soon as the poll sees it."""
    if lesion.awaiting_review:
        return FLAGGED_AWAITING
    return FLAGGED_REVIEWED if lesion.flagged else ""


def review_state_text(lesion: Lesion) -> str:
    """Where the lesion stands with the dermatologists, for an image the model could not assess:
    scoring sends a lesion to the queue only when no review has seen the image yet
    (cases.scoring._store_result), so "sent" is said only when it is awaiting review."""
    if lesion.awaiting_review:
        return "The lesion has been sent to a dermatologist for review."
    reviews = list(lesion.reviews.all())
    if reviews:
        last = max(reviews, key=lambda r: r.created_at)
        return f"The lesion was already reviewed by a dermatologist on {timezone.localtime(last.created_at):%Y-%m-%d}."
    return "The lesion is not in the dermatologists' review queue."
