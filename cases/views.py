"""Web views for clinicians and dermatologists: thin glue between forms, scoping and services.

Every object is fetched through cases.access, so ids outside the user's scope are 404.
"""
from __future__ import annotations

from django.conf import settings
from django.contrib import messages
from django.core.exceptions import PermissionDenied, ValidationError
from django.core.files.storage import default_storage
from django.core.paginator import Paginator
from django.db.models import Count, Prefetch, Q, prefetch_related_objects
from django.http import FileResponse, Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.template.loader import render_to_string
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.http import require_GET, require_POST

from audit import log as audit_log
from cases import access, body_map, corrections, followup, queue, services
from cases.case_filters import (CaseFilterForm, PatientFilterForm, QueueFilterForm, filter_cases, filter_patients,
                                filter_queue, with_last_visit)
from cases.forms import CaseForm, LesionForm, PatientForm, ReviewForm, UploadForm
from cases.models import Case, Lesion, LesionImage, Outcome, PatientLesion, Prediction
from cases.presentation import age_at_visit, flag_badge_text, prediction_context
from cases.roles import display_name

PRIVATE = "private, no-store"


def _no_store(response: HttpResponse) -> HttpResponse:
    response["Cache-Control"] = PRIVATE
    return response


def home(request: HttpRequest) -> HttpResponse:
    """Landing page: recent cases, and the queue for reviewers."""
    cases = access.visible_cases(request.user).annotate(lesion_count=Count("lesions"))[:15]
    return render(request, "cases/home.html", {
        "cases": cases,
        "is_clinician": access.is_clinician(request.user),
        "is_reviewer": access.is_reviewer(request.user),
    })


# --- Patients --------------------------------------------------------------------------------

def _page(request: HttpRequest, rows):
    """One page of ``rows`` (settings.LIST_PAGE_SIZE per page; a bad page number gives the nearest page)."""
    return Paginator(rows, settings.LIST_PAGE_SIZE).get_page(request.GET.get("page"))


@require_GET
def patient_list(request: HttpRequest) -> HttpResponse:
    """Patients the user may see: search by identifier, filters (lesion status, last visit, reviewer)."""
    form = PatientFilterForm(request.GET or None)
    cases = access.visible_cases(request.user)
    patients = with_last_visit(access.visible_patients(request.user), cases).annotate(
        case_count=Count("cases", filter=Q(cases__in=cases)))  # only the visits this user may open
    if form.is_bound and form.is_valid():
        patients = filter_patients(patients, form.cleaned_data, cases)
    page = _page(request, patients.order_by("clinic__name", "identifier", "pk"))
    rows = list(page.object_list)
    # the rows show patient identifiers: one "view" per patient shown, as the queue and the API record them
    audit_log.record_many(action="view", objs=rows, request=request, new={"via": "list"})
    return _no_store(render(request, "cases/patient_list.html", {
        "form": form, "patients": rows, "page_obj": page, "can_create": access.is_clinician(request.user),
    }, status=_filter_status(form)))


def _filter_status(form) -> int:
    # a bad filter shows the message and the unfiltered list, as a 400 so scripts notice
    return 400 if form.is_bound and not form.is_valid() else 200


@require_GET
def case_list(request: HttpRequest) -> HttpResponse:
    """Cases the user may see, newest visit first: search and filters (state, visit dates, reviewer)."""
    form = CaseFilterForm(request.GET or None)
    cases = access.visible_cases(request.user).annotate(lesion_count=Count("lesions"))
    if form.is_bound and form.is_valid():
        cases = filter_cases(cases, form.cleaned_data)
    page = _page(request, cases.order_by("-visit_date", "-created_at", "pk"))
    rows = list(page.object_list)
    audit_log.record_many(action="view", objs=rows, request=request, new={"via": "list"})  # identifiers, questions
    return _no_store(render(request, "cases/case_list.html", {"form": form, "cases": rows,
                                                              "page_obj": page}, status=_filter_status(form)))


def patient_create(request: HttpRequest) -> HttpResponse:
    """New patient in the clinician's clinic."""
    clinic = access.clinic_of(request.user)
    if not access.is_clinician(request.user):
        raise PermissionDenied("Only clinicians who belong to a clinic can add patients.")
    form = PatientForm(request.POST or None, clinic=clinic)
    if request.method == "POST" and form.is_valid():
        patient = services.create_patient(user=request.user, request=request, **form.cleaned_data)
        messages.success(request, f"Patient {patient.identifier} added.")
        return redirect("patient_detail", patient.pk)
    return render(request, "cases/patient_form.html", {"form": form, "clinic": clinic})


