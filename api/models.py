"""API tokens: issued and revoked by an admin, stored only as a hash."""
from __future__ import annotations

import hashlib
import secrets

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.utils import timezone

TOKEN_PREFIX = "sl_"


def hash_key(key: str) -> str:
    """sha256 of a token: tokens are 256-bit random strings, so a fast hash is enough."""
    return hashlib.sha256(key.encode()).hexdigest()


def new_key() -> str:
    """A fresh secret token (shown once to the admin, never stored)."""
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


class ApiToken(models.Model):
    """One user's credential for the API. A database leak reveals no usable token."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_tokens")
    name = models.CharField(max_length=100, help_text="What the token is for, e.g. “EHR integration, ward 3”.")
    prefix = models.CharField(max_length=16, editable=False, help_text="The first characters, to recognise it.")
    key_hash = models.CharField(max_length=64, unique=True, editable=False)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True,
                                   related_name="+", editable=False)
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField(null=True, blank=True, help_text="Leave empty for no expiry.")
    read_only = models.BooleanField(
        default=False, verbose_name="read only",
        help_text="The token may only read (GET): for an integration that pulls results and must never write.")
    revoked_at = models.DateTimeField(null=True, blank=True, editable=False)
    last_used_at = models.DateTimeField(null=True, blank=True, editable=False)

    class Meta:
        ordering = ["-created_at"]
        verbose_name = "API token"
        constraints = [models.CheckConstraint(condition=~Q(key_hash=""), name="api_token_has_hash")]

    def __str__(self) -> str:
        return f"{self.prefix}… ({self.name})"

    def issue(self) -> str:
        """Give the token a new secret and return it; only its hash is kept."""
        key = new_key()
        self.prefix = key[: len(TOKEN_PREFIX) + 6]
        self.key_hash = hash_key(key)
        return key

    @property
    def state(self) -> str:
        """"active", "revoked" or "expired"."""
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at is not None and self.expires_at <= timezone.now():
            return "expired"
        return "active"

    def audit_scope(self) -> tuple[int | None, int | None]:
        """(patient id, clinic id) for the audit trail: the token holder's clinic."""
        membership = getattr(self.user, "clinic_membership", None)
        return None, membership.clinic_id if membership is not None else None
