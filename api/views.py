"""API views: thin glue between serializers, cases.access scoping and the clinical services.

Every object is fetched through cases.access, so an id outside the user's scope is 404, exactly as
on the web pages; reads of single records and file downloads are audited like the pages.
"""
from __future__ import annotations

from django.conf import settings
from django.db.models import Prefetch, QuerySet
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema, extend_schema_view
from rest_framework import mixins, permissions, status, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import NotAcceptable, NotFound, ValidationError
from rest_framework.negotiation import DefaultContentNegotiation
from rest_framework.renderers import JSONRenderer
from rest_framework.response import Response
from rest_framework.views import APIView

from api import serializers as s
from api.errors import Conflict
from api.permissions import TokenScope
from api.schema import upload_refused
from api.throttling import ScopedRateThrottle
from audit import log as audit_log
from cases import access, outcomes, queue, services
from cases.fhir_export import FHIR_JSON, case_bundle
from cases.models import Case, Lesion, LesionImage, Outcome, Patient, Prediction, Review
from cases.views import stream_png
from classifier.models import ModelVersion

CONFLICT = OpenApiResponse(s.ErrorSerializer, description="the case is not in a state that allows this")


class FhirJsonRenderer(JSONRenderer):
    """Lets a FHIR client ask for ``Accept: application/fhir+json`` (otherwise a 406)."""

    media_type = FHIR_JSON
    format = "json"  # the same JSON body: no second ?format= value


class FileNegotiation(DefaultContentNegotiation):
    """For an action that answers a stored file (its own Content-Type): whatever the Accept header
    asks (``image/png``, ``image/*``), never a 406; an error is then JSON, the first renderer."""

    def select_renderer(self, request, renderers, format_suffix=None):
        try:
            return super().select_renderer(request, renderers, format_suffix)
        except NotAcceptable:
            return renderers[0], renderers[0].media_type


# the database's integer ids are 64-bit: a filter beyond that range would fail in the database
ID_MIN, ID_MAX = -(2**63), 2**63 - 1


def _int_param(request, name: str) -> int | None:
    """An integer query filter; a malformed or out-of-range one is a 400, never a 500."""
    raw = request.query_params.get(name)
    if raw is None:
        return None
    try:
        value = int(raw)
    except ValueError:  # "" too: a filter sent empty is a mistake to say, not to ignore
        raise ValidationError({name: [f"{name} must be an integer."]}) from None
    if not ID_MIN <= value <= ID_MAX:
        raise ValidationError({name: [f"{name} must be an integer between {ID_MIN} and {ID_MAX}."]})
    return value


def _text_param(request, name: str) -> str:
    """A free-text query filter, stripped; one holding a NUL is a 400 naming it (PostgreSQL text cannot
    hold a NUL: the search would fail in the database). RejectNulQueryMiddleware refuses such a query
    string first; this keeps the view safe without it."""
    value = request.query_params.get(name, "")
    if "\x00" in value:
        raise ValidationError({name: [f"{name} must not contain a NUL character."]})
    return value.strip()


def _status_filtered(queryset: QuerySet, request, values: list[str]) -> QuerySet:
    """Apply ``?status=``: one of ``values`` (the schema's enum); anything else, empty included, is a 400."""
    wanted = request.query_params.get("status")
    if wanted is None:
        return queryset
    if wanted not in values:
        raise ValidationError({"status": [f"status must be one of {', '.join(values)}."]})
    return queryset.filter(status=wanted)


def _filtered(queryset: QuerySet, request, filters: dict[str, str]) -> QuerySet:
    """Apply the integer filters named in ``filters`` (query parameter -> lookup)."""
    for param, lookup in filters.items():
        value = _int_param(request, param)
        if value is not None:
            queryset = queryset.filter(**{lookup: value})
    return queryset


def _of_visible_lesions(model, request, *related: str) -> QuerySet:
    """Records attached to lesions the user may see."""
    return model.objects.select_related(*related).filter(lesion__in=access.visible_lesions(request.user)).order_by("pk")


LESION_FILTERS = {"case": "lesion__case_id", "lesion": "lesion_id"}


def _int_filters(*names: str) -> list[OpenApiParameter]:
    return [OpenApiParameter(name, int, description=f"only those of this {name}") for name in names]


class SingleValuedQueryMixin:
    """A query parameter given twice is refused (400), not silently reduced to its last value."""

    def initial(self, request, *args, **kwargs):
        super().initial(request, *args, **kwargs)
        repeated = [name for name in request.query_params if len(request.query_params.getlist(name)) > 1]
        if repeated:
            raise ValidationError({name: [f"Give {name} once."] for name in repeated})


