"""The report's account of the model: how to read its scores, the version's measured figures
(internal held-out test, external test sets such as PH2, how often it could not assess images)
and its known limits.
"""
from __future__ import annotations

from typing import Any

from reportlab.platypus import Flowable, Spacer

from cases import statements
from cases.presentation import calibration_note, card_of, limits_of, set_coverage_text, version_state
from cases.report_style import bold, bullets, esc, facts_table, para
from cases.templatetags.cases_extras import percent
from classifier.models import ModelVersion
from mlcore.labels import MALIGNANT_CLASSES


def ci(values: Any) -> str:
    """" [95 % CI 0.841–0.896]" for a two-number interval, else empty."""
    if isinstance(values, (list, tuple)) and len(values) == 2 and all(isinstance(v, (int, float)) for v in values):
        return f" [95 % CI {values[0]:.3f}–{values[1]:.3f}]"
    return ""


def figure(value: Any, interval: Any = None) -> str:
    return "not measured" if not isinstance(value, (int, float)) else f"{value:.3f}{ci(interval)}"


def reading_section(versions: list[ModelVersion]) -> list[Flowable]:
    """What the numbers mean, in the words of the result page."""
    targets = sorted({v.target_sensitivity for v in versions if v.target_sensitivity})
    target = " or ".join(f"{t:.0%}" for t in targets) or "the target"
    malignant = ", ".join(sorted(MALIGNANT_CLASSES))
    if len(versions) == 1:
        coverage = " " + set_coverage_text(versions[0])
        calibration = " " + calibration_note(versions[0])
    else:  # each version's sets were measured on their own
        coverage = "".join(f" Model {v.version}: {set_coverage_text(v)}" for v in versions)
        calibration = "".join(f" Model {v.version}: {calibration_note(v)}" for v in versions)
    if not versions:  # no result, no version: the share is not known
        calibration = " " + statements.CALIBRATION_NOTE.format(share=statements.CALIBRATION_SHARE_UNKNOWN)
    texts = [
        bold("Melanoma probability") + esc(": the model's probability that the lesion in the image is a melanoma "
                                           "(temperature scaling on validation images)." + calibration
                                           + " No figure here measures how often lesions given a score turn out "
                                           "to be melanomas; on images from other clinics and devices it can be "
                                           "far off (see the measured limits below)."),
        bold("Malignancy score") + esc(f": the summed probability of the malignant classes ({malignant})."),
        bold("Thresholds") + esc(f": chosen on validation data, never on the test data, as the highest values that "
                                 f"still reach {target} sensitivity (the values in use are listed with the model "
                                 "below). An image is flagged when either score reaches its threshold, and its "
                                 "lesion goes to a dermatologist unless one has already reviewed it since the image "
                                 "was taken. They are set low on purpose, so most "
                                 "flagged lesions are benign; a score below its threshold does not rule out "
                                 "malignancy."),
        bold("Diagnoses the model cannot rule out") + esc(
            f": a conformal prediction set.{coverage} A class whose score reached a flag threshold is added when "
            "the set lacks it (marked \"added\"): melanoma when the melanoma probability reached its threshold, "
            "the most probable malignant class when the malignancy score did. The set describes the model's "
            "uncertainty, not a differential diagnosis."),
        bold("Model could not assess") + esc(": the image failed a quality check, was unlike the training images "
                                             "(out of domain) or is not a dermoscopic image. Its scores are not "
                                             "shown and the lesion goes to a dermatologist, unless one has "
                                             "already reviewed it since the image was taken."),
        bold("Grad-CAM") + esc(": where in the image the model looked for the melanoma class; age, sex and site are "
                               "not in it, and it is not a map of the lesion."),
    ]
    return [para("How to read the scores", "h2")] + [para(t) for t in texts]


def at_threshold(point: Any, which: str) -> str:
    """"at the melanoma threshold sensitivity …, specificity …" from an operating-point record."""
    if not isinstance(point, dict) or not isinstance(point.get("sensitivity"), (int, float)):
        return ""
    return (f"at the {which} threshold sensitivity {figure(point['sensitivity'], point.get('sensitivity_ci95'))}, "
            f"specificity {figure(point.get('specificity'), point.get('specificity_ci95'))}")


def internal_figures(metrics: dict) -> str:
    """The held-out test figures the registry keeps for the version."""
    if not isinstance(metrics.get("melanoma_auc"), (int, float)):
        return "No held-out test figures are recorded for this version."
    size = (f"{metrics['n_images']} images, {metrics.get('n_melanoma', '?')} melanomas"
            if metrics.get("n_images") else "held-out images")
    points = metrics.get("operating_points") or {}
    parts = [f"Internal held-out test ({size}): melanoma AUC "
             f"{figure(metrics['melanoma_auc'], metrics.get('melanoma_auc_ci95'))}",
             f"malignancy AUC {figure(metrics.get('malignancy_auc'), metrics.get('malignancy_auc_ci95'))}",
             at_threshold(points.get("melanoma"), "melanoma"), at_threshold(points.get("malignancy"), "malignancy")]
    return "; ".join(p for p in parts if p) + "."