@require_GET
def patient_detail(request: HttpRequest, pk: int) -> HttpResponse:
    """A patient and the cases the user may see."""
    patient = get_object_or_404(access.visible_patients(request.user), pk=pk)
    cases = access.visible_cases(request.user).filter(patient=patient).annotate(lesion_count=Count("lesions"))
    audit_log.record(action="view", obj=patient, request=request)
    lesions = followup.patient_map(patient, access.visible_lesions(request.user))
    markers = [body_map.Marker(*body_map.marker_position(item.tracked.map_view, item.tracked.map_x, item.tracked.map_y),
                               label=item.tracked.label, status=item.status,
                               title=f"{item.tracked.label}: {item.latest.get_anatomic_site_display()}, {item.status_label}",
                               url=reverse("tracked_lesion", args=[patient.pk, item.tracked.number]))
               for item in lesions if item.tracked.map_view]
    return _no_store(render(request, "cases/patient_detail.html", {
        "patient": patient, "cases": cases, "map_lesions": lesions,
        "may_correct": access.is_clinician(request.user) and access.clinic_of(request.user) == patient.clinic, "map": body_map.svg_context(markers),
        "status_labels": followup.STATUS_LABELS,
        "can_create_case": access.is_clinician(request.user) and access.clinic_of(request.user) == patient.clinic,
    }))


def case_create(request: HttpRequest, patient_pk: int) -> HttpResponse:
    """New case for a patient of the clinician's clinic."""
    patient = get_object_or_404(access.visible_patients(request.user), pk=patient_pk)
    if not (access.is_clinician(request.user) and access.clinic_of(request.user) == patient.clinic):
        raise PermissionDenied("Only clinicians of the patient's clinic can open a case.")
    form = CaseForm(request.POST or None, patient=patient)
    if request.method == "POST" and form.is_valid():
        case = services.create_case(user=request.user, patient=patient, request=request, **form.cleaned_data)
        messages.success(request, "Case opened. Add a lesion, then upload its images.")
        return redirect("case_detail", case.pk)
    return render(request, "cases/case_form.html", {"form": form, "patient": patient})


# --- Cases, lesions, uploads -------------------------------------------------------------------

def _case_page_context(request: HttpRequest, case: Case) -> dict:
    predictions = Prediction.objects.select_related("model_version").order_by("-created_at")
    # per lesion, no query of its own: its patient lesion and visit count (the timeline link), and
    # its histopathology entries (outcome_tags.lesion_outcome reads the prefetched ones)
    lesions = case.lesions.select_related("tracked").annotate(visit_count=Count("tracked__visits")).prefetch_related(
        Prefetch("images", queryset=LesionImage.objects.prefetch_related(Prefetch("predictions", queryset=predictions))),
        "reviews__reviewer", Prefetch("outcomes", queryset=Outcome.objects.select_related("entered_by", "supersedes")),
    )
    can_edit = access.can_edit_case(request.user, case)
    queue.mark_claims([case])
    lesions = list(lesions)
    for lesion in lesions:  # the badge's words, the same the status poll sends
        lesion.flag_badge = flag_badge_text(lesion)
    return {
        "case": case,
        "claim_expiry_hours": settings.CLAIM_EXPIRY_HOURS,
        "lesions": lesions,
        # a closed case's lesion flagged after closing (a re-score) can still be claimed and reviewed
        "case_awaiting": any(lesion.awaiting_review for lesion in lesions),
        "can_edit": can_edit,
        "may_correct": corrections.may_correct(request.user, case),
        "is_reviewer": access.is_reviewer(request.user),
        # waiting for review although every current score is below the thresholds: said beside the flag
        "flag_cleared": queue.flag_cleared_lesions(case),
        "flag_cleared_text": queue.FLAG_CLEARED_TEXT,
        "lesion_form": LesionForm(case=case),
        "map": body_map.svg_context(interactive=True, clearable=True),
        "upload_form": UploadForm(),
        # an image stored while no model was active waits too: the sweep gives it a prediction, which the poll shows
        "any_active": Prediction.objects.filter(
            image__lesion__case=case, status__in=[Prediction.Status.PENDING, Prediction.Status.RUNNING]
        ).exists() or LesionImage.objects.filter(lesion__case=case, predictions__isnull=True).exists(),
    }