class AuditedRetrieveMixin(mixins.RetrieveModelMixin):
    """Reading one record is audited, as opening its page is."""

    def retrieve(self, request, *args, **kwargs):
        instance = self.get_object()
        audit_log.record(action="view", obj=instance, request=request)
        return Response(self.get_serializer(instance).data)


class AuditedListMixin(mixins.ListModelMixin):
    """A list call is audited as opening each record it returns would be: one "view" event per
    record of the page (``via: list``), so a bulk read through the API leaves the same trail.

    The query-string filters (``filter_list``) narrow the list only: get_queryset, which retrieve
    and the actions (claim, release, retry) fetch and reload their object through, never sees them."""

    def filter_list(self, queryset: QuerySet) -> QuerySet:
        """The list's query-string filters (a malformed one is a 400); none by default."""
        return queryset

    def list(self, request, *args, **kwargs):
        queryset = self.filter_list(self.filter_queryset(self.get_queryset()))
        page = self.paginate_queryset(queryset)
        records = list(page if page is not None else queryset)
        audit_log.record_many(action="view", objs=records, request=request, new={"via": "list"})
        data = self.get_serializer(records, many=True).data
        return self.get_paginated_response(data) if page is not None else Response(data)


class ReadViewSet(SingleValuedQueryMixin, AuditedRetrieveMixin, AuditedListMixin, viewsets.GenericViewSet):
    """List and retrieve, both audited."""


def _not_waiting(case: Case, lesion_pk: int, user) -> str:
    """Why a lesion given in a review submission is not waiting for review: a client repeating a
    submission whose answer it lost learns that its own review is already saved (which and when);
    another reviewer's review is only said to exist."""
    review = (Review.objects.filter(lesion__case=case, lesion_id=lesion_pk, amended_by__isnull=True)
              .order_by("-created_at", "-pk").first())
    if review is None:
        return f"Lesion {lesion_pk} of this case is not waiting for review."
    if review.reviewer_id == user.pk:
        return (f"Lesion {lesion_pk} of this case was already reviewed by you at {review.created_at.isoformat()} "
                f"(review {review.pk}); nothing was changed.")
    return f"Lesion {lesion_pk} of this case was already reviewed by another reviewer; nothing was changed."


class MayAddPatients(permissions.BasePermission):
    """Creating a patient is refused (403) before the input is judged: a refusal that depended on
    it (an identifier already in the clinic) would tell a caller who may not add one what it holds."""

    message = services.ADD_PATIENTS_REFUSED

    def has_permission(self, request, view) -> bool:
        return view.action != "create" or services.may_add_patients(request.user)


@extend_schema_view(list=extend_schema(parameters=[OpenApiParameter("q", str, description="identifier contains")]))
class PatientViewSet(mixins.CreateModelMixin, ReadViewSet):
    """Patients of the user's clinic (clinicians), of cases they review (dermatologists), all (admins)."""

    serializer_class = s.PatientSerializer
    # a read-only token's refusal first: it is refused whatever its user may do
    permission_classes = [permissions.IsAuthenticated, TokenScope, MayAddPatients]
    queryset = Patient.objects.none()  # the model, for the schema; get_queryset scopes

    def get_queryset(self):
        return access.visible_patients(self.request.user).order_by("clinic__name", "identifier", "pk")

    def filter_list(self, queryset: QuerySet) -> QuerySet:
        query = _text_param(self.request, "q")
        return queryset.filter(identifier__icontains=query) if query else queryset

    def perform_create(self, serializer):
        serializer.instance = services.create_patient(user=self.request.user, request=self.request,
                                                      **serializer.validated_data)


@extend_schema_view(list=extend_schema(parameters=[
    *_int_filters("patient"), OpenApiParameter("status", str, enum=Case.Status.values)]))
