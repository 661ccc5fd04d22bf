"""Django admin for the model registry: metrics, plots, model card, training, promotion."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.http import FileResponse, Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import NoReverseMatch, path, reverse
from django.utils.html import format_html

from classifier import ensemble_training, fine_tuning, lifecycle
from classifier.forms import ActivationForm, RollbackForm, TrainingForm
from classifier.models import ModelVersion, RescoreJob

PLOTS = ("roc", "confusion_matrix", "reliability", "training_curves")
GATE_PLOT = "benchmark_roc"  # the paired ROC on the frozen benchmark, shown with the gate


def _fmt(value) -> str:
    return "—" if value is None else f"{value:.3f}"


def _with_ci(metrics: dict, key: str) -> str:
    """A figure of the version's own held-out split with its 95 % CI (lesions resampled), where recorded."""
    ci = metrics.get(f"{key}_ci95")
    if metrics.get(key) is None or not (isinstance(ci, (list, tuple)) and len(ci) == 2):
        return _fmt(metrics.get(key))
    return f"{_fmt(metrics[key])} [{_fmt(ci[0])}, {_fmt(ci[1])}]"


def _cancel_message(version: ModelVersion) -> str:
    if version.status == ModelVersion.Status.FAILED:  # no worker had started it: it ended at once
        return f"The run {version.version} was cancelled before it started."
    return f"Cancellation of {version.version} requested; it stops after the current step."


def _retry_message(run: ModelVersion, failed: ModelVersion) -> str:
    """What a retry queued: the failed run's settings, and for a fine-tuning run the model it
    continues, the one active now (`lifecycle.retry_training`), which may not be the one the
    failed run continued."""
    text = f"Training {run.version} queued with the settings of the failed run {failed.version}"
    start = (run.training_config or {}).get(fine_tuning.START_KEY)
    if start:
        before = ((failed.training_config or {}).get(fine_tuning.START_KEY) or {}).get("version")
        text += f", fine-tuning the active model {start['version']}"
        if before and before != start["version"]:
            text += f" (the failed run fine-tuned {before})"
    return text + "."


