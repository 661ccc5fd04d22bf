"""The model registry: every trained model the app knows about."""
from __future__ import annotations

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

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.UniqueConstraint(fields=["status"], condition=Q(status="active"), name="one_active_model_version"),
            models.CheckConstraint(
                condition=Q(status__in=["training", "failed", "ready", "active", "retired"]),
                name="model_version_status_valid",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.version} ({self.status})"
