"""The result's texts that the result page and the report share (cases.presentation), for templates."""
from django import template

from cases import presentation

register = template.Library()


@register.simple_tag
def reliability_caveats(prediction, case) -> list[str]:
    """``{% reliability_caveats prediction case as caveats %}``: the "Reliability:" notes."""
    return presentation.reliability_caveats(prediction, case)


@register.filter
def displayed_set(prediction) -> list[presentation.SetMember]:
    """The diagnoses the model cannot rule out, as shown (flag-threshold classes added and marked)."""
    return presentation.displayed_set(prediction)


@register.simple_tag
def set_note(prediction, members) -> str:
    """The sentences under the set: its measured coverage, what "added" means."""
    return presentation.set_note(prediction, members)


@register.filter
def review_state(lesion) -> str:
    """Whether the lesion was sent to a dermatologist, or already reviewed."""
    return presentation.review_state_text(lesion)
