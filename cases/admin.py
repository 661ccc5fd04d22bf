"""Django admin for the clinical records; the audit log is read-only."""
from __future__ import annotations

from django import forms
from django.contrib import admin, messages
from django.contrib.auth import get_user_model
from django.db.models import OuterRef, QuerySet, Subquery
from django.core.exceptions import ImproperlyConfigured
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.html import format_html

from audit import log as audit_log
from audit.models import AuditEvent
from cases import queue
from cases.access import clinic_of
from cases.monitoring import RECENT_DAYS, assessment_rates
from cases.rescoring import job_counts, rescore_preview, scored_count, start_rescore
from classifier.admin import ModelVersionAdmin
from classifier.lifecycle import LifecycleError
from classifier.models import ModelVersion, RescoreJob
from cases.models import (Case, Clinic, ClinicMembership, Lesion, LesionImage, Outcome, Patient, PatientLesion,
                          Prediction, Review)


# how each record reaches its clinic: the admin scopes lists and foreign-key choices with it
CLINIC_PATHS = {Clinic: "pk", ClinicMembership: "clinic", Patient: "clinic", Case: "patient__clinic",
                PatientLesion: "patient__clinic", Lesion: "case__patient__clinic", LesionImage: "lesion__case__patient__clinic",
                Prediction: "image__lesion__case__patient__clinic", Review: "lesion__case__patient__clinic",
                Outcome: "lesion__case__patient__clinic", get_user_model(): "clinic_membership__clinic"}
# records of no clinic, which every clinic's staff may see and pick (the model versions that scored)
SHARED_MODELS = {ModelVersion}
# fields an admin change or deletion never writes to the audit trail: the client's file name may
# name the patient, and only the clinic sees it (cases.services.IMAGE_AUDIT_FIELDS leaves it out too)
UNAUDITED_FIELDS = {LesionImage: frozenset({"original_name"})}


def _shown(response, key: str):
    """``key`` of a rendered admin page's context (None for a redirect or another response)."""
    return response.context_data.get(key) if isinstance(response, TemplateResponse) else None


def in_own_clinic(queryset, user):
    """``queryset`` limited to ``user``'s clinic unless the user is a superuser (a staff user
    without a clinic gets nothing). Shared models (``SHARED_MODELS``) are returned unchanged; any
    other model missing from ``CLINIC_PATHS`` gives a staff user nothing rather than every clinic's rows."""
    if user.is_superuser or queryset.model in SHARED_MODELS:
        return queryset
    path, clinic = CLINIC_PATHS.get(queryset.model), clinic_of(user)
    return queryset.filter(**{path: clinic.pk}) if path is not None and clinic is not None else queryset.none()


def visible_predictions(request) -> QuerySet:
    """The predictions whose counts the admin may show ``request.user``: a clinic's staff count their
    own clinic's images only, as in every list (superusers count all)."""
    return in_own_clinic(Prediction.objects.all(), request.user)


def rates_scope(request) -> str:
    """What the admin's counts cover for ``request.user``, said beside them."""
    return "every clinic" if request.user.is_superuser else "your clinic's images"


class ClinicScopedChoices:
    """Foreign keys of an admin form (and its inlines) offer, and accept, only records of the staff
    user's own clinic: a list scoped to the clinic is not enough, since a form field would
    otherwise take any id, and a staff user could move a record (or themselves) into another
    clinic. An account field also accepts accounts without a clinic (the dermatologists who review
    every clinic's queue), never one of another clinic."""

    def formfield_for_foreignkey(self, db_field, request, **kwargs):
        field = super().formfield_for_foreignkey(db_field, request, **kwargs)
        if field is None or request.user.is_superuser:
            return field
        choices = in_own_clinic(field.queryset, request.user)
        if field.queryset.model is get_user_model():
            choices = choices | field.queryset.filter(clinic_membership__isnull=True)
        field.queryset = choices
        return field


