"""Django admin for the clinical records; the audit log is read-only."""
from __future__ import annotations

from django.contrib import admin

from cases.monitoring import RECENT_DAYS, assessment_rates
from classifier.admin import ModelVersionAdmin
from classifier.models import ModelVersion
from cases.models import (AuditEvent, Case, Clinic, ClinicMembership, Lesion, LesionImage, Patient, Prediction,
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
        from classifier.rescoring import start_rescore

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


@admin.register(AuditEvent)
class AuditEventAdmin(admin.ModelAdmin):
    """Read-only: the trail can be browsed and filtered, never edited or deleted."""

    list_display = ["created_at", "actor_username", "action", "object_type", "object_id", "patient", "clinic", "ip_address"]
    list_filter = ["action", "object_type", "clinic", "created_at"]
    search_fields = ["actor_username", "object_id", "patient__identifier"]
    date_hierarchy = "created_at"
    list_select_related = ["patient", "clinic"]

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

    def change_view(self, request, object_id, form_url="", extra_context=None):
        version = ModelVersion.objects.filter(pk=object_id).values_list("version", flat=True).first()
        rates = [r for r in assessment_rates() if r.version == version]
        extra_context = (extra_context or {}) | {"assessment_rates": rates, "recent_days": RECENT_DAYS}
        return super().change_view(request, object_id, form_url, extra_context)


admin.site.unregister(ModelVersion)
admin.site.register(ModelVersion, ModelVersionWithRatesAdmin)
