"""Small display filters for the case pages."""
from django import template
from django.conf import settings

register = template.Library()


@register.simple_tag
def upload_max_files() -> int:
    """How many files one upload may hold (``UPLOAD_MAX_FILES``), for the browser's own check."""
    return settings.UPLOAD_MAX_FILES


@register.filter
def percent(value, digits: int = 1) -> str:
    """0.1234 → '12.3%'; "—" for missing values. A score short of certainty never reads as
    "100.0%" (0.9996 → '>99.9%'), nor a non-zero one as "0.0%"."""
    if value is None or value == "":
        return "—"
    value, digits = float(value), int(digits)
    text = f"{value * 100:.{digits}f}"
    step = 10.0 ** -digits
    if value < 1 and float(text) >= 100:
        return f">{100 - step:.{digits}f}%"
    if value > 0 and float(text) <= 0:
        return f"<{step:.{digits}f}%"
    return f"{text}%"


@register.filter
def percent_against(value, threshold) -> str:
    """``value`` as a percent with as many decimals (up to 3) as it takes not to read as equal to
    ``threshold`` when it is not: 0.4996 against 0.5 → '49.96%', never '50.0%'."""
    if value is None or value == "" or threshold is None or threshold == "" or float(value) == float(threshold):
        return percent(value)
    digits = next((d for d in (1, 2) if percent(value, d) != percent(threshold, d)), 3)
    return percent(value, digits)
