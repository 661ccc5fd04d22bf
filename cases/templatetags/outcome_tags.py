"""The histopathology panel of a lesion on the case page (templates/cases/partials/outcome.html)."""
from __future__ import annotations

from django import template

from cases import outcomes
from cases.models import Outcome
from cases.outcome_forms import OutcomeForm

register = template.Library()


@register.simple_tag(takes_context=True)
def lesion_outcome(context, lesion) -> dict:
    """The lesion's current result, its earlier (superseded) entries, and the form for its clinic.
    A tag rather than view context, so the case page needs only the one include line."""
    request = context.get("request")
    if "outcomes" in getattr(lesion, "_prefetched_objects_cache", {}):  # the case page's: no query per lesion
        # newest first, as Outcome's ordering
        history = sorted(lesion.outcomes.all(), key=lambda o: (o.entered_at, o.pk), reverse=True)
    else:
        history = list(Outcome.objects.select_related("entered_by", "supersedes").filter(lesion=lesion))
    superseded = {o.supersedes_id for o in history if o.supersedes_id}
    current = next((o for o in history if o.pk not in superseded), None)  # as followup.current_result
    may_record = request is not None and outcomes.may_record_outcome(request.user, lesion)
    return {
        "current": current,
        "earlier": [o for o in history if o is not current],
        "may_record": may_record,
        "form": OutcomeForm(lesion=lesion, current=current) if may_record else None,
    }