class CaseViewSet(mixins.CreateModelMixin, ReadViewSet):
    """Cases (visits): a clinical question about some of a patient's lesions."""

    serializer_class = s.CaseSerializer
    queryset = Case.objects.none()  # the model, for the schema; get_queryset scopes

    def get_queryset(self):
        return access.visible_cases(self.request.user).prefetch_related("lesions").order_by("-created_at", "pk")

    def filter_list(self, queryset: QuerySet) -> QuerySet:
        cases = _filtered(queryset, self.request, {"patient": "patient_id"})
        return _status_filtered(cases, self.request, Case.Status.values)

    def perform_create(self, serializer):
        data = serializer.validated_data
        serializer.instance = services.create_case(user=self.request.user, patient=data["patient"],
                                                   clinical_question=data["clinical_question"],
                                                   notes=data.get("notes", ""), visit_date=data.get("visit_date"),
                                                   request=self.request)

    def _reviewer_case(self) -> Case:
        # clinicians must not learn that the review endpoints exist for their cases (as on the pages)
        case = self.get_object()
        if not access.is_reviewer(self.request.user):
            raise NotFound()
        return case

    @extend_schema(request=None, responses={200: s.CaseSerializer, 409: CONFLICT})
    @action(detail=True, methods=["post"])
    def claim(self, request, pk=None):
        """Claim a queued case for review (atomic; a claim older than CLAIM_EXPIRY_HOURS is taken over)."""
        case = self._reviewer_case()
        queue.claim_case(case=case, reviewer=request.user, request=request)
        return Response(self.get_serializer(self.get_queryset().get(pk=case.pk)).data)

    @extend_schema(request=None, responses={200: s.CaseSerializer, 409: CONFLICT})
    @action(detail=True, methods=["post"])
    def release(self, request, pk=None):
        """Give a case you claimed back to the queue."""
        case = self._reviewer_case()
        if not queue.release_case(case=case, reviewer=request.user, request=request):
            raise queue.ClaimError("You have not claimed this case.")
        return Response(self.get_serializer(self.get_queryset().get(pk=case.pk)).data)

    # pagination_class=None: the answer is the saved reviews as a plain list, and the schema says so
    @extend_schema(request=s.CaseReviewInputSerializer, responses={201: s.ReviewSerializer(many=True), 409: CONFLICT})
    @action(detail=True, methods=["post"], pagination_class=None)
    def reviews(self, request, pk=None):
        """Review every flagged lesion of a case you claimed; the case leaves the queue."""
        case = self._reviewer_case()
        lesions = {lesion.pk: lesion for lesion in queue.lesions_to_review(case).select_related("case")}
        payload = s.CaseReviewInputSerializer(data=request.data, context={"lesions": lesions})
        payload.is_valid(raise_exception=True)
        entries, seen = [], {}
        for item in payload.validated_data["reviews"]:
            lesion = lesions.get(item["lesion"])
            if lesion is None:
                raise queue.ClaimError(_not_waiting(case, item["lesion"], request.user))
            if "seen" in item:
                seen[lesion.pk] = item["seen"]
            entries.append(queue.LesionReview(lesion=lesion, **{k: v for k, v in item.items()
                                                                if k not in ("lesion", "seen")}))
        try:
            # with the lesions' fingerprints, a lesion changed since they were read refuses the save,
            # as on the review page (the serializer takes them for every lesion or none)
            saved = queue.submit_reviews(case=case, reviewer=request.user, reviews=entries, seen=seen or None,
                                         request=request)
        except queue.ChangedSinceOpened as exc:
            raise Conflict(f"Nothing was saved: a lesion changed since its fingerprint was read. "
                           f"{' '.join(exc.problems.values())} Read the lesions again (GET lesions/{{id}}/) and "
                           "resubmit with their current fingerprint as seen.") from None
        return Response(s.ReviewSerializer(saved, many=True).data, status=status.HTTP_201_CREATED)

    @extend_schema(responses={(200, "application/fhir+json"): OpenApiTypes.OBJECT})
    # JSON first: an error answers application/json unless the client asked for FHIR
    @action(detail=True, methods=["get"], url_path="fhir", renderer_classes=[JSONRenderer, FhirJsonRenderer])
    def fhir(self, request, pk=None):
        """The case as a FHIR R4 Bundle: Patient (pseudonymous), BodyStructures, Media, Device,
        Observations of the scores and DiagnosticReports of the reviews."""
        case = self.get_object()
        # ids and systems from the configured base, never the Host header: the same case exported
        # through any allowed host name has the same ids; only the image files' URLs use the request's
        bundle = case_bundle(case, base_url=settings.SECONDLOOK_FHIR_BASE_URL,
                             files_url=request.build_absolute_uri("/").rstrip("/"))
        # the images the bundle hands out (their Media entries, identified by the image's id)
        images = [int(identifier["value"]) for entry in bundle.get("entry", [])
                  if entry["resource"]["resourceType"] == "Media" for identifier in entry["resource"]["identifier"]]
        audit_log.record(action="download", obj=case, request=request, new={"format": "fhir", "images": images})
        return Response(bundle, content_type=FHIR_JSON)


@extend_schema_view(list=extend_schema(parameters=_int_filters("case", "patient_lesion")),
                    create=extend_schema(responses={201: s.LesionSerializer, 409: CONFLICT}))
