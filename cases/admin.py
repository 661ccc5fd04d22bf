"""Django admin for the clinical records; the audit log is read-only."""
from __future__ import annotations

from django.contrib import admin
from django.urls import path, reverse

from audit.models import AuditEvent
from cases.monitoring import RECENT_DAYS, assessment_rates
from cases.rescoring import scored_count, start_rescore
from classifier.admin import ModelVersionAdmin
from classifier.models import ModelVersion, RescoreJob
from cases.models import (Case, Clinic, ClinicMembership, Lesion, LesionImage, Patient, Prediction,
                          Review)


class MembershipInline(admin.TabularInline):
    model = ClinicMembership
    extra = 0
    autocomplete_fields = ["user"]


@admin.register(Clinic)
class ClinicAdmin(admin.ModelAdmin):
    list_display = ["name", "created_at"]
    search_fields = ["name"]
    inlines = [MembershipInline]


@admin.register(ClinicMembership)
class ClinicMembershipAdmin(admin.ModelAdmin):
    list_display = ["user", "clinic", "created_at"]
    list_filter = ["clinic"]
    search_fields = ["user__username", "user__last_name", "clinic__name"]
    autocomplete_fields = ["user", "clinic"]


@admin.register(Patient)
class PatientAdmin(admin.ModelAdmin):
    list_display = ["identifier", "clinic", "birth_year", "sex", "fitzpatrick_type", "created_at"]
    list_filter = ["clinic", "sex", "fitzpatrick_type"]
    search_fields = ["identifier"]
    readonly_fields = ["created_at"]


class LesionInline(admin.TabularInline):
    model = Lesion
    extra = 0
    fields = ["anatomic_site", "description", "flagged", "awaiting_review"]
    show_change_link = True


@admin.register(Case)
class CaseAdmin(admin.ModelAdmin):
    list_display = ["pk", "patient", "referring_clinician", "status", "claimed_by", "created_at"]
    list_filter = ["status", "patient__clinic", "created_at"]
    search_fields = ["patient__identifier", "clinical_question", "referring_clinician__username"]
    raw_id_fields = ["patient", "referring_clinician", "claimed_by"]
    readonly_fields = ["created_at", "updated_at"]
    inlines = [LesionInline]


@admin.register(Lesion)
class LesionAdmin(admin.ModelAdmin):
    list_display = ["pk", "case", "anatomic_site", "flagged", "awaiting_review", "flagged_at"]
    list_filter = ["anatomic_site", "flagged", "awaiting_review"]
    search_fields = ["case__patient__identifier", "description"]
    raw_id_fields = ["case"]


@admin.register(LesionImage)
class LesionImageAdmin(admin.ModelAdmin):
    list_display = ["pk", "lesion", "kind", "width", "height", "size_bytes", "original_name", "uploaded_by", "uploaded_at"]
    list_filter = ["kind", "original_format", "uploaded_at"]
    search_fields = ["sha256", "original_name", "lesion__case__patient__identifier"]
    raw_id_fields = ["lesion", "uploaded_by"]
    readonly_fields = ["file", "sha256", "size_bytes", "width", "height", "original_format", "uploaded_at"]
    actions = ["rescore_with_active_model"]

    @admin.action(description="Re-score with the active model (earlier predictions are kept)")
    def rescore_with_active_model(self, request, queryset):
        job = start_rescore(user=request.user, image_ids=list(queryset.values_list("pk", flat=True)))
        self.message_user(request, f"Re-scoring {len(job.image_ids)} image(s) with {job.model_version.version} "
                                   "in the background.")