@require_GET
def case_detail(request: HttpRequest, pk: int) -> HttpResponse:
    """The case: lesions, their images and live scoring status, upload and lesion forms."""
    case = get_object_or_404(access.visible_cases(request.user), pk=pk)
    audit_log.record(action="view", obj=case, request=request)
    return _no_store(render(request, "cases/case_detail.html", _case_page_context(request, case)))


@require_POST
def lesion_create(request: HttpRequest, case_pk: int) -> HttpResponse:
    """Add a lesion to the case."""
    case = get_object_or_404(access.visible_cases(request.user), pk=case_pk)
    if not access.can_edit_case(request.user, case):
        raise PermissionDenied("Only clinicians of the patient's clinic can add lesions.")
    form = LesionForm(request.POST, case=case)
    if not form.is_valid():
        context = _case_page_context(request, case) | {"lesion_form": form}
        return render(request, "cases/case_detail.html", context, status=400)
    earlier = form.cleaned_data.get("same_as")
    where = _placement(earlier)
    lesion = services.add_lesion(user=request.user, case=case, request=request, **form.cleaned_data)
    messages.success(request, f"{lesion} added. Upload its images below.")
    if earlier is not None and _placement(lesion.tracked) != where:
        messages.info(request, f"{lesion.tracked.label}'s side or place on the body map was changed as given, "
                               "for all its visits.")
    return redirect(f"{reverse('case_detail', args=[case.pk])}#lesion-{lesion.pk}")


def _placement(tracked: PatientLesion | None) -> tuple | None:
    """A tracked lesion's side and body-map point, to tell whether adding a visit moved it."""
    return None if tracked is None else (tracked.side, tracked.map_view, tracked.map_x, tracked.map_y)


def lesion_detail(request: HttpRequest, pk: int) -> HttpResponse:
    """A lesion's images and results, with the upload form (GET shows it, POST uploads)."""
    lesion = get_object_or_404(access.visible_lesions(request.user), pk=pk)
    can_edit = access.can_edit_case(request.user, lesion.case)
    form = UploadForm()
    status = 200
    if request.method == "POST":
        if not can_edit:
            raise PermissionDenied("Only clinicians of the patient's clinic can upload images.")
        form = UploadForm(request.POST, request.FILES)
        if form.is_valid():
            outcome = services.upload_images(user=request.user, lesion=lesion, files=form.cleaned_data["images"],
                                             kind=form.cleaned_data["kind"], request=request)
            _report_upload(request, outcome)
            if outcome.accepted or not outcome.rejected:
                return redirect(f"{reverse('case_detail', args=[lesion.case_id])}#lesion-{lesion.pk}")
            status = 400
        else:
            status = 400
    images = lesion.images.prefetch_related("predictions__model_version")
    audit_log.record(action="view", obj=lesion, request=request)
    return _no_store(render(request, "cases/lesion_detail.html", {
        "lesion": lesion, "case": lesion.case, "images": images, "form": form, "can_edit": can_edit,
    }, status=status))