class ClinicalAdmin(ClinicScopedChoices, admin.ModelAdmin):
    """Admin of a clinical record: staff who are not superusers see only their own clinic's
    records (as in the app) and can link them only to records of that clinic, and every change
    made here is written to the audit trail with its old and new values (``audit.log``), like a
    change made in the app."""

    def get_queryset(self, request):
        if self.model not in CLINIC_PATHS:  # unscoped, the list would show every clinic's records
            raise ImproperlyConfigured(f"{self.model.__name__} has no entry in cases.admin.CLINIC_PATHS")
        return in_own_clinic(super().get_queryset(request), request.user)

    def _fields(self, obj) -> list[str]:
        unaudited = UNAUDITED_FIELDS.get(type(obj), frozenset())
        return [f.name for f in obj._meta.concrete_fields
                if f.editable and not f.primary_key and f.name not in unaudited]

    def change_view(self, request, object_id, form_url="", extra_context=None):
        """The record's page; opening it (a GET that shows it) is audited as a view, as in the app."""
        response = super().change_view(request, object_id, form_url, extra_context)
        shown = _shown(response, "original")
        if request.method == "GET" and shown is not None:
            audit_log.record(action="view", obj=shown, request=request, new={"via": "admin"})
        return response

    def changelist_view(self, request, extra_context=None):
        """The list; each record on the page shown is audited as a view, as the app's lists are."""
        response = super().changelist_view(request, extra_context)
        changelist = _shown(response, "cl")
        if changelist is not None:
            # the page's own queryset: evaluated here, its rows are the ones the template shows
            audit_log.record_many(action="view", objs=changelist.result_list, request=request,
                                  new={"via": "admin list"})
        return response

    def _audit_save(self, request, obj, change: bool, save) -> None:
        fields = self._fields(obj)
        before = type(obj).objects.filter(pk=obj.pk).first() if change and obj.pk else None
        old = audit_log.snapshot(before, fields) if before is not None else {}
        save()
        old, new = audit_log.changed(old, audit_log.snapshot(obj, fields))
        if new or not change:
            audit_log.record(action="update" if change else "create", obj=obj, request=request, old=old, new=new)

    def save_model(self, request, obj, form, change):
        self._audit_save(request, obj, change, lambda: super(ClinicalAdmin, self).save_model(request, obj, form, change))

    def save_formset(self, request, form, formset, change):
        instances = formset.save(commit=False)
        for obj in formset.deleted_objects:
            audit_log.record(action="delete", obj=obj, request=request, old=audit_log.snapshot(obj, self._fields(obj)))
            obj.delete()
        for obj in instances:
            self._audit_save(request, obj, obj.pk is not None, obj.save)
        formset.save_m2m()

    def delete_model(self, request, obj):
        audit_log.record(action="delete", obj=obj, request=request, old=audit_log.snapshot(obj, self._fields(obj)))
        super().delete_model(request, obj)

    def delete_queryset(self, request, queryset):
        for obj in queryset:
            self.delete_model(request, obj)


class ReadOnlyAdmin(ClinicalAdmin):
    """AI outputs and signed reviews: shown in the admin, never added, edited or deleted there
    (an amendment is a new record)."""

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


def membership_protected(request, membership) -> bool:
    """True when ``request.user`` (not a superuser) may not change or delete ``membership``: its
    account is beyond them (``cases.admin_users.beyond_clinic_staff``: a superuser, another staff
    account, a dermatologist)."""
    from cases.admin_users import beyond_clinic_staff

    return (membership is not None and not request.user.is_superuser
            and beyond_clinic_staff(membership.user, request.user))


class MembershipChoices(ClinicScopedChoices):
    """A clinic's admin (not a superuser) attaches to the clinic only accounts they may manage:
    never a dermatologist, another staff account or a superuser, even one without a clinic (the
    membership would put a global reviewer's account under them)."""

    def formfield_for_foreignkey(self, db_field, request, **kwargs):
        field = super().formfield_for_foreignkey(db_field, request, **kwargs)
        if field is not None and db_field.name == "user" and not request.user.is_superuser:
            from cases.admin_users import manageable_accounts

            field.queryset = manageable_accounts(field.queryset, request.user)
        return field


