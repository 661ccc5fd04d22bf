"""The view that enters a histopathology result (cases.outcomes): thin glue between form and service."""
from __future__ import annotations

from django.contrib import messages
from django.core.exceptions import PermissionDenied, ValidationError
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.views.decorators.http import require_POST

from cases import access, outcomes
from cases.models import Lesion
from cases.outcome_forms import OutcomeForm
from cases.views import _case_page_context, _no_store

NOT_SAVED = "Histopathology result not saved: correct what is marked below (what you typed is kept)."
STALE = ("Histopathology result not saved: a result was entered or corrected meanwhile (shown above). What you "
         "typed is kept below: if it still applies, save it as a correction of that result, with the reason.")
TYPED = ("diagnosis", "diagnosis_date", "report_reference", "reason")  # kept when the form is shown again


def _entry_page(request: HttpRequest, lesion: Lesion, form: OutcomeForm, notice: str) -> HttpResponse:
    """The case page again with this lesion's form open as typed, its errors and the notice (status 400):
    the form lives on the case page, and a redirect would lose what was typed."""
    context = _case_page_context(request, lesion.case) | {
        "outcome_entry": {"lesion": lesion.pk, "form": form, "notice": notice}}
    return _no_store(render(request, "cases/case_detail.html", context, status=400))


def _add_service_errors(form: OutcomeForm, exc: ValidationError) -> None:
    """The service's refusals next to the fields they concern; the hidden "supersedes" one above the form."""
    for field, errors in exc.message_dict.items():
        form.add_error(field if field in form.fields and field != "supersedes" else None, errors)


@require_POST
def lesion_outcome(request: HttpRequest, pk: int) -> HttpResponse:
    """Save the result (or its correction) and go back to the lesion on the case page."""
    lesion = get_object_or_404(access.visible_lesions(request.user), pk=pk)
    if not outcomes.may_record_outcome(request.user, lesion):
        raise PermissionDenied("Only clinicians of the patient's clinic can enter a histopathology result.")
    current = outcomes.current_outcome(lesion)
    if current is not None and request.POST.get("supersedes", "") != str(current.pk):
        # the page showed another result (or none): a fresh form against the result now in force, filled
        # with what was typed, before validating (a correction needs a reason the first page did not ask for)
        typed = {name: request.POST[name] for name in TYPED if request.POST.get(name)}
        return _entry_page(request, lesion, OutcomeForm(initial=typed, lesion=lesion, current=current), STALE)
    form = OutcomeForm(request.POST, lesion=lesion, current=current)
    if not form.is_valid():
        return _entry_page(request, lesion, form, NOT_SAVED)
    try:
        outcome = outcomes.record_outcome(
            user=request.user, lesion=lesion, diagnosis=form.cleaned_data["diagnosis"],
            diagnosis_date=form.cleaned_data["diagnosis_date"], report_reference=form.cleaned_data["report_reference"],
            supersedes=current, reason=form.cleaned_data.get("reason", ""), request=request)
    except ValidationError as exc:
        _add_service_errors(form, exc)
        return _entry_page(request, lesion, form, NOT_SAVED)
    verb = "corrected" if current else "saved"
    messages.success(request, f"Histopathology result {verb}: {outcome.get_diagnosis_display()}, "
                              f"report {outcome.report_reference}.")
    return redirect(f"{reverse('case_detail', args=[lesion.case_id])}#outcome-{lesion.pk}")
