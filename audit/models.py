"""The audit event table: append-only in the ORM, and in PostgreSQL by a trigger (migration 0003)."""
from __future__ import annotations

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import models
from django.db.models import Q


class AppendOnlyQuerySet(models.QuerySet):
    """Bulk updates and deletes are refused too, not only per-object ones."""

    def update(self, **kwargs):
        raise ValidationError("Audit events are append-only.")

    def delete(self):
        raise ValidationError("Audit events are append-only.")


class AuditAction(models.TextChoices):
    """What an audit event records; the database refuses any other value."""

    VIEW = "view", "View"
    DOWNLOAD = "download", "Download file"
    CREATE = "create", "Create"
    UPDATE = "update", "Update"
    DELETE = "delete", "Delete"
    UPLOAD = "upload", "Upload"
    SCORE = "score", "Score"
    RETRY = "retry", "Retry"
    CLAIM = "claim", "Claim"
    RELEASE = "release", "Release"
    REVIEW = "review", "Review"
    # Model registry events (classifier.lifecycle)
    TRAIN = "train", "Train model"
    CANCEL = "cancel", "Cancel training"
    ACTIVATE = "activate", "Activate model"
    ROLLBACK = "rollback", "Roll back model"
    RESCORE = "rescore", "Re-score images"


class AuditEvent(models.Model):
    """Who did what to which record, when, from where. Append-only.

    The patient and clinic are kept as plain ids (no foreign key): audit rows must outlive the
    records they describe, and this app knows nothing of the clinical models. So is the API token a
    call was authenticated by (its id, and its non-secret prefix and name as they were): empty for
    web sessions and the system."""

    Action = AuditAction

    actor = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+")
    # Kept as text so the trail survives the user's deletion.
    actor_username = models.CharField(max_length=150, blank=True)
    action = models.CharField(max_length=10, choices=Action.choices)
    object_type = models.CharField(max_length=40)
    object_id = models.CharField(max_length=40)
    patient_id = models.BigIntegerField(null=True, blank=True, db_index=True)
    clinic_id = models.BigIntegerField(null=True, blank=True, db_index=True)
    old_values = models.JSONField(default=dict, blank=True)
    new_values = models.JSONField(default=dict, blank=True)
    ip_address = models.GenericIPAddressField(null=True, blank=True)
    api_token_id = models.BigIntegerField(null=True, blank=True, db_index=True,
                                          help_text="The API token the request was authenticated by, if any.")
    api_token_label = models.CharField(max_length=130, blank=True,
                                       help_text="That token's prefix and name (never its secret).")
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    objects = AppendOnlyQuerySet.as_manager()

    class Meta:
        # the table the clinical app created before the trail became an app of its own
        db_table = "cases_auditevent"
        ordering = ["-created_at", "-pk"]
        indexes = [models.Index(fields=["object_type", "object_id"], name="audit_object_idx")]
        constraints = [
            models.CheckConstraint(
                condition=Q(action__in=AuditAction.values),
                name="audit_action_valid",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.created_at:%Y-%m-%d %H:%M:%S} {self.actor_username or 'system'} {self.action} {self.object_type} {self.object_id}"

    def save(self, *args, **kwargs):
        if not self._state.adding:
            raise ValidationError("Audit events are append-only: an existing event cannot be changed.")
        super().save(*args, **kwargs)

    def delete(self, *args, **kwargs):
        raise ValidationError("Audit events are append-only: an event cannot be deleted.")
