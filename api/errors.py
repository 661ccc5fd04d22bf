"""Errors as JSON with a specific message: the model layer's and the queue's refusals included."""
from __future__ import annotations

import logging

from django.conf import settings
from django.core.exceptions import RequestDataTooBig, SuspiciousOperation, TooManyFieldsSent, TooManyFilesSent
from django.core.exceptions import ValidationError as DjangoValidationError
from django.http import HttpResponse, HttpResponseBadRequest, JsonResponse
from django.shortcuts import render
from django.views.decorators.csrf import requires_csrf_token
from django.views import defaults
from rest_framework import status
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler

from cases.queue import ClaimError
from cases.services import CaseClosed
from cases.upload_limits import UploadTooLarge


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


def exception_handler(exc, context):
    """DRF's handler, plus: a model constraint refusal is a 400, and a queue conflict or a change
    to a closed case a 409."""
    if isinstance(exc, DjangoValidationError):
        detail = exc.message_dict if hasattr(exc, "error_dict") else {"non_field_errors": exc.messages}
        return Response(detail, status=status.HTTP_400_BAD_REQUEST)
    if isinstance(exc, (ClaimError, CaseClosed)):
        return Response({"detail": str(exc)}, status=status.HTTP_409_CONFLICT)
    if isinstance(exc, SuspiciousOperation):  # too many files or fields, a body too large
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
        return JsonResponse({"detail": refusal_message(exception) if suspicious else "Bad request."}, status=400)
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
        return JsonResponse({"detail": "Not found."}, status=404)
    return defaults.page_not_found(request, exception)


def server_error(request):
    """500: JSON under /api/ (clients parse it), the styled page elsewhere."""
    if _is_api(request):
        return JsonResponse({"detail": "Server error; it was logged. Please try again later."}, status=500)
    return defaults.server_error(request)
