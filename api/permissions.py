"""Permissions every API view applies (settings.REST_FRAMEWORK's defaults, and views that list their own)."""
from __future__ import annotations

from rest_framework import permissions

from api.models import ApiToken

READ_ONLY_REFUSED = "This API token is read-only: it can read results but not create or change records."


class TokenScope(permissions.BasePermission):
    """A read-only token may use the safe methods (GET, HEAD, OPTIONS) only: any other is 403, refused
    before the view runs, so nothing is changed. Session logins and full tokens are not concerned."""

    message = READ_ONLY_REFUSED

    def has_permission(self, request, view) -> bool:
        token = request.auth
        if not isinstance(token, ApiToken) or not token.read_only:
            return True
        return request.method in permissions.SAFE_METHODS