class ProtectedMembershipFormSet(forms.BaseInlineFormSet):
    """An inline row of an account beyond the staff user is shown, never changed nor deleted: its
    fields, the delete box included, are disabled, so whatever is posted for them is ignored."""

    request = None  # set by MembershipInline.get_formset

    def add_fields(self, form, index):
        super().add_fields(form, index)
        if form.instance.pk is not None and membership_protected(self.request, form.instance):
            for field in form.fields.values():
                field.disabled = True
            # its account is not among those offered to them: the disabled field keeps it valid
            form.fields["user"].queryset = ClinicMembership.user.field.related_model.objects.filter(
                pk=form.instance.user_id)

    def save_existing_objects(self, commit=True):
        saved = super().save_existing_objects(commit)
        for membership in self.deleted_objects:  # the actor of the token revocation (api.signals)
            membership._audit_request = self.request
        return saved


class MembershipInline(MembershipChoices, admin.TabularInline):
    model = ClinicMembership
    extra = 0
    autocomplete_fields = ["user"]
    formset = ProtectedMembershipFormSet

    def get_formset(self, request, obj=None, **kwargs):
        formset = super().get_formset(request, obj, **kwargs)  # a new class each time
        formset.request = request
        return formset


@admin.register(Clinic)
class ClinicAdmin(ClinicalAdmin):
    list_display = ["name", "created_at"]
    search_fields = ["name"]
    inlines = [MembershipInline]


@admin.register(ClinicMembership)
class ClinicMembershipAdmin(MembershipChoices, ClinicalAdmin):
    list_display = ["user", "clinic", "created_at"]
    list_filter = [("clinic", admin.RelatedOnlyFieldListFilter)]
    search_fields = ["user__username", "user__last_name", "clinic__name"]
    autocomplete_fields = ["user", "clinic"]

    def has_change_permission(self, request, obj=None):
        return super().has_change_permission(request, obj) and not membership_protected(request, obj)

    def has_delete_permission(self, request, obj=None):
        return super().has_delete_permission(request, obj) and not membership_protected(request, obj)

    def delete_model(self, request, obj):
        obj._audit_request = request  # the actor of the token revocation the deletion causes (api.signals)
        super().delete_model(request, obj)


@admin.register(Patient)
class PatientAdmin(ClinicalAdmin):
    list_display = ["identifier", "clinic", "birth_year", "sex", "fitzpatrick_type", "created_at"]
    list_filter = [("clinic", admin.RelatedOnlyFieldListFilter), "sex", "fitzpatrick_type"]
    search_fields = ["identifier"]
    readonly_fields = ["created_at"]


# The review queue's state: set by scoring, cleared by a dermatologist's review, released by the
# audited "release claim" action. Edited in the admin, a lesion would leave the queue unreviewed.
LESION_QUEUE_FIELDS = ["flagged", "awaiting_review", "flagged_at"]
CASE_QUEUE_FIELDS = ["status", "claimed_by", "claimed_at", "closed_at", "closed_by"]


class LesionInline(admin.TabularInline):
    model = Lesion
    extra = 0
    # deleting a visit's lesion here would take its images, AI scores and signed reviews with it,
    # without the delete permission of those admins (read-only) being asked: never offered here
    can_delete = False
    fields = ["anatomic_site", "description", "flagged", "awaiting_review"]
    readonly_fields = ["flagged", "awaiting_review"]
    show_change_link = True


