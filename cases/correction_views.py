"""Views of the corrections (cases.corrections): thin glue between a form and a service."""
from __future__ import annotations

from django.contrib import messages
from django.core.exceptions import PermissionDenied, ValidationError
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.views.decorators.http import require_POST

from cases import access, body_map, corrections, followup
from cases.correction_forms import (CaseCorrectionForm, CloseCaseForm, LesionSiteForm, PatientCorrectionForm,
                                    PlaceLesionForm, ReviewAmendmentForm)
from cases.models import PatientLesion, Review


def _form_page(request, *, title: str, form, back: str, explain: str, status: int = 200) -> HttpResponse:
    return render(request, "cases/correction_form.html", {"title": title, "form": form, "back": back,
                                                          "explain": explain}, status=status)


def _rescored(request, predictions) -> None:
    if predictions:
        messages.info(request, f"{len(predictions)} image(s) are being scored again with the corrected details; "
                               "the earlier scores are kept.")


def patient_correct(request: HttpRequest, pk: int) -> HttpResponse:
    patient = get_object_or_404(access.visible_patients(request.user), pk=pk)
    if not (access.is_clinician(request.user) and access.clinic_of(request.user) == patient.clinic):
        raise Http404
    form = PatientCorrectionForm(request.POST or None, instance=patient, clinic=patient.clinic)
    back = reverse("patient_detail", args=[patient.pk])
    if request.method == "POST" and form.is_valid():
        values = {k: form.cleaned_data[k] for k in corrections.PATIENT_FIELDS}
        patient.refresh_from_db()  # the form changed the instance in memory; the service compares with the record
        rescored = corrections.correct_patient(user=request.user, patient=patient, reason=form.cleaned_data["reason"],
                                               values=values, request=request)
        messages.success(request, f"Patient {patient.identifier} corrected.")
        _rescored(request, rescored)
        return redirect(back)
    return _form_page(request, title=f"Correct patient {patient.identifier}", form=form, back=back,
                      explain="A corrected birth year or sex changes what the model reads: every image of the "
                              "patient is then scored again, and the earlier scores are kept.",
                      status=400 if request.method == "POST" else 200)


def lesion_correct(request: HttpRequest, pk: int) -> HttpResponse:
    lesion = get_object_or_404(access.visible_lesions(request.user), pk=pk)
    if not corrections.may_correct(request.user, lesion.case):
        raise Http404
    form = LesionSiteForm(request.POST or None, initial={"anatomic_site": lesion.anatomic_site})
    back = f"{reverse('case_detail', args=[lesion.case_id])}#lesion-{lesion.pk}"
    if request.method == "POST" and form.is_valid():
        placed = bool(lesion.tracked and lesion.tracked.map_view)
        rescored = corrections.correct_lesion_site(user=request.user, lesion=lesion,
                                                   anatomic_site=form.cleaned_data["anatomic_site"],
                                                   reason=form.cleaned_data["reason"], request=request)
        messages.success(request, "Lesion site corrected." if rescored else "The site was unchanged.")
        _rescored(request, rescored)
        if placed and not PatientLesion.objects.get(pk=lesion.tracked_id).map_view:
            messages.warning(request, f"{lesion.tracked.label}'s point on the body map was outside the corrected "
                                      "site, so it was taken off the map: place it again from its timeline.")
        return redirect(back)
    return _form_page(request, title=f"Correct the site of lesion {lesion.tracked.label if lesion.tracked else lesion.pk}",
                      form=form, back=back,
                      explain="The model weighs the site: the lesion's images are scored again with the corrected "
                              "site, and the earlier scores are kept.",
                      status=400 if request.method == "POST" else 200)


