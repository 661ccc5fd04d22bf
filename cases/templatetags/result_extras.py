"""The result's texts that the result page and the report share (cases.presentation), for templates."""
from django import template

from cases import presentation
from cases.models import Case

register = template.Library()


@register.simple_tag
def reliability_caveats(prediction, case) -> list[str]:
    """``{% reliability_caveats prediction case as caveats %}``: the "Reliability:" notes."""
    return presentation.reliability_caveats(prediction, case)


@register.simple_tag(takes_context=True)
def card_caveats(context, prediction) -> list[str]:
    """``{% card_caveats prediction as caveats %}``: the "Reliability:" notes on an image's card.
    The page's ``case`` where it is the image's; the status poll has none, and its images come
    with their lesion, case and patient (access.visible_images), so no card costs a query."""
    lesion = prediction.image.lesion
    case = context.get("case")
    if not (isinstance(case, Case) and case.pk == lesion.case_id):
        case = lesion.case
    return presentation.reliability_caveats(prediction, case)


@register.simple_tag
def calibration_note(version, short=False) -> str:
    """What the melanoma probability is calibrated on (the validation images' melanoma share)."""
    return presentation.calibration_note(version, short=bool(short))


@register.simple_tag
def version_note(version, rolled_back=False) -> str:
    """"(no longer the active version)" for a result of a version that is not active ("" otherwise);
    ``rolled_back``: say when it was rolled back from (one query: the result page only)."""
    return presentation.version_note(version, rolled_back=bool(rolled_back))


@register.simple_tag
def model_limits(version) -> list[str]:
    """The version's known limits, as the report lists them."""
    return presentation.limits_of(version)


@register.filter
def context_text(clinical_context) -> str:
    """The clinical context a score used ("sex not used" for a value the model does not take)."""
    return presentation.clinical_context_text(clinical_context)


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