@admin.register(Case)
class CaseAdmin(ClinicalAdmin):
    actions = ["release_claims"]

    @admin.action(description="Release the reviewer's claim (the case goes back to the queue)", permissions=["change"])
    def release_claims(self, request, queryset):
        released = queue.release_claims(cases=queryset, admin=request.user, request=request)
        self.message_user(request, f"Released {released} claim(s); the case(s) are back in the review queue.")
    list_display = ["pk", "patient", "referring_clinician", "status", "claimed_by", "created_at"]
    list_filter = ["status", ("patient__clinic", admin.RelatedOnlyFieldListFilter), "created_at"]
    search_fields = ["patient__identifier", "clinical_question", "referring_clinician__username"]
    raw_id_fields = ["patient", "referring_clinician"]
    readonly_fields = [*CASE_QUEUE_FIELDS, "created_at", "updated_at"]
    inlines = [LesionInline]

    def get_readonly_fields(self, request, obj=None):
        """The patient is chosen when the case is added: a visit's lesions belong to that patient's
        tracked lesions (body map, timeline, training labels), so it is never moved (Case.save)."""
        readonly = list(super().get_readonly_fields(request, obj))
        return readonly if obj is None else [*readonly, "patient"]


@admin.register(Lesion)
class LesionAdmin(ClinicalAdmin):
    """Which patient lesion a visit's record belongs to (``tracked``) decides its timeline and the
    images its reviews label for training: staff who are not superusers cannot change it here, and
    a superuser can pick only the case's own patient's lesions (the model refuses any other)."""

    list_display = ["pk", "case", "anatomic_site", "flagged", "awaiting_review", "flagged_at"]
    list_filter = ["anatomic_site", "flagged", "awaiting_review"]
    search_fields = ["case__patient__identifier", "description"]
    raw_id_fields = ["case"]
    readonly_fields = LESION_QUEUE_FIELDS

    def get_readonly_fields(self, request, obj=None):
        readonly = list(super().get_readonly_fields(request, obj))
        if request.user.is_superuser:
            return readonly
        # the model checks a new case against ``tracked``, which this form does not show to them:
        # an existing record keeps its visit too (moving it is a superuser's correction)
        return [*readonly, "tracked", *(["case"] if obj is not None else [])]

    def get_form(self, request, obj=None, change=False, **kwargs):
        form = super().get_form(request, obj, change, **kwargs)
        if obj is not None and "tracked" in form.base_fields:
            field = form.base_fields["tracked"]
            field.queryset = field.queryset.filter(patient_id=obj.case.patient_id)
        return form


def _file_link(url: str, label: str):
    """A link to the authenticated view that streams a stored file (the storage has no public URL)."""
    return format_html('<a href="{}">{}</a>', url, label)


@admin.register(LesionImage)
class LesionImageAdmin(ClinicalAdmin):
    exclude = ["file"]
    list_display = ["pk", "lesion", "kind", "width", "height", "size_bytes", "original_name", "uploaded_by", "uploaded_at"]
    list_filter = ["kind", "original_format", "uploaded_at"]
    search_fields = ["sha256", "original_name", "lesion__case__patient__identifier"]
    raw_id_fields = ["lesion", "uploaded_by"]
    readonly_fields = ["stored_file", "sha256", "size_bytes", "width", "height", "original_format", "uploaded_at"]
    actions = ["rescore_with_active_model"]

    @admin.display(description="stored image")
    def stored_file(self, image: LesionImage):
        return _file_link(reverse("image_file", args=[image.pk]), image.file.name) if image.pk else "—"

    @admin.action(description="Re-score with the active model (earlier predictions are kept)", permissions=["change"])
    def rescore_with_active_model(self, request, queryset):
        try:
            job = start_rescore(user=request.user, request=request,
                                image_ids=list(queryset.values_list("pk", flat=True)))
        except LifecycleError as exc:  # no active version, or it changed while the job was being set up
            self.message_user(request, str(exc), level=messages.ERROR)
            return
        self.message_user(request, f"Re-scoring {len(job.image_ids)} image(s) with {job.model_version.version} "
                                   "in the background.")


