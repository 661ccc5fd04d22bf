"""Template context shared by every page."""
from django.conf import settings
from django.http import HttpRequest

from cases.queue import queue_size_for


def site(request: HttpRequest) -> dict:
    """Site name and the review-queue size for the navigation bar."""
    context = {"SITE_NAME": settings.SITE_NAME, "queue_size": None}
    user = getattr(request, "user", None)
    if user is not None and user.is_authenticated:
        context["queue_size"] = queue_size_for(user)
    return context
