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


MAX_DIGITS = 6


def _shown(value: float, digits: int) -> float:
    return float(f"{value * 100:.{digits}f}")


def percent_pair(value, threshold) -> tuple[str, str]:
    """``value`` and ``threshold`` as percents at one precision: one decimal, or as many more as it
    takes for their order to read right (0.0923 against 0.092372 → '9.23%', '9.24%', never '9.23%'
    against '9.2%'; 0.0929 against 0.09267 → '9.29%', '9.27%', never '9.29%' against '9.3%'). Equal
    values read equal. The one format of a score beside its threshold: the result page, the case
    page, the report and the flag reasons."""
    if value is None or value == "" or threshold is None or threshold == "":
        return percent(value), percent(threshold)
    v, t = float(value), float(threshold)
    digits = 1
    if v != t:
        digits = next((d for d in range(1, MAX_DIGITS + 1)
                       if (_shown(v, d) < _shown(t, d) if v < t else _shown(v, d) > _shown(t, d))), MAX_DIGITS)
    return percent(v, digits), percent(t, digits)


@register.filter
def percent_against(value, threshold) -> str:
    """``value`` as a percent at the precision of ``percent_pair``: 0.4996 against 0.5 → '49.96%',
    never '50.0%'."""
    return percent_pair(value, threshold)[0]


@register.filter
def threshold_against(threshold, value) -> str:
    """``threshold`` as a percent at the precision its score is shown with (``percent_pair``)."""
    return percent_pair(value, threshold)[1]