@require_GET
def tracked_lesion(request: HttpRequest, patient_pk: int, number: int) -> HttpResponse:
    """One patient lesion over its visits: images per visit, the melanoma probability per visit
    as a small plot, "changed" markers, and two chosen visits compared side by side."""
    patient = get_object_or_404(access.visible_patients(request.user), pk=patient_pk)
    tracked = get_object_or_404(PatientLesion, patient=patient, number=number)
    visits = followup.timeline(tracked, access.visible_lesions(request.user))
    if not visits:
        raise Http404  # no visit of it in the user's scope
    audit_log.record(action="view", obj=tracked, request=request)
    by_id = {visit.lesion.pk: visit for visit in visits}

    def chosen(name: str, default):
        try:
            return by_id.get(int(request.GET.get(name, "")), default)
        except ValueError:
            return default

    first, second = chosen("a", visits[0]), chosen("b", visits[-1])
    for visit in visits:  # the threshold of the score shown, so that it never reads as equal to it when not
        visit.melanoma_threshold = next(
            (p.model_version.melanoma_threshold for i in visit.images if (p := followup.latest_scored(i)) is not None
             and p.assessable and p.melanoma_probability == visit.melanoma), None)
    # a plotted score's version: a score the model could not assess is neither plotted nor its threshold drawn
    threshold = next((p.model_version.melanoma_threshold for v in reversed(visits) for i in v.images
                      if (p := followup.latest_scored(i)) is not None and p.assessable), None)
    versions = followup.scoring_versions(visits)  # more than one: the line is the latest version's only
    plot = followup.score_plot(visits)
    if threshold is not None:
        plot["threshold_y"] = plot["height"] - plot["pad"] - threshold * (plot["height"] - 2 * plot["pad"])
    markers = []
    if tracked.map_view:
        x, y = body_map.marker_position(tracked.map_view, tracked.map_x, tracked.map_y)
        latest, status = visits[-1].lesion, followup.status(tracked, [visit.lesion for visit in visits])
        # the words of the patient page's marker: the colour alone must not carry the status
        markers = [body_map.Marker(x, y, label=tracked.label, status=status, url="#",
                                   title=f"{tracked.label}: {latest.get_anatomic_site_display()}, "
                                         f"{followup.STATUS_LABELS[status]}")]
    return _no_store(render(request, "cases/tracked_lesion.html", {
        "patient": patient, "tracked": tracked, "visits": visits, "latest": visits[-1], "plot": plot,
        "threshold": threshold, "versions": versions, "compare": (first, second), "map": body_map.svg_context(markers),
        "rise_points": followup.rise_points(settings.FOLLOW_UP_SCORE_RISE),
        "may_correct": corrections.may_correct(request.user, visits[-1].lesion.case),
    }))


def _report_upload(request: HttpRequest, outcome: services.UploadOutcome) -> None:
    """One message per file, so the user knows exactly what happened to each."""
    if outcome.accepted:
        # without a model nothing is scoring: say when it will, once, and only when something was stored
        clinical = sum(image.kind == LesionImage.Kind.CLINICAL for image in outcome.accepted)
        if clinical == len(outcome.accepted):
            # the model does not score clinical photos: they are stored and go to a dermatologist
            # (as "could not assess", once a model has looked at them)
            next_step = ("stored; clinical photos are not scored by the model and go to a dermatologist"
                         + (" once a model is available" if outcome.scoring_unavailable else ""))
        else:
            next_step = ("stored; scoring will start when a model is available" if outcome.scoring_unavailable
                         else "scoring has started")
            if clinical:
                next_step += f" ({clinical} clinical photo(s) among them are not scored by the model and go to a dermatologist)"
        messages.success(request, f"{len(outcome.accepted)} image(s) uploaded and {next_step}.")
    for name, note in outcome.notes:
        messages.warning(request, f"“{name}”: {note}")
    for name, existing in outcome.duplicates:
        where = f" (already stored as image {existing.pk})" if existing else " (twice in this upload)"
        messages.warning(request, f"“{name}”: this image was already uploaded for this lesion{where}; not stored again.")
    for name, reason in outcome.rejected:
        messages.error(request, f"“{name}” was rejected: {reason}")


@require_GET
def case_status(request: HttpRequest, pk: int) -> JsonResponse:
    """JSON for the case page's polling: per image, the prediction in force
    (``LesionImage.current_prediction``), its status and its rendered summary with any re-score
    note; ``waiting`` while an image has no prediction at all yet. No scores: the page shows them
    only through the summary, which hides those of an image the model could not assess."""
    case = get_object_or_404(access.visible_cases(request.user), pk=pk)
    predictions = Prediction.objects.select_related("model_version")
    images = (access.visible_images(request.user).filter(lesion__case=case).order_by("pk").select_related("lesion")
              .prefetch_related(Prefetch("predictions", queryset=predictions), "lesion__reviews"))
    can_edit = access.can_edit_case(request.user, case)
    items, active, waiting = [], False, False
    for image in images:
        active = active or any(p.is_active for p in image.predictions.all())
        # stored while no model was active: the sweep gives it a prediction later
        waiting = waiting or not image.predictions.all()
        prediction = image.current_prediction()
        if prediction is None:
            continue
        context = {"prediction": prediction, "image": image, "can_edit": can_edit}
        items.append({"id": prediction.pk, "image": image.pk, "status": prediction.status,
                      "html": render_to_string("cases/partials/prediction_summary.html", context, request=request)
                      + render_to_string("cases/partials/rescore_note.html", context, request=request)})
    # "case" too: the related manager links each lesion back to ``case`` through its case_id,
    # which, deferred, would be one query per lesion
    lesions = list(case.lesions.order_by("pk").only("pk", "case", "flagged", "awaiting_review"))
    # per lesion its review state and the badge's words: a reviewed lesion flagged again by a new
    # image must read "awaiting" at once, not "reviewed" until the page is reloaded
    # "waiting": an image has no prediction yet; the page keeps polling (less often) until it has one
    payload = {"active": active, "waiting": waiting, "predictions": items,
               "flagged_lesions": [lesion.pk for lesion in lesions if lesion.flagged],
               "lesions": [{"id": lesion.pk, "flagged": lesion.flagged, "awaiting_review": lesion.awaiting_review,
                            "badge": flag_badge_text(lesion)} for lesion in lesions]}
    return _no_store(JsonResponse(payload))


