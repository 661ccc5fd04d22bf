"""Writing the audit trail: one plain function per event, plus helpers to snapshot changes."""
from __future__ import annotations

from typing import Any, Iterable

from django.db import models
from django.http import HttpRequest

from audit.models import AuditEvent


def client_ip(request: HttpRequest | None) -> str | None:
    """The peer address. X-Forwarded-For is not trusted: a client could forge it."""
    if request is None:
        return None
    return request.META.get("REMOTE_ADDR") or None


def snapshot(obj: models.Model, fields: Iterable[str]) -> dict[str, Any]:
    """JSON-safe values of ``fields`` (foreign keys as ids) for old/new comparisons."""
    values: dict[str, Any] = {}
    for name in fields:
        field = obj._meta.get_field(name)
        value = getattr(obj, field.attname)
        if isinstance(field, models.FileField):
            value = value.name if value else ""
        elif hasattr(value, "isoformat"):
            value = value.isoformat()
        values[name] = value
    return values


def changed(old: dict[str, Any], new: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Only the keys whose values differ, as (old, new)."""
    keys = [key for key in new if old.get(key) != new[key]]
    return {key: old.get(key) for key in keys}, {key: new[key] for key in keys}


def scope_of(obj: models.Model) -> tuple[int | None, int | None]:
    """(patient id, clinic id) an object concerns, from its ``audit_scope()``; (None, None) for
    objects outside the clinical records (a model version, say)."""
    scope = getattr(obj, "audit_scope", None)
    return scope() if callable(scope) else (None, None)


def record(
    *,
    action: str,
    obj: models.Model,
    actor=None,
    request: HttpRequest | None = None,
    old: dict[str, Any] | None = None,
    new: dict[str, Any] | None = None,
) -> AuditEvent:
    """Append one event. ``actor`` defaults to the request's user; None means the system (a worker)."""
    if actor is None and request is not None and request.user.is_authenticated:
        actor = request.user
    patient_id, clinic_id = scope_of(obj)
    return AuditEvent.objects.create(
        actor=actor,
        actor_username=getattr(actor, "username", "") if actor is not None else "",
        action=action,
        object_type=obj._meta.model_name,
        object_id=str(obj.pk),
        patient_id=patient_id,
        clinic_id=clinic_id,
        old_values=old or {},
        new_values=new or {},
        ip_address=client_ip(request),
    )
