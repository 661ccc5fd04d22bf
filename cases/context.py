"""The clinical context the classifier may use for an uploaded image: the patient's age at the
visit, their sex and the lesion's anatomic site."""
from __future__ import annotations

from django.utils import timezone

from mlcore.clinical import ClinicalContext

from cases.models import Case, LesionImage


def age_at_visit(case: Case) -> int | None:
    """The patient's age in whole years in the year of the visit (the app stores a birth year only,
    so this is the one rule the model, every page and the report use); None without a birth year."""
    birth_year = case.patient.birth_year
    if not birth_year:
        return None
    visit = case.visit_date or timezone.localtime(case.created_at).date()
    return max(visit.year - birth_year, 0)


def image_context(image: LesionImage) -> ClinicalContext:
    """Age at the visit (`age_at_visit`: what the result page says the score used), sex, anatomic site."""
    case = image.lesion.case
    age = age_at_visit(case)
    return ClinicalContext(age=None if age is None else min(age, 120), sex=case.patient.sex,
                           site=image.lesion.anatomic_site)