class LesionViewSet(mixins.CreateModelMixin, ReadViewSet):
    """Lesions of visible cases; images are uploaded to a lesion."""

    serializer_class = s.LesionSerializer
    queryset = Lesion.objects.none()  # the model, for the schema; get_queryset scopes

    def get_queryset(self):
        lesions = access.visible_lesions(self.request.user)
        # the images' predictions and versions: the fingerprint is worked out from what is on screen
        return lesions.select_related("tracked").prefetch_related("images", queue.SHOWN_PREFETCH).order_by("pk")

    def filter_list(self, queryset: QuerySet) -> QuerySet:
        return _filtered(queryset, self.request, {"case": "case_id", "patient_lesion": "tracked_id"})

    def perform_create(self, serializer):
        data = serializer.validated_data
        serializer.instance = services.add_lesion(
            user=self.request.user, case=data["case"], anatomic_site=data["anatomic_site"],
            description=data.get("description", ""), same_as=data.get("same_as"), side=data.get("side", ""),
            map_view=data.get("map_view", ""), map_x=data.get("map_x"), map_y=data.get("map_y"), request=self.request)

    @extend_schema(request={"multipart/form-data": s.UploadSerializer},
                   responses={201: s.UploadResultSerializer, 400: upload_refused(), 409: CONFLICT})
    @action(detail=True, methods=["post"], url_path="images")
    def upload(self, request, pk=None):
        """Upload one or more images (multipart, field ``images``). Each file is judged on its own:
        the response lists accepted, duplicate and rejected files with the reason; 400 when none
        was stored: every file rejected (the same per-file result), or the request itself invalid
        (messages per field, for example no ``images``); 409 when the case is closed."""
        lesion = self.get_object()
        # request.POST, not request.data: a body that is not a form (a JSON list, say) has no kind
        payload = s.UploadSerializer(data={"images": request.FILES.getlist("images"),
                                           "kind": request.POST.get("kind", "dermoscopic")})
        payload.is_valid(raise_exception=True)
        outcome = services.upload_images(user=request.user, lesion=lesion, files=payload.validated_data["images"],
                                         kind=payload.validated_data["kind"], request=request)
        body = {
            "accepted": [{"name": image.original_name, "image": image.pk, "error": ""} for image in outcome.accepted],
            "duplicates": [{"name": name, "image": existing.pk if existing else None, "error": ""}
                           for name, existing in outcome.duplicates],
            "rejected": [{"name": name, "image": None, "error": reason} for name, reason in outcome.rejected],
            "scoring_unavailable": outcome.scoring_unavailable,
            "notes": [{"name": name, "note": note} for name, note in outcome.notes],
        }
        ok = outcome.accepted or not outcome.rejected
        return Response(body, status=status.HTTP_201_CREATED if ok else status.HTTP_400_BAD_REQUEST)

    throttle_scope = "uploads"  # read by ScopedRateThrottle, which only the upload action adds

    def get_throttles(self):
        throttles = super().get_throttles()
        return [*throttles, ScopedRateThrottle()] if self.action == "upload" else throttles


@extend_schema_view(list=extend_schema(parameters=_int_filters("lesion", "case")))
class ImageViewSet(ReadViewSet):
    """Uploaded images (stored re-encoded, without metadata) with their latest prediction."""

    serializer_class = s.ImageSerializer
    queryset = LesionImage.objects.none()  # the model, for the schema; get_queryset scopes

    def get_queryset(self):
        predictions = Prediction.objects.select_related("model_version", "image__lesion")
        # the case's clinic: the file-name check (can_edit_case) compares it with the user's
        images = access.visible_images(self.request.user).select_related("lesion__case__patient__clinic")
        return images.prefetch_related(Prefetch("predictions", queryset=predictions)).order_by("pk")

    def filter_list(self, queryset: QuerySet) -> QuerySet:
        return _filtered(queryset, self.request, {"lesion": "lesion_id", "case": "lesion__case_id"})

    @extend_schema(responses={(200, "image/png"): OpenApiTypes.BINARY})
    @action(detail=True, methods=["get"], content_negotiation_class=FileNegotiation)
    def file(self, request, pk=None):
        """The stored PNG (audited as a download), whatever the Accept header; an error is JSON."""
        image = self.get_object()
        response = stream_png(image.file.name, f"image-{image.pk}.png")
        audit_log.record(action="download", obj=image, request=request)
        return response


@extend_schema_view(list=extend_schema(parameters=[
    *_int_filters("case", "lesion", "image"), OpenApiParameter("status", str, enum=Prediction.Status.values)]))
