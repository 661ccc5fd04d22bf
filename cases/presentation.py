"""Numbers → display data for the result view (bars, thresholds), kept out of templates."""
from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

from django.utils import timezone

from cases import statements
from cases.context import age_at_visit  # noqa: F401  (the pages' import of the one age rule)
from cases.models import Case, Lesion, Patient, Prediction
from classifier.models import ModelVersion
from mlcore.artifact import CARD_FILE
from mlcore.clinical import SEXES, site_group
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


def _subgroup_caveat(metrics: dict, row: dict, score: str, positives: str, *, among: str, who: str) -> str | None:
    """The caveat for one score (melanoma or malignancy) in one subgroup row (an age band, a body
    site), or None. ``among``: "in patients aged 70+"; ``who``: "patients aged 70+"."""
    overall = metrics.get(f"{score}_auc")
    auc = row.get(f"{score}_auc")
    if auc is None:
        what = "this model's accuracy" if score == "melanoma" else "its malignancy score's accuracy"
        return (f"The held-out test data had too few {positives} {among} "
                f"({row.get(f'n_{score}_positive', 0)}) to measure {what} for them.")
    if overall is None or overall - auc < CAVEAT_GAP:
        return None
    text = f"For {who}, this model's held-out {score} AUC is {auc:.2f} (overall {overall:.2f})"
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


def _row_caveat(metrics: dict, row: dict, *, among: str, who: str) -> str | None:
    """The melanoma caveat of a subgroup row and, where the metrics have malignancy figures by
    subgroup, the malignancy score's (older metrics lack them: no caveat from their absence)."""
    texts = [_subgroup_caveat(metrics, row, score, positives, among=among, who=who)
             for score, positives in _SUBGROUP_SCORES
             if score == "melanoma" or (f"{score}_auc" in row and metrics.get(f"{score}_auc") is not None)]
    return " ".join(t for t in texts if t) or None


def age_caveat(metrics: dict, age: int | None) -> str | None:
    """A sentence (or two) for the result page when the model measured worse (or could not be
    measured) on held-out patients of this age band, for the melanoma probability and, where the
    metrics have malignancy figures by age, for the malignancy score; None when it did about as
    well as overall, or when the model card has no subgroup figures."""
    by_age = (metrics.get("subgroups") or {}).get("age")
    if not by_age or age is None:
        return None
    band = age_band(age)
    return _row_caveat(metrics, by_age.get(band) or {}, among=f"in patients aged {band}", who=f"patients aged {band}")


ADULT_AGE = 18


def child_caveat(age: int | None) -> str | None:
    """A sentence for a patient under 18: no model here was validated on children."""
    if age is None or age >= ADULT_AGE:
        return None
    return ("This patient is under 18: children are outside the population this model was validated on, "
            "so its accuracy for them is unknown.")


# Site groups (mlcore.clinical.site_group) the public dermoscopy collections hardly hold: fixed
# words (statements.MODEL_LIMITS), with the held-out count where the metrics have figures by site.
SPARSE_SITES = {
    "palms/soles": "Lesions on the palms or soles (acral) were hardly represented in the training data{count}: "
                   "the score is not reliable for this site.",
    "oral/genital": "Oral and genital lesions were hardly represented in the training data{count}: "
                    "the score is not reliable for this site.",
}


def site_caveat(metrics: dict, site: str | None) -> str | None:
    """A sentence for a lesion whose site the model hardly saw (palms/soles, oral/genital), or
    whose site's held-out figures are worse than overall (the age bands' rule). The subgroup table
    is by the data's own site names (HAM10000 localizations: "acral", "back", "hand"...), mapped
    through ``site_group``; a site group with several rows (head/neck: face, ear, neck, scalp) has
    no one figure, so only the sparse-site text can apply to it."""
    group = site_group(site)
    if group is None:
        return None
    by_site = (metrics.get("subgroups") or {}).get("site") or {}
    rows = [row for key, row in by_site.items() if site_group(key) == group and isinstance(row, dict)]
    if group in SPARSE_SITES and not any(row.get("melanoma_auc") is not None for row in rows):
        total = metrics.get("n_images")
        count = (f" (held-out test data: {sum(int(row.get('n') or 0) for row in rows)} of {total:,} images)"
                 if by_site and isinstance(total, int) else "")
        return SPARSE_SITES[group].format(count=count)
    row = by_site.get(site) if isinstance(by_site.get(site), dict) else (rows[0] if len(rows) == 1 else None)
    if row is None:
        return None
    return _row_caveat(metrics, row, among=f"among lesions on the {site}", who=f"lesions on the {site}")


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
    """The "Reliability:" notes of a result, on the result page, the case page's card and in the
    report: a child, the patient's age band (measured subgroup figures), skin type, and the
    lesion's site (``prediction.image.lesion``: loaded with the image on every page that shows it)."""
    metrics = prediction.model_version.metrics or {}
    age = age_at_visit(case)
    caveats = [child_caveat(age), age_caveat(metrics, age), skin_type_caveat(case.patient.fitzpatrick_type),
               site_caveat(metrics, prediction.image.lesion.anatomic_site)]
    return [c for c in caveats if c]


