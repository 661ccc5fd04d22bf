"""The model registry: every trained model the app knows about."""
from __future__ import annotations

from django.conf import settings
from django.db import models
from django.db.models import Q


class ModelVersion(models.Model):
    """A trained, exported model artifact and what it was measured to do."""

    class Status(models.TextChoices):
        TRAINING = "training", "Training"
        FAILED = "failed", "Failed"
        READY = "ready", "Ready"
        ACTIVE = "active", "Active"
        RETIRED = "retired", "Retired"

    version = models.CharField(max_length=64, unique=True)
    artifact_path = models.CharField(max_length=500, blank=True)
    sha256 = models.CharField(max_length=64, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.TRAINING)
    data_fingerprint = models.CharField(max_length=128, blank=True)
    data_sources = models.JSONField(default=list, blank=True)
    metrics = models.JSONField(default=dict, blank=True)
    temperature = models.FloatField(null=True, blank=True)
    melanoma_threshold = models.FloatField(null=True, blank=True)
    malignancy_threshold = models.FloatField(null=True, blank=True)
    target_sensitivity = models.FloatField(null=True, blank=True)
    notes = models.TextField(blank=True)
    activated_at = models.DateTimeField(null=True, blank=True)
    # Training runs started from the admin: what was asked, how far it got, and why it stopped.
    training_config = models.JSONField(default=dict, blank=True)
    progress = models.JSONField(default=dict, blank=True)
    error = models.TextField(blank=True)
    cancel_requested = models.BooleanField(default=False)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.UniqueConstraint(fields=["status"], condition=Q(status="active"), name="one_active_model_version"),
            # one training run at a time, whoever starts it (two admins, a retry, a shell)
            models.UniqueConstraint(fields=["status"], condition=Q(status="training"), name="one_training_run"),
            models.CheckConstraint(
                condition=Q(status__in=["training", "failed", "ready", "active", "retired"]),
                name="model_version_status_valid",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.version} ({self.status})"

    @property
    def model_dir(self):
        """The artifact directory as a Path."""
        from pathlib import Path

        return Path(self.artifact_path)

    @property
    def melanoma_auc(self) -> float | None:
        return self.metrics.get("melanoma_auc")

    @property
    def malignancy_auc(self) -> float | None:
        return self.metrics.get("malignancy_auc")


class RescoreJob(models.Model):
    """A background re-scoring of images with the active model version."""

    class Status(models.TextChoices):
        QUEUED = "queued", "Queued"
        RUNNING = "running", "Running"
        DONE = "done", "Done"
        FAILED = "failed", "Failed"

    model_version = models.ForeignKey(ModelVersion, on_delete=models.PROTECT, related_name="rescore_jobs")
    image_ids = models.JSONField(default=list, blank=True, help_text="empty = all images")
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.QUEUED)
    total = models.PositiveIntegerField(default=0)
    queued = models.PositiveIntegerField(default=0)
    created_at = models.DateTimeField(auto_now_add=True)
    # when a worker last took the job (a redelivered task takes it again): the stale-job sweep's clock
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    error = models.TextField(blank=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"Re-score with {self.model_version.version} ({self.status})"