@require_POST
def prediction_retry(request: HttpRequest, pk: int) -> HttpResponse:
    """Retry a failed prediction (resets it to pending and re-sends the task)."""
    prediction = get_object_or_404(access.visible_predictions(request.user), pk=pk)
    if not access.can_edit_case(request.user, prediction.image.lesion.case):
        raise Http404
    try:
        if services.retry_prediction(user=request.user, prediction=prediction, request=request):
            messages.success(request, "Scoring was restarted for this image.")
        else:
            messages.info(request, "This image is not in a failed state; nothing to retry.")
    except ValidationError as exc:
        messages.error(request, " ".join(exc.messages))
    return redirect(f"{reverse('case_detail', args=[prediction.image.lesion.case_id])}#image-{prediction.image_id}")


# --- Results and files --------------------------------------------------------------------------

@require_GET
def image_detail(request: HttpRequest, pk: int) -> HttpResponse:
    """The result view of one image: class bars, thresholds, flag, heatmap toggle, model version."""
    image = get_object_or_404(access.visible_images(request.user), pk=pk)
    history = list(image.predictions.select_related("model_version").order_by("-created_at"))
    prefetch_related_objects([image], Prefetch("predictions", queryset=Prediction.objects.select_related("model_version")))
    prediction = image.current_prediction()
    audit_log.record(action="view", obj=image, request=request)
    context = {"image": image, "lesion": image.lesion, "case": image.lesion.case, "prediction": prediction,
               "history": history,
               "can_edit": access.can_edit_case(request.user, image.lesion.case)}
    if prediction is not None:
        context |= prediction_context(prediction)
    return _no_store(render(request, "cases/image_detail.html", context))


def stream_png(name: str, filename: str) -> FileResponse:
    """A stored PNG, inline, never cached; 404 when it is missing."""
    if not name:
        raise Http404
    try:
        handle = default_storage.open(name, "rb")
    except FileNotFoundError:
        raise Http404 from None
    response = FileResponse(handle, content_type="image/png", filename=filename)
    response["Content-Disposition"] = f'inline; filename="{filename}"'
    return _no_store(response)


@require_GET
def image_file(request: HttpRequest, pk: int) -> FileResponse:
    """The stored (normalised) image, streamed from storage to an authorised user (audited: the
    pixels are patient data just as much as the result page is)."""
    image = get_object_or_404(access.visible_images(request.user), pk=pk)
    response = stream_png(image.file.name, f"image-{image.pk}.png")
    audit_log.record(action="download", obj=image, request=request)
    return response


@require_GET
def heatmap_file(request: HttpRequest, pk: int) -> FileResponse:
    """The Grad-CAM overlay of one prediction."""
    prediction = get_object_or_404(access.visible_predictions(request.user), pk=pk)
    response = stream_png(prediction.heatmap.name if prediction.heatmap else "", f"heatmap-{prediction.pk}.png")
    audit_log.record(action="download", obj=prediction, request=request)
    return response


# --- Review queue -----------------------------------------------------------------------------

def _require_reviewer(request: HttpRequest) -> None:
    if not access.is_reviewer(request.user):
        raise PermissionDenied("The review queue is for dermatologists.")


