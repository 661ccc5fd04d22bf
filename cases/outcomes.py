"""Histopathology outcomes: the laboratory's diagnosis of a lesion, entered by its clinic.

An outcome is never edited: a correction is a new outcome that supersedes the current one, with
the reason, so the history stays readable. Confirmed outcomes become training labels
(cases.training_labels) and feed the sensitivity and specificity of the monitoring page
(cases.drift).
"""
from __future__ import annotations

from datetime import date

from django.core.exceptions import PermissionDenied, ValidationError
from django.db import IntegrityError, transaction
from django.http import HttpRequest
from django.utils import timezone

from audit import log as audit_log
from cases.access import clinic_of, is_clinician
from cases.models import Lesion, Outcome
from cases.roles import is_admin

OUTCOME_FIELDS = ("lesion", "diagnosis", "diagnosis_date", "report_reference", "supersedes", "reason")


def may_record_outcome(user, lesion: Lesion) -> bool:
    """Clinicians of the lesion's clinic (and admins), whether or not the case is closed: the
    report usually arrives weeks after the visit, when the case may well be closed."""
    return is_admin(user) or (is_clinician(user) and clinic_of(user) == lesion.case.patient.clinic)


def current_outcome(lesion: Lesion) -> Outcome | None:
    """The lesion's result in force: the outcome that no later one supersedes."""
    return (Outcome.objects.select_related("entered_by", "supersedes")
            .filter(lesion=lesion, superseded_by__isnull=True).order_by("-entered_at", "-pk").first())


def _check(*, lesion: Lesion, diagnosis_date: date, current: Outcome | None, supersedes: Outcome | None,
           reason: str) -> None:
    """Refusals that the form cannot know of, each with its own message."""
    errors: dict[str, str] = {}
    if diagnosis_date > timezone.localdate():
        errors["diagnosis_date"] = "The report date can't be in the future."
    elif diagnosis_date < lesion.case.visit_date:
        errors["diagnosis_date"] = (f"The report date is before this visit ({lesion.case.visit_date:%Y-%m-%d}); "
                                    "enter the result at the visit the lesion was excised or biopsied.")
    if supersedes is None and current is not None:
        errors["supersedes"] = "This lesion already has a result: enter a correction of it, with the reason."
    elif supersedes is not None and (current is None or supersedes.pk != current.pk):
        errors["supersedes"] = ("Only the lesion's current result can be corrected "
                                "(it may have been corrected meanwhile).")
    if supersedes is not None and not reason:
        errors["reason"] = "Say why the result is corrected (it is kept with the earlier result)."
    if errors:
        raise ValidationError(errors)


@transaction.atomic
def record_outcome(*, user, lesion: Lesion, diagnosis: str, diagnosis_date: date, report_reference: str,
                   supersedes: Outcome | None = None, reason: str = "",
                   request: HttpRequest | None = None) -> Outcome:
    """Enter the histopathology result of a lesion (or, with ``supersedes``, correct the current one)."""
    if not may_record_outcome(user, lesion):
        raise PermissionDenied("Only clinicians of the patient's clinic can enter a histopathology result.")
    Lesion.objects.select_for_update().filter(pk=lesion.pk).first()  # one entry at a time per lesion
    reason = (reason or "").strip()
    _check(lesion=lesion, diagnosis_date=diagnosis_date, current=current_outcome(lesion), supersedes=supersedes,
           reason=reason)
    outcome = Outcome(lesion=lesion, diagnosis=diagnosis, diagnosis_date=diagnosis_date,
                      report_reference=(report_reference or "").strip(), entered_by=user, supersedes=supersedes,
                      reason=reason)
    try:
        outcome.full_clean()
        with transaction.atomic():  # a savepoint: the refusal below leaves the caller's transaction usable
            outcome.save()
    except (ValidationError, IntegrityError):
        # another first result or correction may have been saved since the check above (SQLite takes
        # no row lock; the unique rules catch it in full_clean or in the database): the same check,
        # against what is current now, says why in the form's words
        _check(lesion=lesion, diagnosis_date=diagnosis_date, current=current_outcome(lesion),
               supersedes=supersedes, reason=reason)
        raise
    audit_log.record(action="create", obj=outcome, actor=user, request=request,
                     new=audit_log.snapshot(outcome, OUTCOME_FIELDS))
    return outcome
