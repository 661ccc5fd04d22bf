"""Errors as JSON with a specific message: the model layer's and the queue's refusals included."""
from __future__ import annotations

import logging

from django.conf import settings
from django.core.exceptions import (NON_FIELD_ERRORS, RequestDataTooBig, SuspiciousOperation, TooManyFieldsSent,
                                    TooManyFilesSent)
from django.core.exceptions import ValidationError as DjangoValidationError
from django.db import IntegrityError
from django.http import HttpResponse, HttpResponseBadRequest, JsonResponse
from django.shortcuts import render
from django.utils.cache import patch_cache_control
from django.views.decorators.csrf import requires_csrf_token
from django.views import defaults
from rest_framework import exceptions, status
from rest_framework.response import Response
from rest_framework.serializers import as_serializer_error
from rest_framework.settings import api_settings
from rest_framework.views import exception_handler as drf_exception_handler

from cases.queue import ClaimError
from cases.services import CaseClosed, VersionNotActive
from cases.upload_limits import UploadTooLarge

log = logging.getLogger(__name__)

# what a client is told when the database refused a write that passed every check: another
# request saved a clashing record in the meantime (the same patient identifier, say)
CONCURRENT_WRITE = ("This conflicts with a record saved at the same moment by another request; nothing was "
                    "saved. Reload the records and try again.")


class Conflict(exceptions.APIException):
    """409: the request is valid, but the records are not in a state that allows it."""

    status_code = status.HTTP_409_CONFLICT
    default_detail = "The records are not in a state that allows this."
    default_code = "conflict"


# the Cache-Control of every API answer, as the pages with patient data send it (cases.views.PRIVATE):
# no shared or browser cache keeps one
NO_STORE = {"private": True, "no_store": True}


def no_store(response: HttpResponse) -> HttpResponse:
    """The response, never to be cached (``NO_STORE``)."""
    patch_cache_control(response, **NO_STORE)
    return response


def refusal_message(exc: SuspiciousOperation) -> str:
    """What a client should be told about a request Django's parsers refused (never a setting's name)."""
    if isinstance(exc, TooManyFilesSent):
        return (f"Too many files in one request (more than {settings.DATA_UPLOAD_MAX_NUMBER_FILES}); an upload "
                f"takes at most {settings.UPLOAD_MAX_FILES} images.")
    if isinstance(exc, TooManyFieldsSent):
        return (f"Too many fields or query parameters in one request "
                f"(more than {settings.DATA_UPLOAD_MAX_NUMBER_FIELDS}).")
    if isinstance(exc, UploadTooLarge):
        return str(exc)
    if isinstance(exc, RequestDataTooBig):
        return (f"The request body is too large (more than {settings.DATA_UPLOAD_MAX_MEMORY_SIZE} bytes besides "
                f"any files).")
    return "The request was refused: it could not be read safely."


def _suspicious(exc: SuspiciousOperation, request) -> Response:
    """A JSON 400 for a request body Django refused while a view read it, logged to the same
    ``django.security`` logger Django would have used."""
    logging.getLogger(f"django.security.{exc.__class__.__name__}").error(
        str(exc), extra={"status_code": 400, "request": getattr(request, "_request", request)})
    return Response({"detail": refusal_message(exc)}, status=status.HTTP_400_BAD_REQUEST)


def field_errors(exc: DjangoValidationError) -> dict:
    """A model-layer refusal as the serializers give theirs: messages per field, and the rest
    under ``non_field_errors`` (Django calls it ``__all__``)."""
    detail = as_serializer_error(exc)
    if NON_FIELD_ERRORS in detail:
        detail[api_settings.NON_FIELD_ERRORS_KEY] = [*detail.get(api_settings.NON_FIELD_ERRORS_KEY, []),
                                                     *detail.pop(NON_FIELD_ERRORS)]
    return detail