def _external_entries(source: Any) -> list[tuple[str, dict]]:
    """(name, figures) pairs from an "external" record: one evaluation, or several by name."""
    if not isinstance(source, dict):
        return []
    if "melanoma_auc" in source or "error" in source:
        return [(str(source.get("dataset") or "External test set"), source)]
    return [(str(v.get("dataset") or k), v) for k, v in source.items() if isinstance(v, dict)]


def external_text(name: str, ext: dict) -> str:
    """One external evaluation (training/evaluate_artifact.evaluate_external's record) in words."""
    size = f"{ext['n_images']} images, {ext.get('n_melanoma', '?')} melanomas, " if ext.get("n_images") else ""
    parts = [f"{name}: {size}never trained on. Melanoma AUC "
             f"{figure(ext['melanoma_auc'], ext.get('melanoma_auc_ci95'))}",
             at_threshold(ext.get("melanoma_operating_point"), "melanoma")]
    withheld = ext.get("not_assessable")
    if isinstance(withheld, int) and ext.get("n_images"):
        melanomas = (ext.get("not_assessable_by_diagnosis") or {}).get("melanoma")
        among = (f" ({melanomas} of the {ext['n_melanoma']} melanomas among them)"
                 if isinstance(melanomas, int) and isinstance(ext.get("n_melanoma"), int) else "")
        parts.append(f"could not assess {withheld} of {ext['n_images']} images{among}")
    text = "; ".join(p for p in parts if p) + "."
    if isinstance(withheld, int) and withheld and ext.get("n_images"):
        text += (f" The AUC and threshold figures are over all {ext['n_images']} images, including the {withheld} "
                 "whose scores the app withholds because it could not assess them.")
    sent = ext.get("sent_to_review")
    if isinstance(sent, dict) and isinstance(sent.get("sensitivity"), (int, float)):
        text += (" Sent to a dermatologist as the app does it (flagged, or could not assess): sensitivity "
                 f"{figure(sent['sensitivity'], sent.get('sensitivity_ci95'))}, specificity "
                 f"{figure(sent.get('specificity'), sent.get('specificity_ci95'))}.")
    return text


def external_figures(version: ModelVersion) -> list[str]:
    """PH2 (another hospital and dermatoscope) and any other external test, where the registry's
    metrics or the model card record them."""
    source = (version.metrics or {}).get("external") or card_of(version).get("external")
    texts = [external_text(name, ext) for name, ext in _external_entries(source)
             if isinstance(ext.get("melanoma_auc"), (int, float))]
    return texts or ["No external test figures are recorded for this version."]


MEASURED_SETS = (("test", "internal held-out test images"),
                 ("ph2", "PH2 images (another hospital and dermatoscope)"),
                 ("non_dermoscopic", "non-dermoscopic test images"))


def could_not_assess_rates(version: ModelVersion) -> str | None:
    """How often the model refused images where it was measured (from the model card)."""
    measured = (card_of(version).get("assessment") or {}).get("measured") or {}
    rates = [f"{rate:.1%} of {label}" for key, label in MEASURED_SETS
             if isinstance(rate := (measured.get(key) or {}).get("not_assessable_rate"), (int, float))]
    return "The model could not assess " + ", ".join(rates) + "." if rates else None


def model_section(version: ModelVersion) -> list[Flowable]:
    state = version_state(version, rolled_back=True)
    status = version.get_status_display().lower() + (f"; {state}" if state else "")
    rows = [("Model version", bold(version.version) + esc(f" ({status})")),
            ("Thresholds", esc(f"melanoma probability {percent(version.melanoma_threshold)}, malignancy score "
                               f"{percent(version.malignancy_threshold)}"
                               + (f"; target sensitivity {version.target_sensitivity:.0%} on validation"
                                  if version.target_sensitivity else ""))),
            ("Measured", esc(internal_figures(version.metrics or {})))]
    rows += [("External", esc(text)) for text in external_figures(version)]
    rates = could_not_assess_rates(version)
    if rates:
        rows.append(("Could not assess", esc(rates)))
    parts: list[Flowable] = [para(esc(f"Model {version.version}"), "h3"), facts_table(rows), Spacer(1, 3),
                             para(bold("Known limits"))]
    return parts + bullets(limits_of(version))


def models_section(versions: list[ModelVersion]) -> list[Flowable]:
    parts: list[Flowable] = [para("The model and its measured limits", "h2")]
    if not versions:
        return parts + [para("No image of this case has a result yet, so no model version is reported.")]
    for version in versions:
        parts += model_section(version)
    return parts
