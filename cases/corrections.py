"""Corrections without losing history: patient, lesion site and case details corrected by their
clinic, cases closed, signed reviews amended.

Every correction is audited with its old and new values and the reason. A correction that changes
what the model sees (the patient's birth year or sex, the lesion's site) scores the affected
images again as a new prediction revision carrying the reason; the earlier scores stay. AI outputs
and signed reviews are never edited in place.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial
from typing import Iterable

from django.core.exceptions import PermissionDenied, ValidationError
from django.db import IntegrityError, transaction
from django.db.models import Max
from django.http import HttpRequest
from django.utils import timezone

from audit import log as audit_log
from cases import body_map, scoring
from cases.access import can_edit_case, clinic_of, is_clinician, is_reviewer
from cases.roles import display_name, is_admin
from cases.models import Case, Lesion, LesionImage, Patient, PatientLesion, Prediction, Review
from classifier.registry import active_version

PATIENT_FIELDS = ("identifier", "birth_year", "sex", "fitzpatrick_type")
CASE_FIELDS = ("visit_date", "clinical_question", "notes")
MODEL_INPUTS = {"birth_year": "birth year", "sex": "sex"}  # what the model reads of the patient


def may_correct(user, case: Case) -> bool:
    """The case's clinic (and admins) may correct its records, closed or not."""
    return is_admin(user) or (is_clinician(user) and clinic_of(user) == case.patient.clinic)


def may_place(user, tracked: PatientLesion) -> bool:
    """The clinic of the lesion's latest visit may place it on the body map."""
    latest = tracked.latest_visit()
    return latest is not None and may_correct(user, latest.case)


def _need_reason(reason: str) -> str:
    reason = (reason or "").strip()
    if not reason:
        raise ValidationError({"reason": "Say why the record is corrected (it is kept in the audit trail)."})
    return reason


def _apply(obj, fields: Iterable[str], values: dict, *, user, request, reason: str) -> dict:
    """Set the changed fields, validate, save and audit; returns {field: (old, new)} of the changes."""
    old = audit_log.snapshot(obj, fields)
    for name in fields:
        if name in values:
            setattr(obj, name, values[name])
    obj.full_clean()
    new = audit_log.snapshot(obj, fields)
    changed = {name: (old[name], new[name]) for name in fields if old[name] != new[name]}
    if changed:
        obj.save()
        audit_log.record(action="update", obj=obj, actor=user, request=request,
                         old={k: v[0] for k, v in changed.items()},
                         new={**{k: v[1] for k, v in changed.items()}, "reason": reason})
    return changed


def rescore(images: Iterable[LesionImage], *, reason: str) -> list[Prediction]:
    """Score images again with the active version as the next revision, with the reason; sent after commit."""
    version = active_version()
    created = []
    for image in images:
        latest = Prediction.objects.filter(image=image, model_version=version).aggregate(n=Max("context_revision"))["n"]
        revision = 0 if latest is None else latest + 1
        prediction = Prediction.objects.create(image=image, model_version=version, context_revision=revision,
                                               reason=reason[:300])
        transaction.on_commit(partial(scoring.dispatch_prediction, prediction.pk))
        created.append(prediction)
    return created


@transaction.atomic
def correct_patient(*, user, patient: Patient, reason: str, values: dict,
                    request: HttpRequest | None = None) -> list[Prediction]:
    """Correct a patient's record; a changed birth year or sex re-scores the patient's images."""
    if not (is_admin(user) or (is_clinician(user) and clinic_of(user) == patient.clinic)):
        raise PermissionDenied("Only clinicians of the patient's clinic can correct the record.")
    reason = _need_reason(reason)
    changed = _apply(patient, PATIENT_FIELDS, values, user=user, request=request, reason=reason)
    inputs = [f"{MODEL_INPUTS[k]} corrected from {v[0]} to {v[1]}" for k, v in changed.items() if k in MODEL_INPUTS]
    if not inputs:
        return []
    images = LesionImage.objects.filter(lesion__case__patient=patient)
    return rescore(images, reason=f"{'; '.join(inputs)} by {display_name(user)}: {reason}")


@transaction.atomic
def correct_lesion_site(*, user, lesion: Lesion, anatomic_site: str, reason: str,
                        request: HttpRequest | None = None) -> list[Prediction]:
    """Correct where a lesion is; its images are scored again with the corrected site."""
    if not may_correct(user, lesion.case):
        raise PermissionDenied("Only clinicians of the patient's clinic can correct the lesion.")
    reason = _need_reason(reason)
    changed = _apply(lesion, ("anatomic_site",), {"anatomic_site": anatomic_site}, user=user, request=request,
                     reason=reason)
    if not changed:
        return []
    old, new = changed["anatomic_site"]
    _unplace_if_contradicted(lesion, user=user, request=request, reason=f"site corrected to {new}: {reason}")
    return rescore(lesion.images.all(), reason=f"site corrected from {old} to {new} by {display_name(user)}: {reason}")