class PredictionViewSet(ReadViewSet):
    """Model outputs: status, scores, flag, assessability. An image has one per model version and
    context revision: a correction of the model's input (site, age, sex) scores it again as the
    next ``context_revision``, with its ``reason``, and the older score stays; ``is_current`` marks
    each image's result in force, the one the pages show (filter the list with ``image`` or ``case``
    and keep those)."""

    serializer_class = s.PredictionSerializer
    queryset = Prediction.objects.none()  # the model, for the schema; get_queryset scopes

    def get_queryset(self):
        # the patient for the audit trail; the image's other predictions for is_current
        predictions = access.visible_predictions(self.request.user).select_related("image__lesion__case__patient")
        # with their versions: which score is in force depends on whether a re-score's version is active
        in_force = Prefetch("image__predictions", queryset=Prediction.objects.select_related("model_version"))
        return predictions.prefetch_related(in_force).order_by("pk")

    def filter_list(self, queryset: QuerySet) -> QuerySet:
        predictions = _filtered(queryset, self.request, {"case": "image__lesion__case_id",
                                                         "lesion": "image__lesion_id", "image": "image_id"})
        return _status_filtered(predictions, self.request, Prediction.Status.values)

    @extend_schema(request=None, responses={200: s.PredictionSerializer, 409: CONFLICT})
    @action(detail=True, methods=["post"])
    def retry(self, request, pk=None):
        """Score a failed prediction again."""
        prediction = self.get_object()
        case = prediction.image.lesion.case
        if not (access.can_edit_case(request.user, case) or services.closed_to(request.user, case)):
            raise NotFound()  # the service answers a closed case of one's own clinic (409)
        if not services.retry_prediction(user=request.user, prediction=prediction, request=request):
            raise queue.ClaimError("This prediction has not failed; there is nothing to retry.")
        return Response(self.get_serializer(self.get_queryset().get(pk=prediction.pk)).data)


@extend_schema_view(list=extend_schema(parameters=_int_filters("case", "lesion")))
class ReviewViewSet(ReadViewSet):
    """Dermatologists' reviews of lesions the user may see (signed records: read only)."""

    serializer_class = s.ReviewSerializer
    queryset = Review.objects.none()  # the model, for the schema; get_queryset scopes

    def get_queryset(self):
        return _of_visible_lesions(Review, self.request, "reviewer", "amended_by", "lesion__case__patient")

    def filter_list(self, queryset: QuerySet) -> QuerySet:
        return _filtered(queryset, self.request, LESION_FILTERS)


@extend_schema_view(list=extend_schema(parameters=_int_filters("case", "lesion")))
class OutcomeViewSet(mixins.CreateModelMixin, ReadViewSet):
    """Histopathology results of lesions the user may see; entered by the lesion's clinic."""

    serializer_class = s.OutcomeSerializer
    queryset = Outcome.objects.none()  # the model, for the schema; get_queryset scopes

    def get_queryset(self):
        return _of_visible_lesions(Outcome, self.request, "entered_by", "lesion__case__patient")

    def filter_list(self, queryset: QuerySet) -> QuerySet:
        return _filtered(queryset, self.request, LESION_FILTERS)

    def perform_create(self, serializer):
        serializer.instance = outcomes.record_outcome(user=self.request.user, request=self.request,
                                                      **serializer.validated_data)


class IsReviewer(permissions.BasePermission):
    message = "The review queue is for dermatologists."

    def has_permission(self, request, view) -> bool:
        return access.is_reviewer(request.user)


class QueueViewSet(SingleValuedQueryMixin, AuditedListMixin, viewsets.GenericViewSet):
    """Flagged cases waiting for a dermatologist, most suspicious first (claim them at /cases/{id}/claim/)."""

    serializer_class = s.QueueEntrySerializer
    permission_classes = [permissions.IsAuthenticated, TokenScope, IsReviewer]

    def get_queryset(self):
        return queue.review_queue()


class ModelVersionViewSet(SingleValuedQueryMixin, mixins.ListModelMixin, mixins.RetrieveModelMixin,
                          viewsets.GenericViewSet):
    """The model registry (read only): versions, their status, thresholds and headline metrics."""

    serializer_class = s.ModelVersionSerializer
    queryset = ModelVersion.objects.order_by("-created_at", "pk")


class MeView(APIView):
    """Who the token belongs to: roles and clinic."""

    @extend_schema(responses={200: OpenApiTypes.OBJECT})
    def get(self, request):
        clinic = access.clinic_of(request.user)
        return Response({
            "username": request.user.get_username(), "name": s.person(request.user),
            "clinic": {"id": clinic.pk, "name": clinic.name} if clinic else None,
            "clinician": access.is_clinician(request.user), "reviewer": access.is_reviewer(request.user),
        })
