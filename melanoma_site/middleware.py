"""Request guards that apply to every view."""
from __future__ import annotations

from django.http import HttpRequest, HttpResponse, HttpResponseBadRequest, JsonResponse

NUL_MESSAGE = "The query string contains a NUL character, which no field accepts."


class RejectNulQueryMiddleware:
    """A NUL byte in a query parameter is refused with a 400: PostgreSQL text can't hold one, so
    a search for it would otherwise fail in the database (form fields already refuse it in bodies)."""

    def __init__(self, get_response) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if any("\x00" in key or any("\x00" in v for v in values) for key, values in request.GET.lists()):
            if request.path.startswith("/api/"):
                return JsonResponse({"detail": NUL_MESSAGE}, status=400)
            return HttpResponseBadRequest(NUL_MESSAGE)
        return self.get_response(request)
