"""Confirmed lesions as training records for the admin's retraining runs.

Images of lesions whose label is confirmed become labelled records, with the provenance of the
label kept in ``dx_type``; they pass through the same audit and lesion-level split as the public
datasets. A lesion's label is its current histopathology result (cases.outcomes) when it has one:
the laboratory outranks the dermatologist, and a result of "other" keeps the lesion out even when a
review named a class. Otherwise it is the diagnosis of its newest review. Registered with the
registry at start-up (cases.apps), so that ``classifier`` never imports the clinical records.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from django.core.files.storage import default_storage

from cases.context import image_context
from cases.models import Lesion, Outcome, Review
from mlcore.labels import CLASS_TO_HAM, CLASSES
from training.data import ImageRecord

REVIEW_SOURCE = "review"


@dataclass(frozen=True)
class ConfirmedLabel:
    """A lesion's training label and where it comes from."""

    lesion: Lesion
    diagnosis: str
    provenance: str


def _newest_reviews() -> dict[int, Review]:
    newest: dict[int, Review] = {}
    for review in Review.objects.select_related("reviewer", "lesion").order_by("lesion_id", "-created_at", "-pk"):
        newest.setdefault(review.lesion_id, review)
    return newest


def current_outcomes() -> dict[int, Outcome]:
    """Per lesion id, the histopathology result in force (the one nothing supersedes)."""
    rows = (Outcome.objects.filter(superseded_by__isnull=True).select_related("entered_by", "lesion")
            .order_by("lesion_id", "-entered_at", "-pk"))
    current: dict[int, Outcome] = {}
    for outcome in rows:
        current.setdefault(outcome.lesion_id, outcome)
    return current


def outcome_provenance(outcome: Outcome) -> str:
    return (f"histopathology on {outcome.diagnosis_date:%Y-%m-%d}, report {outcome.report_reference}, "
            f"entered by {outcome.entered_by.get_username()}")


def confirmed_labels() -> list[ConfirmedLabel]:
    """Lesions with a label from one of the 9 classes: histopathology first, else the newest review."""
    reviews, outcomes = _newest_reviews(), current_outcomes()
    labels = []
    for lesion_id in sorted(set(reviews) | set(outcomes)):
        outcome, review = outcomes.get(lesion_id), reviews.get(lesion_id)
        if outcome is not None:
            label = ConfirmedLabel(outcome.lesion, outcome.diagnosis, outcome_provenance(outcome))
        else:
            label = ConfirmedLabel(review.lesion, review.final_diagnosis,
                                   f"dermatologist review by {review.reviewer.get_username()} "
                                   f"on {review.created_at:%Y-%m-%d}")
        if label.diagnosis in CLASSES:  # "other" has no class to learn
            labels.append(label)
    return labels


def _export(image, export_dir: Path) -> Path:
    path = export_dir / f"review-{image.pk}{Path(image.file.name).suffix or '.png'}"
    if not path.exists():
        with default_storage.open(image.file.name, "rb") as src:
            path.write_bytes(src.read())
    return path


def reviewed_records(export_dir: Path) -> list:
    """Training records for every image of a lesion with a confirmed label (``confirmed_labels``)."""
    export_dir.mkdir(parents=True, exist_ok=True)
    records = []
    for label in confirmed_labels():
        lesion = label.lesion
        for image in lesion.images.all():
            context = image_context(image)
            records.append(ImageRecord(
                path=str(_export(image, export_dir)), isic_id=f"REVIEW_{image.pk:07d}",
                # the patient's lesion, not the visit: every visit of one lesion falls on one side of the split
                lesion_id=f"app-lesion-{lesion.tracked_id or lesion.pk}",
                allowed=frozenset({label.diagnosis}), source=REVIEW_SOURCE,
                ham_code=CLASS_TO_HAM[label.diagnosis], dx_type=label.provenance,
                age=context.age, sex=context.sex, site=context.site,
            ))
    return records