def _throttled_instead(exc: exceptions.APIException, context: dict) -> exceptions.APIException:
    """The refusal of a request without a valid token, or Throttled once its address is over its rate.

    DRF authenticates and checks permissions before it checks the throttles, so a request refused
    for its token never reached them: counted here, as the same view would have counted an
    anonymous request (per client address, ``API_RATE_ANON``), or a bad or missing token could be
    tried without limit. A valid token is never refused for another caller's failures."""
    view = context.get("view")
    if view is None:
        return exc
    try:
        view.check_throttles(context["request"])
    except exceptions.Throttled as throttled:
        return throttled
    return exc


def _is_unique_violation(exc: IntegrityError) -> bool:
    """Whether the database refused a duplicate (SQLSTATE 23505 on PostgreSQL; SQLite says so in
    its message), as two concurrent writes of one number or identifier do."""
    cause = exc.__cause__
    code = getattr(cause, "sqlstate", None) or getattr(cause, "pgcode", None)
    if code:
        return code == "23505"
    return str(exc).startswith("UNIQUE constraint failed")


def exception_handler(exc, context):
    """DRF's handler, plus: a refused token counts against the address's anonymous rate (429 over
    it); a model constraint refusal is a 400; a queue conflict, a change to a closed case, a retry
    that cannot run, or a write that clashed with a concurrent one a 409."""
    if isinstance(exc, (exceptions.NotAuthenticated, exceptions.AuthenticationFailed)):
        exc = _throttled_instead(exc, context)
    elif isinstance(exc, (ClaimError, CaseClosed)):
        exc = Conflict(str(exc))
    elif isinstance(exc, VersionNotActive):  # before the 400 below: a ValidationError too, for the pages
        exc = Conflict(" ".join(exc.messages))
    elif isinstance(exc, DjangoValidationError):
        exc = exceptions.ValidationError(field_errors(exc))
    elif isinstance(exc, IntegrityError) and _is_unique_violation(exc):
        # the checks passed but the database refused a duplicate: a concurrent write; logged, in case
        # it is a bug (any other refusal, NOT NULL or CHECK, is a bug and stays a 500)
        log.warning("a write was refused by the database; answered 409", exc_info=exc)
        exc = Conflict(CONCURRENT_WRITE)
    elif isinstance(exc, SuspiciousOperation):  # too many files or fields, a body too large
        return _suspicious(exc, context.get("request"))
    return drf_exception_handler(exc, context)


def _is_api(request) -> bool:
    return request.path.startswith("/api/")


def bad_request(request, exception=None):
    """400 outside any view (Django refused the request before a view saw it: too many files in an
    upload form, too many query parameters): JSON with a specific message under /api/, the styled
    page with the same message elsewhere. Django has already logged it. Wire it as
    ``handler400 = "api.errors.bad_request"`` in the root URLconf."""
    suspicious = isinstance(exception, SuspiciousOperation)
    if _is_api(request):
        return no_store(JsonResponse({"detail": refusal_message(exception) if suspicious else "Bad request."},
                                     status=400))
    return _bad_request_page(request, exception, refusal_message(exception) if suspicious else "")


@requires_csrf_token  # as Django's own handler: the page's log-out form needs the token
def _bad_request_page(request, exception, message: str) -> HttpResponse:
    """templates/400.html with the message; the message as plain text if even that cannot be rendered."""
    try:
        too_many_files = isinstance(exception, (TooManyFilesSent, UploadTooLarge))  # "with fewer files at a time"
        return render(request, "400.html", {"message": message, "too_many_files": too_many_files}, status=400)
    except Exception:
        logging.getLogger(__name__).exception("the 400 page could not be rendered")
        return HttpResponseBadRequest(message or "Bad Request (400)", content_type="text/plain; charset=utf-8")


def not_found(request, exception=None):
    """404 outside any view (an id that is not a number, an unknown path): JSON under /api/,
    the styled page elsewhere."""
    if _is_api(request):
        return no_store(JsonResponse({"detail": "Not found."}, status=404))
    return defaults.page_not_found(request, exception)


def server_error(request):
    """500: JSON under /api/ (clients parse it), the styled page elsewhere."""
    if _is_api(request):
        return no_store(JsonResponse({"detail": "Server error; it was logged. Please try again later."}, status=500))
    return defaults.server_error(request)