class DisagreesWithReviewFilter(admin.SimpleListFilter):
    """Scores that disagree with the dermatologist's review of the same image (a new model's
    re-score, a correction's re-score, or a score finished after the review)."""

    title = "score vs review"
    parameter_name = "disagrees"

    def lookups(self, request, model_admin):
        return [("yes", "Score disagrees with review")]

    def queryset(self, request, queryset):
        return queryset.exclude(review_disagreement="") if self.value() == "yes" else queryset


@admin.register(Prediction)
class PredictionAdmin(ReadOnlyAdmin):
    exclude = ["heatmap"]
    change_list_template = "admin/cases/prediction/change_list.html"

    def changelist_view(self, request, extra_context=None):
        """The list, headed by how often each model version could not assess recent uploads."""
        extra_context = (extra_context or {}) | {"assessment_rates": assessment_rates(predictions=visible_predictions(request)),
                                                 "recent_days": RECENT_DAYS, "rates_scope": rates_scope(request)}
        return super().changelist_view(request, extra_context)

    list_display = ["pk", "image", "model_version", "status", "melanoma_probability", "malignancy_score", "flagged",
                    "assessable", "attempts", "enqueued_at", "finished_at"]
    list_filter = ["status", "flagged", "assessable", DisagreesWithReviewFilter, "model_version"]
    search_fields = ["image__lesion__case__patient__identifier", "error"]
    raw_id_fields = ["image"]
    readonly_fields = ["class_probabilities", "flag_reasons", "inference_ms", "heatmap_file", "created_at", "started_at",
                       "finished_at", "enqueued_at", "attempts", "assessable", "assessment_notes", "assessment",
                       "prediction_set", "model_card_sha256"]

    @admin.display(description="Grad-CAM heatmap")
    def heatmap_file(self, prediction: Prediction):
        if not prediction.heatmap:
            return "—"
        return _file_link(reverse("heatmap_file", args=[prediction.pk]), "heatmap")


@admin.register(Review)
class ReviewAdmin(ReadOnlyAdmin):
    list_display = ["pk", "lesion", "reviewer", "agreement", "final_diagnosis", "management", "created_at"]
    list_filter = ["agreement", "final_diagnosis", "management", "created_at"]
    search_fields = ["lesion__case__patient__identifier", "reviewer__username", "notes"]
    raw_id_fields = ["lesion", "reviewer"]


class AuditClinicFilter(admin.SimpleListFilter):
    """The trail keeps clinic ids (the audit app knows no clinics): filter by clinic name here."""

    title = "clinic"
    parameter_name = "clinic"

    def lookups(self, request, model_admin):
        clinics = in_own_clinic(Clinic.objects.order_by("name"), request.user)
        return [(str(pk), name) for pk, name in clinics.values_list("pk", "name")]

    def queryset(self, request, queryset):
        return queryset.filter(clinic_id=self.value()) if self.value() else queryset


class AuditTokenFilter(admin.SimpleListFilter):
    """Calls made with an API token, apart from web sessions and the system (the token's own events:
    its change page's "audit trail" link, or a search by its prefix)."""

    title = "via API token"
    parameter_name = "via_token"

    def lookups(self, request, model_admin):
        return [("yes", "Via an API token"), ("no", "Not via a token (web session or system)")]

    def queryset(self, request, queryset):
        if self.value() == "yes":
            return queryset.filter(api_token_id__isnull=False)
        if self.value() == "no":
            return queryset.filter(api_token_id__isnull=True)
        return queryset


