"""Confirmed lesions as training records for the admin's retraining runs.

Images of lesions whose label is confirmed become labelled records, with the provenance of the
label kept in ``dx_type``; they pass through the same audit and grouped split as the public
datasets (grouped by patient). Labels are resolved per tracked lesion (the patient's lesion
followed over visits, ``PatientLesion``), because a histopathology result sits on the visit where
the lesion was excised while earlier visits of the same lesion hold images of it too:

* a current histopathology result (cases.outcomes) labels every visit of that lesion up to the
  visit of the result: the laboratory outranks the dermatologist, and a result of "other" keeps
  the lesion out even when a review named a class. Later visits show what the excision or biopsy
  left, not the lesion the laboratory described: they are left out, reviewed or not. Visits with
  results that disagree keep the lesion out;
* otherwise each reviewed visit takes the diagnosis of its newest review, provided every reviewed
  visit of the lesion says the same; reviews that disagree keep the lesion out (a review speaks
  for the images it looked at: visits nobody reviewed are not labelled from another visit's, nor
  images uploaded after the review, and a visit back in the review queue waits for its new
  review). A review that sends the lesion for biopsy or excision is a working diagnosis: the
  lesion waits for the laboratory's result.

Only dermoscopic images whose result in force (``LesionImage.current_prediction``) is a finished,
assessable score are exported: a clinical close-up, or an image the model could not assess
(image quality, not dermoscopic), is not what the model reads. What was left out, and why, is
counted (``ReviewedRecords.excluded``) and written into the run's notes. Registered with the
registry at start-up (cases.apps), so that ``classifier`` never imports the clinical records.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from collections import Counter
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from django.core.files.storage import default_storage
from django.db.models import Prefetch, Q

from audit import log as audit_log
from cases.context import image_context
from cases.models import Lesion, LesionImage, Outcome, Prediction, Review
from mlcore.labels import CLASS_TO_HAM, CLASSES
from training.data import ImageRecord

REVIEW_SOURCE = "review"

# why confirmed images (or whole tracked lesions) stay out of training, as the run's notes say it
CLINICAL_PHOTO = "clinical close-up photos (the model reads dermoscopic images only)"
NOT_ASSESSABLE = "images the model could not assess (image quality or not dermoscopic)"
NOT_SCORED = "images without a finished score"
DISAGREEING_REVIEWS = "lesions whose visits were reviewed with different diagnoses (no histopathology)"
DISAGREEING_HISTOPATHOLOGY = "lesions whose visits have disagreeing histopathology results"
AFTER_HISTOPATHOLOGY = ("visits after the lesion's excision or biopsy (its histopathology describes the "
                        "lesion before it)")
AWAITING_HISTOPATHOLOGY = "lesions sent for biopsy or excision whose histopathology result is not entered yet"
AWAITING_NEW_REVIEW = "visits back in the review queue since their review (waiting for a new review)"
UPLOADED_AFTER_REVIEW = "images uploaded after the visit's review (the dermatologist did not see them)"

# the reviewer's diagnosis is the question put to the laboratory, not yet an answer
PROVISIONAL_MANAGEMENT = frozenset({Review.Management.BIOPSY, Review.Management.EXCISION})


@dataclass(frozen=True)
class ConfirmedLabel:
    """A visit's training label and where it comes from; ``reviewed_at``: when the review that gave
    it was made (it speaks for the images uploaded by then), None for histopathology."""

    lesion: Lesion
    diagnosis: str
    provenance: str
    reviewed_at: datetime | None = None


class ReviewedRecords(list):
    """Training records (training.data.ImageRecord), with ``excluded``: what was left out, and
    why (a sentence per reason -> how many images or lesions)."""

    def __init__(self, records=(), *, excluded: dict[str, int] | None = None) -> None:
        super().__init__(records)
        self.excluded = {reason: n for reason, n in (excluded or {}).items() if n}


def _newest_reviews() -> dict[int, Review]:
    newest: dict[int, Review] = {}
    for review in Review.objects.select_related("reviewer", "lesion").order_by("lesion_id", "-created_at", "-pk"):
        newest.setdefault(review.lesion_id, review)
    return newest


def current_outcomes() -> dict[int, Outcome]:
    """Per lesion id, the histopathology result in force (the one nothing supersedes)."""
    rows = (Outcome.objects.filter(superseded_by__isnull=True).select_related("entered_by", "lesion__case")
            .order_by("lesion_id", "-entered_at", "-pk"))
    current: dict[int, Outcome] = {}
    for outcome in rows:
        current.setdefault(outcome.lesion_id, outcome)
    return current


def outcome_provenance(outcome: Outcome) -> str:
    return (f"histopathology on {outcome.diagnosis_date:%Y-%m-%d}, report {outcome.report_reference}, "
            f"entered by {outcome.entered_by.get_username()}")


def _review_provenance(review: Review) -> str:
    return f"dermatologist review by {review.reviewer.get_username()} on {review.created_at:%Y-%m-%d}"


def _tracked_key(lesion: Lesion) -> str:
    return f"tracked-{lesion.tracked_id}" if lesion.tracked_id else f"visit-{lesion.pk}"


def resolve_labels() -> tuple[list[ConfirmedLabel], Counter]:
    """The visits to learn from with their labels, resolved per tracked lesion (module docstring),
    and what was left out: tracked lesions whose results or reviews disagree or that wait for a
    result, visits after the result's, visits waiting for a new review."""
    reviews, outcomes = _newest_reviews(), current_outcomes()
    labelled = {r.lesion for r in reviews.values()} | {o.lesion for o in outcomes.values()}
    tracked = {v.tracked_id for v in labelled if v.tracked_id}
    visits: dict[str, list[Lesion]] = {}
    for visit in Lesion.objects.filter(Q(tracked_id__in=tracked) | Q(pk__in=[v.pk for v in labelled])).select_related(
            "case").order_by("pk"):
        visits.setdefault(_tracked_key(visit), []).append(visit)
    labels: list[ConfirmedLabel] = []
    excluded: Counter = Counter()
    for key in sorted(visits):
        group = visits[key]
        results = [outcomes[v.pk] for v in group if v.pk in outcomes]
        if results:
            if len({o.diagnosis for o in results}) > 1:
                excluded[DISAGREEING_HISTOPATHOLOGY] += 1
                continue
            outcome = max(results, key=lambda o: (o.diagnosis_date, o.entered_at, o.pk))
            if outcome.diagnosis in CLASSES:  # "other" has no class to learn
                provenance = outcome_provenance(outcome)
                # the results agree: each speaks for its visit and the ones before it
                excised = max(o.lesion.case.visit_date for o in results)
                before = [v for v in group if v.case.visit_date <= excised]
                excluded[AFTER_HISTOPATHOLOGY] += len(group) - len(before)
                labels += [ConfirmedLabel(v, outcome.diagnosis, provenance if v.pk == outcome.lesion_id else
                                          f"{provenance}, at the visit of {outcome.lesion.case.visit_date:%Y-%m-%d}")
                           for v in before]
            continue
        reviewed = [(v, reviews[v.pk]) for v in group if v.pk in reviews]
        # the pending result will label every visit of the lesion: no visit is labelled meanwhile
        if any(r.management in PROVISIONAL_MANAGEMENT for _, r in reviewed):
            excluded[AWAITING_HISTOPATHOLOGY] += 1
            continue
        if len({r.final_diagnosis for _, r in reviewed}) > 1:
            excluded[DISAGREEING_REVIEWS] += 1
            continue
        for v, r in reviewed:
            if r.final_diagnosis not in CLASSES:
                continue
            # flagged again since the review: no dermatologist has seen what changed yet
            if v.awaiting_review:
                excluded[AWAITING_NEW_REVIEW] += 1
                continue
            labels.append(ConfirmedLabel(v, r.final_diagnosis, _review_provenance(r), reviewed_at=r.created_at))
    return labels, excluded