def case_correct(request: HttpRequest, pk: int) -> HttpResponse:
    case = get_object_or_404(access.visible_cases(request.user), pk=pk)
    if not corrections.may_correct(request.user, case):
        raise Http404
    form = CaseCorrectionForm(request.POST or None, instance=case)
    back = reverse("case_detail", args=[case.pk])
    if request.method == "POST" and form.is_valid():
        case.refresh_from_db()
        values = {k: form.cleaned_data[k] for k in corrections.CASE_FIELDS}
        result = corrections.correct_case(user=request.user, case=case, reason=form.cleaned_data["reason"],
                                          values=values, request=request)
        messages.success(request, "Case corrected." if result.changed else "Nothing was changed.")
        _rescored(request, result.rescored)
        return redirect(back)
    return _form_page(request, title=f"Correct case {case.pk}", form=form, back=back,
                      explain="The question and notes are not read by the model. Moving the visit to another year "
                              "changes the age the model reads: the case's images are then scored again, and the "
                              "earlier scores are kept.",
                      status=400 if request.method == "POST" else 200)


def lesion_place(request: HttpRequest, patient_pk: int, number: int) -> HttpResponse:
    """Place or move a patient's lesion on the body map (audited with the reason)."""
    patient = get_object_or_404(access.visible_patients(request.user), pk=patient_pk)
    tracked = get_object_or_404(PatientLesion, patient=patient, number=number)
    if not corrections.may_place(request.user, tracked):
        raise Http404
    initial = {"side": tracked.side, "map_view": tracked.map_view, "map_x": tracked.map_x, "map_y": tracked.map_y}
    latest = tracked.latest_visit()
    form = PlaceLesionForm(request.POST or None, initial=initial, latest=latest)
    back = reverse("tracked_lesion", args=[patient.pk, tracked.number])
    if request.method == "POST" and form.is_valid():
        values = {k: form.cleaned_data[k] for k in corrections.PLACE_FIELDS}
        changed = corrections.place_lesion(user=request.user, tracked=tracked, reason=form.cleaned_data["reason"],
                                           values=values, request=request)
        messages.success(request, f"{tracked.label} placed on the body map." if changed else "Nothing was changed.")
        return redirect(back)
    return render(request, "cases/lesion_place.html", {
        "title": f"Place {tracked.label} on the body map", "form": form, "back": back, "latest": latest,
        "correct_url": reverse("lesion_correct", args=[latest.pk]) if latest else None,
        "map": body_map.svg_context(interactive=True)}, status=400 if request.method == "POST" else 200)


@require_POST
def case_close(request: HttpRequest, pk: int) -> HttpResponse:
    case = get_object_or_404(access.visible_cases(request.user), pk=pk)
    if not corrections.may_correct(request.user, case):
        raise Http404
    form = CloseCaseForm(request.POST)
    note = form.cleaned_data["note"] if form.is_valid() else ""
    try:
        corrections.close_case(user=request.user, case=case, note=note, request=request)
    except (ValidationError, PermissionDenied) as exc:
        messages.error(request, " ".join(getattr(exc, "messages", [str(exc)])))
    else:
        messages.success(request, "Case closed. Its record stays readable; nothing more can be added to it.")
    return redirect("case_detail", case.pk)


def review_amend(request: HttpRequest, pk: int) -> HttpResponse:
    review = get_object_or_404(Review.objects.select_related("lesion__case"),
                               pk=pk, lesion__in=access.visible_lesions(request.user))
    if not access.is_reviewer(request.user):
        raise Http404
    initial = {name: getattr(review, name) for name in corrections.REVIEW_FIELDS}
    form = ReviewAmendmentForm(request.POST or None, initial=initial,
                               earlier_visits=followup.earlier_visits(review.lesion).exists())
    back = f"{reverse('case_detail', args=[review.lesion.case_id])}#lesion-{review.lesion_id}"
    if request.method == "POST" and form.is_valid():
        values = {k: v for k, v in form.cleaned_data.items() if k in corrections.REVIEW_FIELDS}
        try:
            corrections.amend_review(user=request.user, review=review, reason=form.cleaned_data["reason"],
                                     values=values, request=request)
        except ValidationError as exc:
            messages.error(request, " ".join(exc.messages))
            return redirect(back)
        messages.success(request, "Amendment saved. The signed review is kept as it was.")
        return redirect(back)
    return _form_page(request, title="Amend the review", form=form, back=back,
                      explain="A signed review is never changed: the amendment is a new review that refers to it, "
                              "shown with its date, author and reason.",
                      status=400 if request.method == "POST" else 200)