@admin.register(AuditEvent)
class AuditEventAdmin(admin.ModelAdmin):
    """Read-only: the trail can be browsed and filtered, never edited or deleted.

    Registered here, not in ``audit``, because showing patient identifiers and clinic names needs
    the clinical records."""

    list_display = ["created_at", "actor_username", "action", "object_type", "object_id", "patient", "clinic", "ip_address",
                    "via_token"]
    list_filter = ["action", "object_type", AuditClinicFilter, AuditTokenFilter, "created_at"]
    search_fields = ["actor_username", "object_id", "api_token_label"]
    date_hierarchy = "created_at"
    show_full_result_count = False  # "N of M selected" would count the whole (growing) trail on every page

    @admin.display(description="patient")
    def patient(self, event: AuditEvent) -> str:
        return event.patient_identifier or ""  # get_queryset's: no query per row

    @admin.display(description="clinic")
    def clinic(self, event: AuditEvent) -> str:
        return event.clinic_name or ""

    @admin.display(description="via token", ordering="api_token_id")
    def via_token(self, event: AuditEvent) -> str:
        """The API token the call was made with (id, prefix and name), empty for a web session or the system."""
        return f"#{event.api_token_id} {event.api_token_label}" if event.api_token_id is not None else ""

    def changelist_view(self, request, extra_context=None):
        """The trail's list; reading it is audited as one event for the page, not one per row: each
        look would otherwise add as many rows as it showed. The event names the events shown and
        the filters and search used, and is kept with the reader's clinic (a superuser's with the
        clinic filtered on, if any)."""
        response = super().changelist_view(request, extra_context)
        changelist = _shown(response, "cl")
        if changelist is not None:
            clinic = clinic_of(request.user) if not request.user.is_superuser else None
            chosen = request.GET.get(AuditClinicFilter.parameter_name, "")
            clinic_id = clinic.pk if clinic is not None else (int(chosen) if chosen.isdigit() else None)
            audit_log.record_trail_view(request=request, clinic_id=clinic_id, new={
                "via": "admin list", "events": [event.pk for event in changelist.result_list],
                "query": request.GET.urlencode()})
        return response

    def change_view(self, request, object_id, form_url="", extra_context=None):
        """One event's page; opening it is audited as a view of it, under that event's patient and clinic."""
        response = super().change_view(request, object_id, form_url, extra_context)
        shown = _shown(response, "original")
        if request.method == "GET" and shown is not None:
            audit_log.record_trail_view(request=request, object_id=str(shown.pk), patient_id=shown.patient_id,
                                        clinic_id=shown.clinic_id, new={"via": "admin"})
        return response

    def get_queryset(self, request):
        # the trail keeps ids only (no foreign keys): the patient's identifier and the clinic's name
        # for the list's columns, in the list's one query
        queryset = super().get_queryset(request).annotate(
            patient_identifier=Subquery(Patient.objects.filter(pk=OuterRef("patient_id")).values("identifier")[:1]),
            clinic_name=Subquery(Clinic.objects.filter(pk=OuterRef("clinic_id")).values("name")[:1]))
        if request.user.is_superuser:
            return queryset
        clinic = clinic_of(request.user)  # staff see their own clinic's trail only
        return queryset.filter(clinic_id=clinic.pk) if clinic is not None else queryset.none()

    def get_search_results(self, request, queryset, search_term):
        found, duplicates = super().get_search_results(request, queryset, search_term)
        if search_term:  # also the patients whose identifier matches, within the scoped, filtered trail
            ids = Patient.objects.filter(identifier__icontains=search_term).values_list("pk", flat=True)
            found |= queryset.filter(patient_id__in=list(ids))
        return found, duplicates

    def get_readonly_fields(self, request, obj=None):
        return [field.name for field in self.model._meta.fields]

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


