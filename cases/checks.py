"""System checks of the clinical records app, run by ``manage.py check`` (``--deploy`` for the
deployment ones)."""
from __future__ import annotations

from typing import Any

from django.core import checks


def report_font(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """Warn when the PDF report would fall back to Helvetica: it prints every character outside
    Windows-1252 (a name in Greek, Cyrillic or Chinese, say) as "?"."""
    from cases import report_style  # ReportLab is loaded only when the check runs

    if report_style.report_fonts().unicode:
        return []
    return [checks.Warning(
        "DejaVu Sans was not found: PDF reports fall back to Helvetica, which prints characters outside "
        "Windows-1252 (names in Greek, Cyrillic or Chinese script, for instance) as \"?\".",
        hint="Install DejaVu Sans (Debian/Ubuntu: apt-get install fonts-dejavu-core fonts-dejavu-extra; the "
             "oblique faces are in fonts-dejavu-extra), or set the SECONDLOOK_REPORT_FONT_DIR setting to a folder "
             "holding DejaVuSans.ttf, DejaVuSans-Bold.ttf, DejaVuSans-Oblique.ttf and DejaVuSans-BoldOblique.ttf.",
        id="cases.W001",
    )]
