"""Template context shared by every page."""
from django.conf import settings
from django.http import HttpRequest

from cases import statements
from cases.queue import queue_size_for


def site(request: HttpRequest) -> dict:
    """Site name, the fixed statements (cases.statements) and the review-queue size for the navigation bar."""
    context = {
        "SITE_NAME": settings.SITE_NAME,
        "queue_size": None,
        "INTENDED_USE_LEAD": statements.INTENDED_USE_LEAD,
        "INTENDED_USE": statements.intended_use(settings.SITE_NAME),
        "RESULT_INTENDED_USE": statements.RESULT_INTENDED_USE,
        "BELOW_THRESHOLD": statements.BELOW_THRESHOLD,
        "DATA_ATTRIBUTION": statements.DATA_ATTRIBUTION,
    }
    user = getattr(request, "user", None)
    if user is not None and user.is_authenticated:
        context["queue_size"] = queue_size_for(user)
    return context