def confirmed_labels() -> list[ConfirmedLabel]:
    """The labelled visits (``resolve_labels``), without the counts."""
    return resolve_labels()[0]


def exclusion_reason(image: LesionImage) -> str | None:
    """Why ``image`` of a confirmed lesion is not a training record, or None when it is one: only
    a dermoscopic image whose result in force is a finished, assessable score is."""
    if image.kind != LesionImage.Kind.DERMOSCOPIC:
        return CLINICAL_PHOTO
    prediction = image.current_prediction()
    if prediction is None or prediction.status != Prediction.Status.DONE:
        return NOT_SCORED
    return None if prediction.assessable else NOT_ASSESSABLE


def _export(image: LesionImage, export_dir: Path) -> Path:
    """The image's copy in ``export_dir``, written when missing or not of the stored size."""
    path = export_dir / f"review-{image.pk}{Path(image.file.name).suffix or '.png'}"
    if path.exists() and path.stat().st_size == image.size_bytes:
        return path
    # written beside it and renamed: a worker killed mid-copy leaves a temporary file, never a
    # truncated copy under the record's name
    fd, tmp = tempfile.mkstemp(dir=export_dir, prefix=f".{path.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as dst, default_storage.open(image.file.name, "rb") as src:
            shutil.copyfileobj(src, dst)
        Path(tmp).replace(path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def reviewed_records(export_dir: Path) -> ReviewedRecords:
    """Training records for the images of the visits with a confirmed label (``resolve_labels``)
    that the model can learn from (``exclusion_reason``), with what was left out counted. Each image
    handed to the run is in the audit trail (a "download" by the system, via training)."""
    export_dir.mkdir(parents=True, exist_ok=True)
    labels, excluded = resolve_labels()
    # current_prediction reads the versions' status
    predictions = Prefetch("predictions", queryset=Prediction.objects.select_related("model_version"))
    records, images = [], []
    for label in labels:
        lesion = label.lesion
        for image in lesion.images.prefetch_related(predictions):
            # the rule of cases.scoring.review_of_image: a review speaks for the images it saw
            if label.reviewed_at is not None and image.uploaded_at > label.reviewed_at:
                excluded[UPLOADED_AFTER_REVIEW] += 1
                continue
            reason = exclusion_reason(image)
            if reason is not None:
                excluded[reason] += 1
                continue
            context = image_context(image)
            records.append(ImageRecord(
                path=str(_export(image, export_dir)), isic_id=f"REVIEW_{image.pk:07d}",
                # the split group (training.audit): the patient, not the lesion or the visit. A
                # patient's lesions share skin, camera and clinic, so one patient's images on both
                # sides of the split would flatter the validation and test figures
                lesion_id=f"app-patient-{lesion.case.patient_id}",
                allowed=frozenset({label.diagnosis}), source=REVIEW_SOURCE,
                ham_code=CLASS_TO_HAM[label.diagnosis], dx_type=label.provenance,
                age=context.age, sex=context.sex, site=context.site,
            ))
            images.append(image)
    audit_log.record_many(action="download", objs=images, new={"via": "training"})
    return ReviewedRecords(records, excluded=dict(excluded))