def _unplace_if_contradicted(lesion: Lesion, *, user, request, reason: str) -> None:
    """A corrected site that the lesion's body-map point contradicts takes the point off the map
    (audited), so the map never shows a site the model did not read; the clinician places it again."""
    tracked = PatientLesion.objects.select_for_update().filter(pk=lesion.tracked_id).first()
    if tracked is None or not tracked.map_view or tracked.latest_visit() != lesion:
        return
    if body_map.site_problem(tracked.map_view, tracked.map_x, tracked.map_y, lesion.anatomic_site):
        _apply(tracked, ("map_view", "map_x", "map_y"), {"map_view": "", "map_x": None, "map_y": None},
               user=user, request=request, reason=reason)


@dataclass
class CaseCorrection:
    """What a case correction did: the changed fields ({field: (old, new)}) and the images' new scores."""

    changed: dict = field(default_factory=dict)
    rescored: list[Prediction] = field(default_factory=list)


@transaction.atomic
def correct_case(*, user, case: Case, reason: str, values: dict,
                 request: HttpRequest | None = None) -> CaseCorrection:
    """Correct a case's visit date, clinical question or notes. The model reads only the patient's
    age at the visit: a visit date moved to another year re-scores the case's images."""
    if not may_correct(user, case):
        raise PermissionDenied("Only clinicians of the patient's clinic can correct the case.")
    reason = _need_reason(reason)
    changed = _apply(case, CASE_FIELDS, values, user=user, request=request, reason=reason)
    rescored: list[Prediction] = []
    if "visit_date" in changed and case.patient.birth_year:
        old, new = changed["visit_date"]  # as the audit trail writes them: ISO dates
        if str(old)[:4] != str(new)[:4]:
            images = LesionImage.objects.filter(lesion__case=case)
            rescored = rescore(images, reason=f"visit date corrected from {old} to {new} (the age at the visit) "
                                              f"by {display_name(user)}: {reason}")
    return CaseCorrection(changed=changed, rescored=rescored)


PLACE_FIELDS = ("side", "map_view", "map_x", "map_y")


@transaction.atomic
def place_lesion(*, user, tracked: PatientLesion, reason: str, values: dict,
                 request: HttpRequest | None = None) -> dict:
    """Place (or move) a patient's lesion on the body map; the model does not read the point."""
    if not may_place(user, tracked):
        raise PermissionDenied("Only clinicians of the patient's clinic can place the lesion.")
    return _apply(tracked, PLACE_FIELDS, values, user=user, request=request, reason=_need_reason(reason))


@transaction.atomic
def close_case(*, user, case: Case, note: str = "", request: HttpRequest | None = None) -> None:
    """Close a case: nothing more is added to it. Refused while a flagged lesion waits for a
    dermatologist or an image is still being scored (nothing flagged is dropped silently)."""
    if not can_edit_case(user, case):
        raise PermissionDenied("Only clinicians of the patient's clinic can close the case.")
    locked = Case.objects.select_for_update().get(pk=case.pk)
    if locked.status == Case.Status.CLOSED:
        raise ValidationError("The case is already closed.")
    if locked.lesions.filter(awaiting_review=True).exists():
        raise ValidationError("A flagged lesion of this case is waiting for a dermatologist's review; "
                              "close the case after the review.")
    if Prediction.objects.filter(image__lesion__case=locked, status__in=["pending", "running"]).exists():
        raise ValidationError("An image of this case is still being scored; close the case when it is done.")
    now = timezone.now()
    old_status = locked.status
    Case.objects.filter(pk=locked.pk).update(status=Case.Status.CLOSED, closed_at=now, closed_by=user,
                                             claimed_by=None, claimed_at=None)
    audit_log.record(action="update", obj=locked, actor=user, request=request, old={"status": old_status},
                     new={"status": Case.Status.CLOSED, "closed_at": now.isoformat(), "reason": note.strip()})


REVIEW_FIELDS = ("agreement", "final_diagnosis", "management", "lesion_changed", "notes")


def _refuse_if_amended(review: Review) -> None:
    """Refuse a second amendment of ``review``: amendments chain, the newest one is amended."""
    if Review.objects.filter(amends=review).exists():
        raise ValidationError("This review was already amended; amend the newest version.")


@transaction.atomic
def amend_review(*, user, review: Review, reason: str, values: dict, request: HttpRequest | None = None) -> Review:
    """A new review that amends a signed one (which stays as it was, marked as amended)."""
    if not is_reviewer(user):
        raise PermissionDenied("Only dermatologists can amend a review.")
    reason = _need_reason(reason)
    # two dermatologists amending the same review at once: the second waits here for the first to
    # commit, then finds its amendment below (the database keeps one amendment per review)
    Review.objects.select_for_update().filter(pk=review.pk).first()
    _refuse_if_amended(review)
    amendment = Review(lesion=review.lesion, reviewer=user, amends=review, amendment_reason=reason,
                       **{name: values.get(name, getattr(review, name)) for name in REVIEW_FIELDS})
    try:
        amendment.full_clean()
        with transaction.atomic():  # a savepoint: the refusal below leaves the caller's transaction usable
            amendment.save()
    except (ValidationError, IntegrityError):
        # an amendment saved since the check above (a database without row locks) is caught by the
        # unique rule in full_clean or in the database: say so in the form's words, not as a 500
        _refuse_if_amended(review)
        raise
    audit_log.record(action="review", obj=amendment, actor=user, request=request, old=audit_log.snapshot(
        review, ("id", *REVIEW_FIELDS)), new={**audit_log.snapshot(amendment, ("amends", *REVIEW_FIELDS)),
                                              "reason": reason})
    return amendment
