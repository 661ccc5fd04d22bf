"""Dermatologist-confirmed lesions as training records for the admin's retraining runs.

Images of lesions whose newest review names one of the 9 classes become labelled records (the
reviewer and date kept as provenance); they pass through the same audit and lesion-level split as
the public datasets. Registered with the registry at start-up (cases.apps), so that ``classifier``
never imports the clinical records.
"""
from __future__ import annotations

from pathlib import Path

from django.core.files.storage import default_storage

from cases.context import image_context
from cases.models import Review
from mlcore.labels import CLASS_TO_HAM, CLASSES
from training.data import ImageRecord

REVIEW_SOURCE = "review"


def reviewed_records(export_dir: Path) -> list:
    """Training records for every image of a lesion whose newest review names one of the 9 classes."""
    export_dir.mkdir(parents=True, exist_ok=True)
    newest: dict[int, Review] = {}
    for review in Review.objects.select_related("reviewer", "lesion").order_by("lesion_id", "-created_at"):
        newest.setdefault(review.lesion_id, review)
    records = []
    for lesion_id, review in newest.items():
        if review.final_diagnosis not in CLASSES:
            continue  # "other" has no class to learn
        for image in review.lesion.images.all():
            path = export_dir / f"review-{image.pk}{Path(image.file.name).suffix or '.png'}"
            if not path.exists():
                with default_storage.open(image.file.name, "rb") as src:
                    path.write_bytes(src.read())
            context = image_context(image)
            records.append(ImageRecord(
                path=str(path), isic_id=f"REVIEW_{image.pk:07d}",
                # the patient's lesion, not the visit: every visit of one lesion falls on one side of the split
                lesion_id=f"app-lesion-{review.lesion.tracked_id or lesion_id}",
                allowed=frozenset({review.final_diagnosis}), source=REVIEW_SOURCE,
                ham_code=CLASS_TO_HAM[review.final_diagnosis],
                dx_type=f"dermatologist review by {review.reviewer.get_username()} on {review.created_at:%Y-%m-%d}",
                age=context.age, sex=context.sex, site=context.site,
            ))
    return records