# --- The model card, where the version's artifact is on this host ---------------------------------

@functools.lru_cache(maxsize=8)
def _card(model_dir: str, stamp: tuple | None = None) -> dict:
    """The parts of the version's model card the pages and the report use, where its artifact is on
    this host (workers may hold it elsewhere). Only those parts are kept: the whole card lists every
    split id. ``stamp``: the card file's (mtime, size), so that a card re-assessed in place
    (manage.py reassess_model) is read again, not quoted from memory until a restart."""
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
    melanoma = (card.get("validation") or {}).get("melanoma")
    if isinstance(melanoma, dict):  # the calibration note's counts
        kept["validation"] = {"melanoma": {k: melanoma[k] for k in ("n_positive", "n_negative") if k in melanoma}}
    return kept


def _card_stamp(model_dir: str) -> tuple | None:
    try:
        stat = (Path(model_dir) / CARD_FILE).stat()
    except OSError:
        return None
    return stat.st_mtime_ns, stat.st_size


def card_of(version: ModelVersion) -> dict:
    if not version.artifact_path:
        return {}
    return _card(version.artifact_path, _card_stamp(version.artifact_path))


def limits_of(version: ModelVersion) -> list[str]:
    """The card's own limitations where it lists them, else the shipped model's known limits (the
    result page and the report)."""
    for source in (version.metrics or {}, card_of(version)):
        listed = source.get("limitations")
        if isinstance(listed, list) and listed:
            return [str(item) for item in listed]
    return list(statements.MODEL_LIMITS)


def validation_melanoma_share(version: ModelVersion) -> float | None:
    """The melanomas' share of the validation images the probability was calibrated on, where the
    version's card records their counts; None otherwise."""
    counts = (card_of(version).get("validation") or {}).get("melanoma") or {}
    positive, negative = counts.get("n_positive"), counts.get("n_negative")
    if not (isinstance(positive, int) and isinstance(negative, int)) or positive + negative <= 0:
        return None
    return positive / (positive + negative)


def calibration_note(version: ModelVersion, *, short: bool = False) -> str:
    """What the melanoma probability is calibrated on (statements.CALIBRATION_NOTE), with the
    validation images' melanoma share where the card records it."""
    share = validation_melanoma_share(version)
    words = f"about {round(share * 100)} %" if share is not None else statements.CALIBRATION_SHARE_UNKNOWN
    template = statements.CALIBRATION_NOTE_SHORT if short else statements.CALIBRATION_NOTE
    return template.format(share=words)


# --- The version a result came from -----------------------------------------------------------------

NOT_ACTIVE = "no longer the active version"


def version_state(version: ModelVersion, *, rolled_back: bool = False) -> str:
    """"" for the active version, else "no longer the active version". ``rolled_back``: also say
    when it was rolled back from (one query over the roll-back events: the result page and the
    report's model section, not the status poll's cards)."""
    if version.status == ModelVersion.Status.ACTIVE:
        return ""
    if rolled_back:
        from classifier.lifecycle import rolled_back_from

        at = rolled_back_from(version)
        if at is not None:
            return f"rolled back on {timezone.localtime(at):%Y-%m-%d}; {NOT_ACTIVE}"
    return NOT_ACTIVE


def version_note(version: ModelVersion, *, rolled_back: bool = False) -> str:
    """``version_state`` in brackets, to follow the version's name ("" for the active version)."""
    state = version_state(version, rolled_back=rolled_back)
    return f"({state})" if state else ""


def clinical_context_text(context: dict | None) -> str:
    """The inputs a score used, as the page and the report say them. The model uses sex only as
    male or female (mlcore.clinical): another value is said to be unused."""
    if not context:
        return "Scored from the image alone."
    age = context.get("age")
    age_text = f"{float(age):.0f}" if isinstance(age, (int, float)) else "unknown"
    sex = context.get("sex")
    sex_text = f"sex {sex}" if sex in SEXES else ("sex unknown" if sex in (None, "", "unknown") else "sex not used")
    return (f"Scores include the clinical context: age {age_text}, {sex_text}, "
            f"site {context.get('site') or 'unknown'}.")


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
        test = (assessment.get("measured") or {}).get("test") or {}
        withheld = test.get("not_assessable")
        # the sets were measured over every test image, those the app would not assess included
        among = (f", including the {withheld} it could not assess" if isinstance(withheld, int) and withheld
                 and isinstance(images, int) and images == test.get("images") else "")
        size = f" ({images} images the model never trained on{among})" if isinstance(images, int) else ""
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
