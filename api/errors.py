"""Errors as JSON with a specific message: the model layer's and the queue's refusals included."""
from __future__ import annotations

from django.core.exceptions import ValidationError as DjangoValidationError
from django.http import JsonResponse
from django.views import defaults
from rest_framework import status
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler

from cases.queue import ClaimError
from cases.services import CaseClosed


def exception_handler(exc, context):
    """DRF's handler, plus: a model constraint refusal is a 400, and a queue conflict or a change
    to a closed case a 409."""
    if isinstance(exc, DjangoValidationError):
        detail = exc.message_dict if hasattr(exc, "error_dict") else {"non_field_errors": exc.messages}
        return Response(detail, status=status.HTTP_400_BAD_REQUEST)
    if isinstance(exc, (ClaimError, CaseClosed)):
        return Response({"detail": str(exc)}, status=status.HTTP_409_CONFLICT)
    return drf_exception_handler(exc, context)


def _is_api(request) -> bool:
    return request.path.startswith("/api/")


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
