"""The API's rate limits (DRF throttles), failing open when the shared cache cannot be reached.

The counters live in the default cache (Redis in production, see settings.CACHES). A rate limit
protects the service; it is not worth refusing a clinician's request for: when Redis is down or
slow, the request goes through and a warning is logged, instead of an error page.
"""
from __future__ import annotations

import logging

from redis.exceptions import RedisError
from rest_framework import throttling

from audit.log import client_ip

log = logging.getLogger(__name__)


class FailOpenMixin:
    """``allow_request`` that lets the request through when the cache raises."""

    def allow_request(self, request, view) -> bool:
        try:
            return super().allow_request(request, view)
        except (RedisError, OSError) as exc:
            log.warning("rate limit not checked (%s: the cache is unreachable): %s", type(self).__name__, exc)
            return True


class ClientAddressMixin:
    """``get_ident``: the client's address as the audit trail and the login lockout see it
    (`audit.log.client_ip`: X-Forwarded-For only from settings.TRUSTED_PROXIES). DRF's own takes a
    client's X-Forwarded-For at its word, so a forged header per call would escape every limit."""

    def get_ident(self, request) -> str:
        return client_ip(request) or ""


class UserRateThrottle(ClientAddressMixin, FailOpenMixin, throttling.UserRateThrottle):
    """Per-user rate (``API_RATE_USER``)."""


class AnonRateThrottle(ClientAddressMixin, FailOpenMixin, throttling.AnonRateThrottle):
    """Per-address rate for unauthenticated calls (``API_RATE_ANON``)."""


class ScopedRateThrottle(ClientAddressMixin, FailOpenMixin, throttling.ScopedRateThrottle):
    """Per-user rate of one scope (``uploads``: ``API_RATE_UPLOADS``)."""
