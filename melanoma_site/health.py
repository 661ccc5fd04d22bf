"""Health checks (plain functions) and the views that report them.

- ``/health/live``: answers, nothing else (for load balancers; public).
- ``/health/``: the database, Redis, a live worker per queue and the active model. Computed at
  most once per HEALTH_CACHE_SECONDS per process, however many callers poll it; anonymous
  callers get the overall status only, staff users and callers with the ``HEALTH_TOKEN``
  (``Authorization: Bearer ...``) get every check with its error, worker names and paths.

Both answer HEAD as well as GET (``require_safe``): many load balancers probe with HEAD.
"""
from __future__ import annotations

import secrets
import threading
import time
from typing import Any

import redis
from django.conf import settings
from django.db import connection
from django.http import HttpRequest, JsonResponse
from django.contrib.auth.decorators import login_not_required
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_safe

from classifier.registry import active_model_status
from melanoma_site.celery import app as celery_app

# every queue a task is routed to (settings.CELERY_TASK_ROUTES and the re-scores' own sends)
QUEUES = ("inference", "rescoring", "training")


def check_database() -> dict[str, Any]:
    """Run a trivial query on the default database."""
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
            cursor.fetchone()
        return {"ok": True, "vendor": connection.vendor}
    except Exception as exc:  # any failure means "down"; report it, don't raise
        return {"ok": False, "error": f"{type(exc).__name__}: {exc}"}


def check_redis(url: str | None = None) -> dict[str, Any]:
    """PING the broker."""
    try:
        client = redis.Redis.from_url(url or settings.CELERY_BROKER_URL, socket_timeout=1, socket_connect_timeout=1)
        client.ping()
        return {"ok": True}
    except Exception as exc:
        return {"ok": False, "error": f"{type(exc).__name__}: {exc}"}


def check_workers(timeout: float = 1.0) -> dict[str, Any]:
    """Ask live workers which queues they consume; each queue needs at least one."""
    try:
        replies = celery_app.control.inspect(timeout=timeout).active_queues() or {}
    except Exception as exc:
        return {queue: {"ok": False, "workers": [], "error": f"{type(exc).__name__}: {exc}"} for queue in QUEUES}
    result: dict[str, Any] = {}
    for queue in QUEUES:
        workers = sorted(name for name, queues in replies.items() if any(q.get("name") == queue for q in queues))
        result[queue] = {"ok": bool(workers), "workers": workers}
    return result


def check_model() -> dict[str, Any]:
    """The active model version, read from the registry or the model card (no TensorFlow import)."""
    try:
        return active_model_status()
    except Exception as exc:
        return {"ok": False, "error": f"{type(exc).__name__}: {exc}"}


def health_report() -> dict[str, Any]:
    """All checks; ``status`` is "ok" only when every one passes."""
    started = time.monotonic()
    report: dict[str, Any] = {
        "database": check_database(),
        "redis": check_redis(),
    }
    report["workers"] = check_workers() if report["redis"]["ok"] else {
        queue: {"ok": False, "workers": [], "error": "broker unreachable"} for queue in QUEUES
    }
    report["model"] = check_model()
    healthy = (
        report["database"]["ok"]
        and report["redis"]["ok"]
        and all(entry["ok"] for entry in report["workers"].values())
        and report["model"]["ok"]
    )
    report["status"] = "ok" if healthy else "degraded"
    report["elapsed_ms"] = round((time.monotonic() - started) * 1000, 1)
    return report


_cache_lock = threading.Lock()
_cached: tuple[float, dict[str, Any]] | None = None


def cached_health_report() -> dict[str, Any]:
    """`health_report`, reused for HEALTH_CACHE_SECONDS; concurrent callers wait for one run."""
    global _cached
    with _cache_lock:
        now = time.monotonic()
        if _cached is None or now - _cached[0] >= settings.HEALTH_CACHE_SECONDS:
            _cached = (now, health_report())
        return _cached[1]


def may_see_details(request: HttpRequest) -> bool:
    """Staff users, and callers presenting the configured health token."""
    user = getattr(request, "user", None)
    if user is not None and user.is_authenticated and user.is_staff:
        return True
    token = settings.HEALTH_TOKEN
    given = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
    return bool(token) and secrets.compare_digest(given.encode(), token.encode())


def _answer(request: HttpRequest, payload: dict, status: int = 200) -> JsonResponse:
    """The JSON answer; for HEAD, its status and headers alone: gunicorn drops a HEAD body with a
    warning, once per load-balancer probe."""
    response = JsonResponse(payload, status=status)
    if request.method == "HEAD":
        response.content = b""
    return response


@login_not_required
@never_cache
@require_safe
def health(request: HttpRequest) -> JsonResponse:
    """``GET /health/``: 200 when everything is up, 503 otherwise; details for staff or the token."""
    report = cached_health_report()
    status = 200 if report["status"] == "ok" else 503
    if not may_see_details(request):
        report = {"status": report["status"]}
    return _answer(request, report, status)


@login_not_required
@never_cache
@require_safe
def live(request: HttpRequest) -> JsonResponse:
    """``GET``/``HEAD /health/live``: the process answers. No database, broker or model call, so a
    load balancer or orchestrator may poll it as often as it likes."""
    return _answer(request, {"status": "ok"})