@require_GET
def review_queue(request: HttpRequest) -> HttpResponse:
    """Flagged cases waiting for a dermatologist, most suspicious first: search and filters
    (claim, claim holder, visit dates, earlier visits)."""
    _require_reviewer(request)
    form = QueueFilterForm(request.GET or None)
    cases = queue.review_queue()
    if form.is_bound and form.is_valid():
        cases = filter_queue(cases, form.cleaned_data, request.user, queue.claim_expired_before())
    page = _page(request, cases)
    rows = list(page.object_list)
    awaiting = Lesion.objects.filter(awaiting_review=True).prefetch_related("images").order_by("pk")
    prefetch_related_objects(rows, Prefetch("lesions", queryset=awaiting, to_attr="awaiting"))
    now = timezone.now()
    queue.mark_claims(rows, now)
    for row in rows:
        row.patient_age = age_at_visit(row)
    # the rows show patient identifiers: one "view" per case shown, as the API's list records them
    audit_log.record_many(action="view", objs=rows, request=request, new={"via": "list"})
    return render(request, "cases/queue.html", {
        "form": form, "cases": rows, "page_obj": page, "cannot_assess_rank": queue.CANNOT_ASSESS_RANK,
        "now": now, "claim_expiry_hours": settings.CLAIM_EXPIRY_HOURS}, status=_filter_status(form))


@require_POST
def case_claim(request: HttpRequest, pk: int) -> HttpResponse:
    """Claim a queued case for review (atomic: a second reviewer is told who has it)."""
    case = get_object_or_404(access.visible_cases(request.user), pk=pk)
    _require_reviewer_or_404(request)
    taking_over = case.claimed_by_id not in (None, request.user.pk) and queue.claim_expired(case)
    lapsed = case.claimed_by if taking_over else None
    try:
        queue.claim_case(case=case, reviewer=request.user, request=request)
    except queue.ClaimError as exc:
        messages.error(request, str(exc))
        return redirect("review_queue")
    taken = f" You took it over from {display_name(lapsed)}, whose claim had expired." if lapsed else ""
    messages.success(request, f"Case claimed.{taken} Review each flagged lesion.")
    return redirect("case_review", case.pk)


@require_POST
def case_release(request: HttpRequest, pk: int) -> HttpResponse:
    """Give a claimed case back to the queue."""
    case = get_object_or_404(access.visible_cases(request.user), pk=pk)
    _require_reviewer_or_404(request)
    if queue.release_case(case=case, reviewer=request.user, request=request):
        messages.info(request, "Case released back to the queue.")
    return redirect("review_queue")


def _require_reviewer_or_404(request: HttpRequest) -> None:
    # Clinicians can see their own cases but must not learn the review endpoints exist for them.
    if not access.is_reviewer(request.user):
        raise Http404


def _review_lesions(case: Case) -> list[Lesion]:
    """The lesions the review page asks about, with what it shows of them: images, scores in
    force, the number of earlier visits (``earlier``) and the fingerprint it sends back (``shown``)."""
    lesions = list(queue.lesions_to_review(case).select_related("tracked").prefetch_related(queue.SHOWN_PREFETCH))
    earlier = followup.earlier_visit_counts(case, lesions)  # one query, not one per lesion
    for lesion in lesions:
        lesion.earlier = earlier.get(lesion.pk, 0)
        lesion.shown = queue.lesion_fingerprint(lesion)
    return lesions


def _review_forms(lesions: list[Lesion], data=None) -> list[ReviewForm]:
    """One form per lesion, bound to ``data`` only for the lesions whose form it holds: a lesion
    flagged after the page was opened gets an empty form, not one full of "required" errors."""
    def posted(lesion: Lesion) -> bool:
        return data is not None and any(key.startswith(f"lesion-{lesion.pk}-") for key in data)

    # a lesion seen at an earlier visit must be answered: changed since, or not
    return [ReviewForm(data if posted(lesion) else None, prefix=f"lesion-{lesion.pk}", earlier_visits=bool(lesion.earlier),
                       change_required=True)
            for lesion in lesions]


def _keep_seen(lesions: list[Lesion], forms: list[ReviewForm], data) -> None:
    """A page sent back with nothing saved keeps, in each posted form's hidden ``seen`` field, the
    fingerprint the reviewer was first shown (as posted), not the one in force now: a change that
    landed before this submit is then still refused on the next one."""
    for lesion, form in zip(lesions, forms):
        posted = data.get(f"lesion-{lesion.pk}-seen")
        if form.is_bound and posted is not None:
            lesion.shown = posted


def _error_summary(lesions: list[Lesion], forms: list[ReviewForm]) -> list[tuple[str, str]]:
    """(link to the field, what is wrong) per error of the posted forms, for the summary above them."""
    summary = []
    for lesion, form in zip(lesions, forms):
        if not form.is_bound:
            continue
        name = queue.lesion_name(lesion)
        summary += [(f"review-lesion-{lesion.pk}", f"{name}: {error}") for error in form.non_field_errors()]
        for field in form:
            # a radio group has no one id to label: its first button
            target = field.id_for_label or f"{field.auto_id}_0"
            summary += [(target, f"{name}, {field.label}: {error}") for error in field.errors]
    return summary


