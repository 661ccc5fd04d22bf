"""Template context shared by every page."""
from django.conf import settings
from django.http import HttpRequest

from cases import statements
from cases.queue import queue_size_for

# Where the request keeps its navigation-bar queue size: every render_to_string(request=...) of a
# page (the case page's status poll renders two partials per image) runs this processor again.
_QUEUE_SIZE_ATTR = "_secondlook_queue_size"


def _queue_size(request: HttpRequest) -> int | None:
    """The user's review-queue size (None for non-reviewers), counted at most once per request."""
    user = getattr(request, "user", None)
    if user is None or not user.is_authenticated:
        return None
    # keyed by the user: a login or logout inside the request (then a render) must not reuse it
    memo = getattr(request, _QUEUE_SIZE_ATTR, None)
    if memo is None or memo[0] != user.pk:
        memo = (user.pk, queue_size_for(user))
        setattr(request, _QUEUE_SIZE_ATTR, memo)
    return memo[1]


def site(request: HttpRequest) -> dict:
    """Site name, the fixed statements (cases.statements) and the review-queue size for the navigation bar."""
    return {
        "SITE_NAME": settings.SITE_NAME,
        "queue_size": _queue_size(request),
        "INTENDED_USE_LEAD": statements.INTENDED_USE_LEAD,
        "INTENDED_USE": statements.intended_use(settings.SITE_NAME),
        "RESULT_INTENDED_USE": statements.RESULT_INTENDED_USE,
        "BELOW_THRESHOLD": statements.BELOW_THRESHOLD,
        "DATA_ATTRIBUTION": statements.DATA_ATTRIBUTION,
    }
