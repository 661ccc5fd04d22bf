"""The clinical context the classifier may use for an uploaded image: the patient's age when the
image was taken into the app, their sex and the lesion's anatomic site."""
from __future__ import annotations

from mlcore.clinical import ClinicalContext

from cases.models import LesionImage


def image_context(image: LesionImage) -> ClinicalContext:
    """Age in whole years at upload (the app stores a birth year only), sex, anatomic site."""
    patient = image.lesion.case.patient
    age = max(image.uploaded_at.year - patient.birth_year, 0)
    return ClinicalContext(age=min(age, 120), sex=patient.sex, site=image.lesion.anatomic_site)
