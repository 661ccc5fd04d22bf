"""Writing the audit trail: one plain function per event, plus helpers to snapshot changes."""
from __future__ import annotations

import ipaddress
from typing import Any, Iterable

from django.conf import settings
from django.db import models
from django.http import HttpRequest

from audit.models import AuditEvent


def client_ip(request: HttpRequest | None) -> str | None:
    """The client's address. X-Forwarded-For is believed only as far as it was written by one of
    settings.TRUSTED_PROXIES (addresses or networks of the app's own reverse proxies): walking it
    from the right, the first address that is not such a proxy is the client. Without trusted
    proxies it is ignored (a client could forge it) and the peer address is the answer. Used by the
    audit trail and by the login lockout (AXES_CLIENT_IP_CALLABLE)."""
    if request is None:
        return None
    peer = request.META.get("REMOTE_ADDR") or None
    proxies = [ipaddress.ip_network(p, strict=False) for p in settings.TRUSTED_PROXIES]
    if not proxies or not _within(peer, proxies):
        return peer
    hops = [h.strip() for h in request.META.get("HTTP_X_FORWARDED_FOR", "").split(",") if h.strip()]
    for hop in reversed(hops):
        if not _within(hop, proxies):
            return hop if _valid(hop) else peer
    return peer


def _valid(address: str | None) -> bool:
    try:
        ipaddress.ip_address(address or "")
        return True
    except ValueError:
        return False


def _within(address: str | None, networks) -> bool:
    try:
        ip = ipaddress.ip_address(address or "")
    except ValueError:
        return False
    return any(ip in network for network in networks)


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


def _fields(*, action: str, obj: models.Model, actor, address: str | None, via: dict[str, Any],
            old: dict[str, Any] | None = None, new: dict[str, Any] | None = None) -> dict[str, Any]:
    """The columns of one event about ``obj``."""
    patient_id, clinic_id = scope_of(obj)
    return dict(actor=actor, actor_username=getattr(actor, "username", "") if actor is not None else "",
                action=action, object_type=obj._meta.model_name, object_id=str(obj.pk), patient_id=patient_id,
                clinic_id=clinic_id, old_values=old or {}, new_values=new or {}, ip_address=address, **via)


def _request_user(request: HttpRequest | None):
    return request.user if request is not None and request.user.is_authenticated else None


TOKEN_LABEL_LENGTH = AuditEvent._meta.get_field("api_token_label").max_length


def request_token(request: HttpRequest | None) -> dict[str, Any]:
    """The ``api_token_id``/``api_token_label`` columns: the API token the request was authenticated
    by (REST framework puts it in ``request.auth``, on its request and on Django's), or empty ones for
    a web session or the system. Read by duck typing (this app imports no other): a token is an
    object with a primary key and a non-secret ``prefix``; only that prefix and its ``name`` are kept."""
    token = getattr(request, "auth", None)
    prefix = getattr(token, "prefix", None)
    if getattr(token, "pk", None) is None or not isinstance(prefix, str) or not prefix:
        return {"api_token_id": None, "api_token_label": ""}
    name = getattr(token, "name", "") or ""
    label = f"{prefix}… ({name})" if name else f"{prefix}…"
    return {"api_token_id": token.pk, "api_token_label": label[:TOKEN_LABEL_LENGTH]}


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
    actor = actor if actor is not None else _request_user(request)
    return AuditEvent.objects.create(**_fields(action=action, obj=obj, actor=actor, address=client_ip(request),
                                               via=request_token(request), old=old, new=new))


def record_many(*, action: str, objs: Iterable[models.Model], request: HttpRequest | None = None,
                new: dict[str, Any] | None = None) -> list[AuditEvent]:
    """One event per object, written in one INSERT: what a list call disclosed, record by record,
    so that "who saw this patient" finds it as it finds an opened page."""
    actor, address, via = _request_user(request), client_ip(request), request_token(request)
    return AuditEvent.objects.bulk_create(
        [AuditEvent(**_fields(action=action, obj=obj, actor=actor, address=address, via=via, new=new))
         for obj in objs])


def record_trail_view(*, request: HttpRequest | None, object_id: str = "", patient_id: int | None = None,
                      clinic_id: int | None = None, new: dict[str, Any] | None = None) -> AuditEvent:
    """A read of the trail itself: one "view" event of object type ``auditevent``, of one event
    (``object_id``, under that event's patient and clinic) or of a page of the list (no object id;
    ``new`` says which events it showed). ``record`` cannot say it: an event has no ``audit_scope``,
    and a page of the list is no one object."""
    actor = _request_user(request)
    return AuditEvent.objects.create(
        actor=actor, actor_username=getattr(actor, "username", "") if actor is not None else "", action="view",
        object_type=AuditEvent._meta.model_name, object_id=object_id, patient_id=patient_id, clinic_id=clinic_id,
        new_values=new or {}, ip_address=client_ip(request), **request_token(request))