@admin.register(Prediction)
class PredictionAdmin(admin.ModelAdmin):
    change_list_template = "admin/cases/prediction/change_list.html"

    def changelist_view(self, request, extra_context=None):
        """The list, headed by how often each model version could not assess recent uploads."""
        extra_context = (extra_context or {}) | {"assessment_rates": assessment_rates(), "recent_days": RECENT_DAYS}
        return super().changelist_view(request, extra_context)

    list_display = ["pk", "image", "model_version", "status", "melanoma_probability", "malignancy_score", "flagged",
                    "assessable", "attempts", "enqueued_at", "finished_at"]
    list_filter = ["status", "flagged", "assessable", "model_version"]
    search_fields = ["image__lesion__case__patient__identifier", "error"]
    raw_id_fields = ["image"]
    readonly_fields = ["class_probabilities", "flag_reasons", "inference_ms", "heatmap", "created_at", "started_at",
                       "finished_at", "enqueued_at", "attempts", "assessable", "assessment_notes", "assessment",
                       "prediction_set"]


@admin.register(Review)
class ReviewAdmin(admin.ModelAdmin):
    list_display = ["pk", "lesion", "reviewer", "agreement", "final_diagnosis", "management", "created_at"]
    list_filter = ["agreement", "final_diagnosis", "management", "created_at"]
    search_fields = ["lesion__case__patient__identifier", "reviewer__username", "notes"]
    raw_id_fields = ["lesion", "reviewer"]


class AuditClinicFilter(admin.SimpleListFilter):
    """The trail keeps clinic ids (the audit app knows no clinics): filter by clinic name here."""

    title = "clinic"
    parameter_name = "clinic"

    def lookups(self, request, model_admin):
        return [(str(pk), name) for pk, name in Clinic.objects.order_by("name").values_list("pk", "name")]

    def queryset(self, request, queryset):
        return queryset.filter(clinic_id=self.value()) if self.value() else queryset


@admin.register(AuditEvent)
class AuditEventAdmin(admin.ModelAdmin):
    """Read-only: the trail can be browsed and filtered, never edited or deleted.

    Registered here, not in ``audit``, because showing patient identifiers and clinic names needs
    the clinical records."""

    list_display = ["created_at", "actor_username", "action", "object_type", "object_id", "patient", "clinic", "ip_address"]
    list_filter = ["action", "object_type", AuditClinicFilter, "created_at"]
    search_fields = ["actor_username", "object_id"]
    date_hierarchy = "created_at"

    @admin.display(description="patient")
    def patient(self, event: AuditEvent) -> str:
        return Patient.objects.filter(pk=event.patient_id).values_list("identifier", flat=True).first() or ""

    @admin.display(description="clinic")
    def clinic(self, event: AuditEvent) -> str:
        return Clinic.objects.filter(pk=event.clinic_id).values_list("name", flat=True).first() or ""

    def get_search_results(self, request, queryset, search_term):
        queryset, duplicates = super().get_search_results(request, queryset, search_term)
        if search_term:  # also the patients whose identifier matches
            ids = Patient.objects.filter(identifier__icontains=search_term).values_list("pk", flat=True)
            queryset |= self.model.objects.filter(patient_id__in=list(ids))
        return queryset, duplicates

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

    def rescore_view(self, request):
        return self._post_action(request, lambda: start_rescore(user=request.user).model_version,
                                 "Re-scoring all images with {version} in the background.")

    def change_view(self, request, object_id, form_url="", extra_context=None):
        version = ModelVersion.objects.filter(pk=object_id).values_list("version", flat=True).first()
        rates = [r for r in assessment_rates() if r.version == version]
        extra_context = (extra_context or {}) | {"assessment_rates": rates, "recent_days": RECENT_DAYS}
        return super().change_view(request, object_id, form_url, extra_context)


admin.site.unregister(ModelVersion)
admin.site.register(ModelVersion, ModelVersionWithRatesAdmin)


@admin.register(RescoreJob)
class RescoreJobAdmin(admin.ModelAdmin):
    list_display = ("created_at", "model_version", "status", "queued", "scored", "total", "created_by")
    list_filter = ("status",)
    readonly_fields = [f.name for f in RescoreJob._meta.fields]

    def has_add_permission(self, request):
        return False

    def has_delete_permission(self, request, obj=None):
        return False

    @admin.display(description="Scored")
    def scored(self, obj: RescoreJob) -> int:
        return scored_count(obj)