def _review_page(request: HttpRequest, case: Case, *, lesions: list[Lesion] | None = None,
                 forms: list[ReviewForm] | None = None, refusal: list[str] | None = None,
                 status: int = 200) -> HttpResponse:
    """The review page (audited: it shows the patient), with the forms as given and why a save was refused."""
    if lesions is None:
        lesions = _review_lesions(case)
    if forms is None:
        forms = _review_forms(lesions, request.POST if request.method == "POST" else None)
    audit_log.record(action="view", obj=case, request=request)
    holds_claim = case.claimed_by_id == request.user.pk
    claim_expired = holds_claim and queue.claim_expired(case)
    return _no_store(render(request, "cases/review.html", {
        # with the number of earlier visits: the timeline link lets the reviewer compare with them
        "case": case, "items": [(lesion, form, lesion.earlier) for lesion, form in zip(lesions, forms)],
        "patient_age": age_at_visit(case), "refusal": refusal or [], "holds_claim": holds_claim,
        "error_summary": _error_summary(lesions, forms),
        # released, or the reviewer's own claim lapsed: "Claim and save" claims it and saves in one go
        "can_claim": bool(lesions) and (case.claimed_by_id is None or claim_expired), "claim_expired": claim_expired,
        "claim_expires_at": queue.claim_expires_at(case) if holds_claim else None,
        "claim_expiry_hours": settings.CLAIM_EXPIRY_HOURS,
        # waiting for review although every current score is below the thresholds: said beside the flag
        "flag_cleared": queue.flag_cleared_lesions(case), "flag_cleared_text": queue.FLAG_CLEARED_TEXT,
    }, status=status))


def case_review(request: HttpRequest, pk: int) -> HttpResponse:
    """One review form per flagged lesion of a case claimed by this reviewer. Opening the page
    renews the claim. A save is refused, nothing saved and the forms kept as typed, when the claim
    was lost or a lesion changed after the page was opened (a new image, a re-score, newly flagged).
    "Claim and save" (``claim`` posted) claims a released or lapsed case first (``queue.claim_case``)."""
    case = get_object_or_404(access.visible_cases(request.user), pk=pk)
    _require_reviewer_or_404(request)
    if request.method != "POST":
        # a reviewer still reading a hard case must not lose it to the claim's expiry
        if not queue.renew_claim(case=case, reviewer=request.user):
            messages.error(request, "Claim this case from the queue before reviewing it.")
            return redirect("case_detail", case.pk)
        return _review_page(request, case)
    lesions = _review_lesions(case)
    forms = _review_forms(lesions, request.POST)
    if not lesions or not all(form.is_valid() for form in forms if form.is_bound):
        _keep_seen(lesions, forms, request.POST)
        return _review_page(request, case, lesions=lesions, forms=forms, status=400)
    entries = [queue.LesionReview(lesion=lesion, **form.cleaned_data)
               for lesion, form in zip(lesions, forms) if form.is_bound]
    seen = {entry.lesion.pk: request.POST.get(f"lesion-{entry.lesion.pk}-seen", "") for entry in entries}
    try:
        if request.POST.get("claim"):
            # "Claim and save" (the claim was released or lapsed): claimed as from the queue, then saved
            queue.claim_case(case=case, reviewer=request.user, request=request)
        queue.submit_reviews(case=case, reviewer=request.user, reviews=entries, seen=seen, request=request)
    except queue.ClaimError as exc:
        # the typed review stays on the page
        case.refresh_from_db(fields=["claimed_by", "claimed_at", "status"])
        if isinstance(exc, queue.ChangedSinceOpened):  # what it shows (and its fingerprints) is reloaded
            return _review_page(request, case, refusal=list(exc.problems.values()), status=409)
        # not compared yet (a lost claim): the lesions are reloaded, but the fingerprints of those
        # posted stay the ones first shown, so a change since is still caught on the next save
        lesions = _review_lesions(case)
        forms = _review_forms(lesions, request.POST)
        _keep_seen(lesions, forms, request.POST)
        return _review_page(request, case, lesions=lesions, forms=forms, refusal=[str(exc)], status=409)
    messages.success(request, "Review saved. The case has left the queue.")
    return redirect("review_queue")