@admin.register(ModelVersion)
class ModelVersionAdmin(admin.ModelAdmin):
    list_display = ("version", "status_badge", "mel_auc", "mal_auc", "bacc7", "mel_sens_spec", "created_at",
                    "activated_at")
    list_filter = ("status",)
    search_fields = ("version", "notes")
    ordering = ("-created_at",)
    readonly_fields = ("version", "status", "artifact_path", "sha256", "created_at", "activated_at", "started_at",
                       "finished_at", "data_fingerprint", "data_sources", "temperature", "melanoma_threshold",
                       "malignancy_threshold", "target_sensitivity", "training_config", "progress", "error",
                       "cancel_requested", "created_by", "metrics", "model_kind")
    fields = ("version", "status", "model_kind", "notes", "created_at", "activated_at", "artifact_path", "sha256",
              "data_sources", "data_fingerprint", "temperature", "melanoma_threshold", "malignancy_threshold",
              "target_sensitivity", "training_config", "started_at", "finished_at", "error", "created_by")
    change_form_template = "admin/classifier/modelversion/change_form.html"
    change_list_template = "admin/classifier/modelversion/change_list.html"

    def has_add_permission(self, request):  # versions come from training runs or artifacts
        return False

    def has_delete_permission(self, request, obj=None):  # predictions reference versions
        return False

    @admin.display(description="Status", ordering="status")
    def status_badge(self, obj: ModelVersion):
        return format_html('<span class="model-status model-status-{}">{}</span>', obj.status, obj.get_status_display())

    @admin.display(description="Kind")
    def model_kind(self, obj: ModelVersion) -> str:
        start = fine_tuning.describe_start(obj)
        return ensemble_training.describe(obj) + (f"; {start[0].lower()}{start[1:]}" if start else "")

    @admin.display(description="Melanoma AUC [95 % CI]")
    def mel_auc(self, obj):
        return _with_ci(obj.metrics, "melanoma_auc")

    @admin.display(description="Malignancy AUC [95 % CI]")
    def mal_auc(self, obj):
        return _with_ci(obj.metrics, "malignancy_auc")

    @admin.display(description="Bal. acc. (7) [95 % CI]")
    def bacc7(self, obj):
        return _with_ci(obj.metrics, "balanced_accuracy_7")

    @admin.display(description="Melanoma sens / spec")
    def mel_sens_spec(self, obj):
        point = (obj.metrics.get("operating_points") or {}).get("melanoma") or {}
        return f"{_fmt(point.get('sensitivity'))} / {_fmt(point.get('specificity'))}"

    def get_urls(self):
        wrap = self.admin_site.admin_view
        return [
            path("train/", wrap(self.train_view), name="classifier_modelversion_train"),
            path("rollback/", wrap(self.rollback_view), name="classifier_modelversion_rollback"),
            path("rescore/confirm/", wrap(self.rescore_confirm_view), name="classifier_modelversion_rescore_confirm"),
            path("<int:pk>/activate/", wrap(self.activate_view), name="classifier_modelversion_activate"),
            path("<int:pk>/cancel/", wrap(self.cancel_view), name="classifier_modelversion_cancel"),
            path("<int:pk>/retry/", wrap(self.retry_view), name="classifier_modelversion_retry"),
            path("<int:pk>/delete-failed/", wrap(self.delete_failed_view), name="classifier_modelversion_delete_failed"),
            path("<int:pk>/progress/", wrap(self.progress_view), name="classifier_modelversion_progress"),
            path("<int:pk>/plot/<str:name>.png", wrap(self.plot_view), name="classifier_modelversion_plot"),
        ] + super().get_urls()

    def changelist_view(self, request, extra_context=None):
        extra_context = (extra_context or {}) | {
            "active": ModelVersion.objects.filter(status=ModelVersion.Status.ACTIVE).first(),
        }
        if extra_context.get("rescore_jobs") is not None and request.user.is_superuser:  # counts: superusers only
            jobs = list(extra_context["rescore_jobs"])
            for job in jobs:
                job.scored = self.rescore_scored(request, job)
            extra_context["rescore_jobs"] = jobs
        return super().changelist_view(request, extra_context)

    def rescore_scored(self, request: HttpRequest, job: RescoreJob) -> int | None:
        """How many of a re-scoring job's images its version has scored, or None where unknown (the
        list then shows how many it queued for scoring): the registry holds no predictions, so the
        admin that adds the re-score view may override this (`cases.rescoring.scored_count`)."""
        return None

    def change_view(self, request, object_id, form_url="", extra_context=None):
        version = get_object_or_404(ModelVersion, pk=object_id)
        card_md = Path(version.artifact_path, "model_card.md") if version.artifact_path else None
        extra_context = (extra_context or {}) | {
            "version": version,
            "plots": [name for name in PLOTS if version.artifact_path and Path(version.artifact_path, "plots",
                                                                                 f"{name}.png").exists()],
            "model_card": card_md.read_text() if card_md and card_md.exists() else "",
            "gate": lifecycle.gate_for(version) if version.status in ("ready", "retired") else None,
            "gate_plot": bool(version.artifact_path
                              and Path(version.artifact_path, "plots", f"{GATE_PLOT}.png").exists()),
        }
        return super().change_view(request, object_id, form_url, extra_context)

    def train_view(self, request: HttpRequest) -> HttpResponse:
        if not self.has_change_permission(request):
            raise PermissionDenied("You may not train model versions.")
        form = TrainingForm(request.POST or None)
        if request.method == "POST" and form.is_valid():
            try:
                version = lifecycle.start_training(user=request.user, request=request, **form.cleaned_data)
            except lifecycle.LifecycleError as exc:
                form.add_error(None, str(exc))
            else:
                messages.success(request, f"Training {version.version} queued; progress shows below.")
                return redirect("admin:classifier_modelversion_change", version.pk)
        context = self.admin_site.each_context(request) | {"form": form, "title": "Train a new version",
                                                           "opts": self.model._meta}
        return render(request, "admin/classifier/modelversion/train_form.html", context)

    def _post_action(self, request, action, success: str | Callable[[ModelVersion], str], pk: int | None = None):
        if request.method != "POST":
            return HttpResponse(status=405)
        if not self.has_change_permission(request):
            raise PermissionDenied("You may not change model versions.")
        try:
            version = action()
        except lifecycle.LifecycleError as exc:
            messages.error(request, str(exc))
        else:
            text = success(version) if callable(success) else success.format(version=version.version)
            messages.success(request, text)
        if pk is not None:
            return redirect("admin:classifier_modelversion_change", pk)
        return redirect("admin:classifier_modelversion_changelist")

    def _confirmed_action(self, request, version: ModelVersion, kind: str, *, allowed: tuple[str, ...],
                          act: Callable[[forms.Form | None], ModelVersion],
                          success: str | Callable[[ModelVersion], str], form_class=None, after: int | None = None,
                          context: dict | None = None) -> HttpResponse:
        """A version button's two steps, as the roll-back's (`rollback_view`): GET, the
        confirmation page (``action_confirm.html``) naming the version and what the action does;
        POST (from that page), the action, through `_post_action`. ``form_class``: what the page
        asks (a reason); a POST it refuses (an empty reason) shows the page again with the error,
        and changes nothing. A version no longer in an ``allowed`` status is not offered."""
        if request.method not in ("GET", "POST"):
            return HttpResponse(status=405)
        if not self.has_change_permission(request, version):
            raise PermissionDenied("You may not change model versions.")
        form = None if form_class is None else form_class(request.POST) if request.method == "POST" else form_class()
        if request.method == "POST" and (form is None or form.is_valid()):
            return self._post_action(request, lambda: act(form), success, after)
        if request.method == "GET" and version.status not in allowed:
            messages.error(request, f"{version.version} is {version.get_status_display().lower()}: there is nothing "
                                    f"to confirm; nothing was changed.")
            return redirect("admin:classifier_modelversion_change", version.pk)
        titles = {"activate": f"Activate {version.version}", "cancel": f"Cancel the training run {version.version}",
                  "delete": f"Delete the failed run {version.version}"}
        context = self.admin_site.each_context(request) | {
            "title": titles[kind], "opts": self.model._meta, "kind": kind, "version": version, "form": form,
        } | (context or {})
        return render(request, "admin/classifier/modelversion/action_confirm.html", context)

    def activate_view(self, request, pk: int):
        """GET: the confirmation page (the version, the one it replaces, the gate's decision, a
        reason to give); POST: the activation, its reason in the audit event."""
        version = get_object_or_404(ModelVersion, pk=pk)
        context = {}
        if request.method == "GET" and version.status in ("ready", "retired"):
            gate = lifecycle.gate_for(version)
            context = {"current": ModelVersion.objects.filter(status=ModelVersion.Status.ACTIVE).first(),
                       "refusal": None if gate.allowed else " ".join(gate.reasons) or "the gate refuses it."}
        elif request.method == "POST":
            context = {"current": ModelVersion.objects.filter(status=ModelVersion.Status.ACTIVE).first()}
        return self._confirmed_action(
            request, version, "activate", allowed=("ready", "retired"), form_class=ActivationForm, after=pk,
            act=lambda form: lifecycle.activate_version(version=version, user=request.user, request=request,
                                                        reason=form.cleaned_data["reason"]),
            success="{version} is now active; workers use it for the next image.", context=context)

    def cancel_view(self, request, pk: int):
        version = get_object_or_404(ModelVersion, pk=pk)
        return self._confirmed_action(
            request, version, "cancel", allowed=("training",), after=pk,
            act=lambda form: lifecycle.request_cancel(version=version, user=request.user, request=request),
            success=_cancel_message)

    def retry_view(self, request, pk: int):
        version = get_object_or_404(ModelVersion, pk=pk)
        if request.method != "POST":
            return HttpResponse(status=405)
        if not self.has_change_permission(request):
            raise PermissionDenied("You may not train model versions.")
        try:
            run = lifecycle.retry_training(version=version, user=request.user, request=request)
        except lifecycle.LifecycleError as exc:
            messages.error(request, str(exc))
            return redirect("admin:classifier_modelversion_change", pk)
        messages.success(request, _retry_message(run, version))
        return redirect("admin:classifier_modelversion_change", run.pk)

    def delete_failed_view(self, request, pk: int):
        version = get_object_or_404(ModelVersion, pk=pk)
        return self._confirmed_action(
            request, version, "delete", allowed=("failed",),
            act=lambda form: lifecycle.delete_failed(version=version, user=request.user, request=request),
            success="The failed run {version} was deleted.",
            context={"folder": lifecycle._run_folder(version.version)})

    def rollback_view(self, request: HttpRequest) -> HttpResponse:
        """GET: the confirmation page, naming the active version, the one a roll-back would
        re-activate and those it passes over (rolled back from already), and asking why. POST: the
        roll-back of the versions the page named (`lifecycle.rollback` refuses them once another
        admin, or a second click, changed them)."""
        if request.method not in ("GET", "POST"):
            return HttpResponse(status=405)
        if not self.has_change_permission(request):
            raise PermissionDenied("You may not change model versions.")
        if request.method == "POST":
            form = RollbackForm(request.POST)
            if form.is_valid():
                try:
                    version = lifecycle.rollback(
                        user=request.user, request=request, reason=form.cleaned_data["reason"],
                        expected_active_pk=form.cleaned_data["expected_active"], target_pk=form.cleaned_data["target"])
                except lifecycle.LifecycleError as exc:
                    messages.error(request, str(exc))
                else:
                    messages.success(request, f"Rolled back: {version.version} is active again.")
                return redirect("admin:classifier_modelversion_changelist")
            current, target = form.named_versions()
            if target is None:  # a page that named no version to roll back to (tampered, or the version deleted)
                messages.error(request, "The page named no version to roll back to; nothing was changed.")
                return redirect("admin:classifier_modelversion_changelist")
        else:
            current, target = lifecycle.rollback_choice()
            if target is None:
                messages.error(request, "There is no earlier active version to roll back to.")
                return redirect("admin:classifier_modelversion_changelist")
            form = RollbackForm(initial={"expected_active": getattr(current, "pk", None), "target": target.pk})
        context = self.admin_site.each_context(request) | {
            "title": "Roll back the active model version", "opts": self.model._meta, "form": form,
            "current": current, "target": target, "refusal": lifecycle.rollback_refusal(target),
            "skipped": lifecycle.rollback_skipped(current, target)}
        return render(request, "admin/classifier/modelversion/rollback_confirm.html", context)

    def rescore_confirm_view(self, request: HttpRequest) -> HttpResponse:
        """"Re-score all images": the confirmation page. It names the active version and, for a
        superuser (the archive holds every clinic's images), how many images the re-score queues
        (`rescore_counts`), and posts, with the version's pk, to the re-score view the clinical
        records' admin adds (``admin:classifier_modelversion_rescore``, `cases.admin`)."""
        if request.method != "GET":
            return HttpResponse(status=405)
        if not self.has_change_permission(request):
            raise PermissionDenied("You may not change model versions.")
        try:
            action = reverse("admin:classifier_modelversion_rescore")
        except NoReverseMatch:  # the registry's admin alone, without the clinical records': nothing to re-score
            raise Http404("No re-scoring here: the clinical records' admin is not installed.") from None
        active = ModelVersion.objects.filter(status=ModelVersion.Status.ACTIVE).first()
        if active is None:
            messages.error(request, "No version is active: there is nothing to re-score with.")
            return redirect("admin:classifier_modelversion_changelist")
        context = self.admin_site.each_context(request) | {
            "title": "Re-score all images with the active version", "opts": self.model._meta, "action": action,
            "active": active, "counts": self.rescore_counts(request, active) if request.user.is_superuser else None,
            "running": active.rescore_jobs.filter(status__in=[RescoreJob.Status.QUEUED, RescoreJob.Status.RUNNING])
                                          .order_by("created_at").first()}
        return render(request, "admin/classifier/modelversion/rescore_confirm.html", context)

    def rescore_counts(self, request: HttpRequest, version: ModelVersion) -> dict[str, int] | None:
        """{"images": every image, "to_queue": those a re-score with ``version`` queues}, or None
        where unknown: the registry holds no images, so the admin that adds the re-score view
        (which may import the clinical records) overrides this with `cases.rescoring.rescore_preview`."""
        return None

    @staticmethod
    def expected_active(request: HttpRequest) -> int | None:
        """The active version's pk as a confirmation page posted it (None: not posted, as by a
        page of an older release); refused in words when it is not a number."""
        posted = request.POST.get("expected_active", "").strip()
        if not posted:
            return None
        if not posted.isdigit():
            raise lifecycle.LifecycleError("The page sent no valid version; nothing was changed. Reload it.")
        return int(posted)

    def progress_view(self, request, pk: int) -> JsonResponse:
        if not self.has_view_permission(request):  # staff status alone does not show a version
            raise PermissionDenied("You may not view model versions.")
        version = get_object_or_404(ModelVersion, pk=pk)
        if not self.has_view_permission(request, version):
            raise PermissionDenied("You may not view this model version.")
        return JsonResponse({"status": version.status, "progress": version.progress, "error": version.error,
                             "cancel_requested": version.cancel_requested})

    def plot_view(self, request, pk: int, name: str) -> FileResponse:
        if not self.has_view_permission(request):  # staff status alone does not show a version
            raise PermissionDenied("You may not view model versions.")
        version = get_object_or_404(ModelVersion, pk=pk)
        if not self.has_view_permission(request, version):
            raise PermissionDenied("You may not view this model version.")
        if name not in (*PLOTS, GATE_PLOT) or not version.artifact_path:
            raise Http404("no such plot")
        plot = Path(version.artifact_path, "plots", f"{name}.png")
        if not plot.is_file():
            raise Http404("plot not found")
        return FileResponse(open(plot, "rb"), content_type="image/png")
