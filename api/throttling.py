"""The API's rate limits (DRF throttles), failing open when the shared cache cannot be reached.

The counters live in the default cache (Redis in production, see settings.CACHES). A rate limit
protects the service; it is not worth refusing a clinician's request for: when Redis is down or
slow, the request goes through and a warning is logged, instead of an error page.
"""
from __future__ import annotations

import logging

from redis.exceptions import RedisError
from rest_framework import throttling

log = logging.getLogger(__name__)


class FailOpenMixin:
    """``allow_request`` that lets the request through when the cache raises."""

    def allow_request(self, request, view) -> bool:
        try:
            return super().allow_request(request, view)
        except (RedisError, OSError) as exc:
            log.warning("rate limit not checked (%s: the cache is unreachable): %s", type(self).__name__, exc)
            return True


class UserRateThrottle(FailOpenMixin, throttling.UserRateThrottle):
    """Per-user rate (``API_RATE_USER``)."""


class AnonRateThrottle(FailOpenMixin, throttling.AnonRateThrottle):
    """Per-address rate for unauthenticated calls (``API_RATE_ANON``)."""


class ScopedRateThrottle(FailOpenMixin, throttling.ScopedRateThrottle):
    """Per-user rate of one scope (``uploads``: ``API_RATE_UPLOADS``)."""
