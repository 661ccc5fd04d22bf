"""Admin: histopathology outcomes (read-only) and the Monitoring page (cases.drift) with its plots.

Imported at the end of cases.admin, so it builds on the admin classes there. The page hangs off
the Predictions admin (``admin/cases/prediction/monitoring/``): the same staff login, the view
permission on predictions, and the same clinic scoping as every clinical list in the admin
(superusers see all clinics, other staff only their own).
"""
from __future__ import annotations

from django.contrib import admin
from django.core.exceptions import PermissionDenied
from django.db.models import Exists, OuterRef, Q
from django.http import Http404, HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.urls import path
from django.utils.http import urlencode

from cases import drift, drift_plots
from cases.admin import PredictionAdmin, ReadOnlyAdmin
from cases.models import Clinic, Outcome, Prediction
from classifier.models import ModelVersion

MAX_WEEKS = 104


@admin.register(Outcome)
class OutcomeAdmin(ReadOnlyAdmin):
    """Entered by the clinics on the case page; corrections are new outcomes, so nothing is edited here."""

    list_display = ["pk", "lesion", "diagnosis", "diagnosis_date", "report_reference", "entered_by", "entered_at",
                    "supersedes"]
    list_filter = ["diagnosis", "diagnosis_date", ("lesion__case__patient__clinic", admin.RelatedOnlyFieldListFilter)]
    search_fields = ["report_reference", "lesion__case__patient__identifier"]
    raw_id_fields = ["lesion", "supersedes"]


def _weeks(request: HttpRequest) -> int | None:
    """``?weeks=N`` (2 to 104), else the setting."""
    try:
        return min(max(int(request.GET["weeks"]), 2), MAX_WEEKS)
    except (KeyError, ValueError):
        return None


def _version(request: HttpRequest) -> ModelVersion | None:
    """``?version=NAME``: the model version whose scores the drift figures show (404 when there is
    no such version); None without it: the active version."""
    name = request.GET.get("version", "").strip()
    if not name:
        return None
    version = ModelVersion.objects.filter(version=name).first()
    if version is None:
        raise Http404("No such model version.")
    return version


def _query(request: HttpRequest) -> str:
    """The page's own choices (weeks, version) as a query string for its plots ("" when none)."""
    chosen = {key: request.GET[key] for key in ("weeks", "version") if request.GET.get(key, "").strip()}
    return f"?{urlencode(chosen)}" if chosen else ""


def monitorable_versions():
    """Versions an admin may monitor: those with a finished score, and the active one."""
    # one indexed probe per version, not a scan of every finished prediction
    scored = Exists(Prediction.objects.filter(model_version=OuterRef("pk"), status=Prediction.Status.DONE))
    return ModelVersion.objects.filter(scored | Q(status=ModelVersion.Status.ACTIVE)).order_by("-created_at")


class PredictionMonitoringAdmin(PredictionAdmin):
    """The Predictions admin plus the Monitoring page and its PNG plots."""

    def get_urls(self):
        view = self.admin_site.admin_view
        return [
            path("monitoring/", view(self.monitoring_view), name="cases_monitoring"),
            path("monitoring/<slug:plot>.png", view(self.monitoring_plot), name="cases_monitoring_plot"),
        ] + super().get_urls()

    def monitored_clinics(self, request: HttpRequest):
        """The clinics the user sees in the admin (ClinicalAdmin's scoping, via the Clinic admin)."""
        return self.admin_site.get_model_admin(Clinic).get_queryset(request).order_by("name")

    def _report(self, request: HttpRequest) -> drift.MonitoringReport:
        if not self.has_view_permission(request):
            raise PermissionDenied
        return drift.monitoring_report(self.monitored_clinics(request), weeks=_weeks(request),
                                       version=_version(request))

    def monitoring_view(self, request: HttpRequest) -> HttpResponse:
        report = self._report(request)
        context = self.admin_site.each_context(request) | {
            "title": "Monitoring", "opts": self.model._meta, "report": report, "rows": report.table(),
            "plots": [(name, f"{name}.png{_query(request)}") for name in drift_plots.PLOTS],
            "current_week": report.weeks[-1], "versions": monitorable_versions(),
            "weeks_shown": _weeks(request) or "",
        }
        response = TemplateResponse(request, "admin/cases/monitoring.html", context)
        response["Cache-Control"] = "private, no-store"
        return response

    def monitoring_plot(self, request: HttpRequest, plot: str) -> HttpResponse:
        if plot not in drift_plots.PLOTS:
            raise Http404
        response = HttpResponse(drift_plots.render(plot, self._report(request)), content_type="image/png")
        response["Cache-Control"] = "private, no-store"
        return response


admin.site.unregister(Prediction)
admin.site.register(Prediction, PredictionMonitoringAdmin)
