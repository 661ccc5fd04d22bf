"""Who may see what: every view fetches objects through these querysets, so a guessed id of
something outside the user's scope is simply not found (404), never a 403 that confirms it exists.
"""
from __future__ import annotations

from django.db.models import Exists, OuterRef, Q, QuerySet

from cases.models import Case, Clinic, Lesion, LesionImage, Patient, Prediction, Review
from cases.roles import CLINICIAN, DERMATOLOGIST, has_role, in_role, is_admin


def clinic_of(user) -> Clinic | None:
    """The user's clinic, or None."""
    if not user.is_authenticated:
        return None
    membership = getattr(user, "clinic_membership", None)
    return membership.clinic if membership is not None else None


def is_clinician(user) -> bool:
    """Clinicians work inside their clinic (admins count as clinicians only where they have a clinic)."""
    return has_role(user, CLINICIAN) and clinic_of(user) is not None


def is_reviewer(user) -> bool:
    """Dermatologists and admins work the review queue."""
    return is_admin(user) or in_role(user, DERMATOLOGIST)


def _case_filter(user) -> Q | None:
    """Q over Case for the user's scope; None means everything (admins)."""
    if is_admin(user):
        return None
    scope = Q(pk__in=[])
    if not user.is_authenticated:
        return scope
    clinic = clinic_of(user)
    if clinic is not None and in_role(user, CLINICIAN):
        scope |= Q(patient__clinic=clinic)
    if in_role(user, DERMATOLOGIST):
        in_queue = Exists(Lesion.objects.filter(case=OuterRef("pk"), awaiting_review=True))
        reviewed = Exists(Review.objects.filter(lesion__case=OuterRef("pk"), reviewer=user))
        # the other visits of a lesion under review: the review asks whether it changed since them
        under_review = Lesion.objects.filter(Q(awaiting_review=True) | Q(case__claimed_by=user),
                                             tracked__isnull=False).values("tracked_id")
        other_visit = Exists(Lesion.objects.filter(case=OuterRef("pk"), tracked_id__in=under_review))
        scope |= Q(in_queue) | Q(reviewed) | Q(claimed_by=user) | Q(other_visit)
    return scope


def visible_cases(user) -> QuerySet[Case]:
    """Cases the user may open: a clinician's clinic's; a dermatologist's queue, claims and reviews,
    and the other visits of the lesions under review; every case for an admin."""
    scope = _case_filter(user)
    queryset = Case.objects.select_related("patient", "patient__clinic", "referring_clinician", "claimed_by")
    return queryset if scope is None else queryset.filter(scope)


def visible_patients(user) -> QuerySet[Patient]:
    """Patients of the user's clinic (clinicians), of visible cases (dermatologists), or all (admins)."""
    if is_admin(user):
        return Patient.objects.select_related("clinic")
    scope = Q(pk__in=visible_cases(user).values("patient_id"))
    clinic = clinic_of(user)
    if clinic is not None and in_role(user, CLINICIAN):
        scope |= Q(clinic=clinic)  # includes patients without any case yet
    return Patient.objects.select_related("clinic").filter(scope)


def visible_lesions(user) -> QuerySet[Lesion]:
    """Lesions of visible cases."""
    return Lesion.objects.select_related("case", "case__patient").filter(case__in=visible_cases(user))


def visible_images(user) -> QuerySet[LesionImage]:
    """Images of visible cases."""
    return LesionImage.objects.select_related("lesion", "lesion__case", "lesion__case__patient").filter(
        lesion__case__in=visible_cases(user)
    )


def visible_predictions(user) -> QuerySet[Prediction]:
    """Predictions of images of visible cases."""
    return Prediction.objects.select_related("image", "image__lesion", "image__lesion__case", "model_version").filter(
        image__lesion__case__in=visible_cases(user)
    )


def can_edit_case(user, case: Case) -> bool:
    """Clinicians of the case's clinic (and admins) add lesions, upload images and retry scoring,
    while the case is not closed."""
    if case.status == Case.Status.CLOSED:
        return False
    if is_admin(user):
        return True
    return is_clinician(user) and clinic_of(user) == case.patient.clinic
