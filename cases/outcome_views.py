"""The view that enters a histopathology result (cases.outcomes): thin glue between form and service."""
from __future__ import annotations

from django.contrib import messages
from django.core.exceptions import PermissionDenied, ValidationError
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect
from django.urls import reverse
from django.views.decorators.http import require_POST

from cases import access, outcomes
from cases.outcome_forms import OutcomeForm


def _errors(form_errors) -> str:
    """Field errors as one sentence for the message (the form lives on the case page)."""
    return " ".join(f"{field.replace('_', ' ').capitalize()}: {' '.join(errs)}"
                    if field not in ("__all__", "supersedes") else " ".join(errs)
                    for field, errs in form_errors.items())


@require_POST
def lesion_outcome(request: HttpRequest, pk: int) -> HttpResponse:
    """Save the result (or its correction) and go back to the lesion on the case page."""
    lesion = get_object_or_404(access.visible_lesions(request.user), pk=pk)
    if not outcomes.may_record_outcome(request.user, lesion):
        raise PermissionDenied("Only clinicians of the patient's clinic can enter a histopathology result.")
    back = redirect(f"{reverse('case_detail', args=[lesion.case_id])}#outcome-{lesion.pk}")
    current = outcomes.current_outcome(lesion)
    form = OutcomeForm(request.POST, lesion=lesion, current=current)
    if not form.is_valid():
        messages.error(request, f"Histopathology result not saved. {_errors(form.errors)}")
        return back
    posted = form.cleaned_data.get("supersedes")
    supersedes = current if current is not None and posted == current.pk else None
    if current is not None and supersedes is None:
        messages.error(request, "Histopathology result not saved: a result was entered or corrected meanwhile. "
                                "Check the result shown.")
        return back
    try:
        outcome = outcomes.record_outcome(
            user=request.user, lesion=lesion, diagnosis=form.cleaned_data["diagnosis"],
            diagnosis_date=form.cleaned_data["diagnosis_date"], report_reference=form.cleaned_data["report_reference"],
            supersedes=supersedes, reason=form.cleaned_data.get("reason", ""), request=request)
    except ValidationError as exc:
        messages.error(request, f"Histopathology result not saved. {_errors(exc.message_dict)}")
        return back
    verb = "corrected" if supersedes else "saved"
    messages.success(request, f"Histopathology result {verb}: {outcome.get_diagnosis_display()}, "
                              f"report {outcome.report_reference}.")
    return back