class ModelVersionWithRatesAdmin(ModelVersionAdmin):
    """The registry's version page, plus how often this version could not assess recent uploads.
    Registered from here because the rates come from the clinical records: ``classifier`` knows
    nothing of them, and ``cases`` may import ``classifier``, not the reverse."""

    def get_urls(self):
        return [path("rescore/", self.admin_site.admin_view(self.rescore_view),
                     name="classifier_modelversion_rescore")] + super().get_urls()

    def changelist_view(self, request, extra_context=None):
        extra_context = (extra_context or {}) | {
            "rescore_url": reverse("admin:classifier_modelversion_rescore"),
            "rescore_jobs": RescoreJob.objects.select_related("model_version")[:5],
        }
        return super().changelist_view(request, extra_context)

    def rescore_scored(self, request, job: RescoreJob) -> int | None:
        """How many of the job's images its version has scored (the list's real progress)."""
        return scored_count(job)

    def rescore_view(self, request):
        """POST from the confirmation page (`rescore_confirm_view`): refused in words while the
        version's job is queued or running, or when the page named another version."""
        return self._post_action(
            request, lambda: start_rescore(user=request.user, request=request,
                                           expected_version_pk=self.expected_active(request)).model_version,
            "Re-scoring all images with {version} in the background.")

    def rescore_counts(self, request, version: ModelVersion) -> dict[str, int]:
        """The confirmation page's counts: the clinical records hold the images."""
        preview = rescore_preview(version=version)
        return {"images": preview.images, "to_queue": preview.to_queue}

    def change_view(self, request, object_id, form_url="", extra_context=None):
        version = ModelVersion.objects.filter(pk=object_id).values_list("version", flat=True).first()
        rates = [r for r in assessment_rates(predictions=visible_predictions(request)) if r.version == version]
        extra_context = (extra_context or {}) | {"assessment_rates": rates, "recent_days": RECENT_DAYS,
                                                 "rates_scope": rates_scope(request)}
        return super().change_view(request, object_id, form_url, extra_context)


admin.site.unregister(ModelVersion)
admin.site.register(ModelVersion, ModelVersionWithRatesAdmin)


@admin.register(RescoreJob)
class RescoreJobAdmin(admin.ModelAdmin):
    """Re-scoring jobs run over every clinic's images. A superuser sees the job's own counts; other
    staff see how many of their clinic's images were scored and disagree with a review, and not the
    job's totals (how many images other clinics hold is not theirs to see)."""

    list_filter = ("status",)
    readonly_fields = [f.name for f in RescoreJob._meta.fields]

    def get_list_display(self, request):
        predictions = visible_predictions(request)
        own = "" if request.user.is_superuser else " (your clinic)"

        def counts(job: RescoreJob) -> tuple[int, int]:
            # get_changelist_instance counted the page's jobs at once; a job shown elsewhere on its own
            return getattr(job, "list_counts", None) or job_counts([job], predictions=predictions)[job.pk]

        @admin.display(description=f"Scored{own}")
        def scored(job: RescoreJob) -> int:
            return counts(job)[0]

        @admin.display(description=f"New model disagrees with review{own}")
        def disagreements(job: RescoreJob):
            count = counts(job)[1]
            if not count:
                return "0"
            url = (reverse("admin:cases_prediction_changelist")
                   + f"?disagrees=yes&model_version__id__exact={job.model_version_id}")
            return format_html('<a href="{}">{}</a>', url, count)

        totals = ("queued", scored, "total") if request.user.is_superuser else (scored,)
        return ("created_at", "model_version", "status", *totals, disagreements, "created_by", "error")

    def get_changelist_instance(self, request):
        """The list, with each shown job's counts (``cases.rescoring.job_counts``) from one query for
        the page rather than two per job."""
        changelist = super().get_changelist_instance(request)
        counts = job_counts(changelist.result_list, predictions=visible_predictions(request))
        for job in changelist.result_list:  # the page's rows, as the list renders them
            job.list_counts = counts[job.pk]
        return changelist

    def get_readonly_fields(self, request, obj=None):
        if request.user.is_superuser:
            return self.readonly_fields
        return [f for f in self.readonly_fields if f not in ("queued", "total", "image_ids")]

    def get_fields(self, request, obj=None):
        return self.get_readonly_fields(request, obj)

    def has_add_permission(self, request):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


# Histopathology outcomes and the Monitoring page, and the accounts scoped to the clinic
# (imported last: they build on the classes above)
from cases import admin_monitoring, admin_users  # noqa: E402,F401
