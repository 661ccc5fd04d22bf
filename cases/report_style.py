"""Fonts, text escaping and the building blocks (paragraphs, boxes, tables) of the PDF report.

Record text always goes through ``esc`` (or ``bold``) before it reaches ReportLab's paragraph
markup, so that a "<" or "&" in a clinical question is printed, never interpreted.
"""
from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Iterable
from xml.sax.saxutils import escape

from django.conf import settings
from django.utils import timezone

from cases.roles import display_name
from reportlab.lib import colors
from reportlab.lib.pagesizes import A4
from reportlab.lib.styles import ParagraphStyle, getSampleStyleSheet
from reportlab.lib.units import mm
from reportlab.pdfbase import pdfmetrics
from reportlab.pdfbase.ttfonts import TTFont
from reportlab.platypus import Flowable, Paragraph, Table, TableStyle

log = logging.getLogger(__name__)

MARGIN = 18 * mm
CONTENT_WIDTH = A4[0] - 2 * MARGIN

WARN_BG, WARN_EDGE = colors.HexColor("#fdecea"), colors.HexColor("#c0392b")
FLAG_BG, FLAG_EDGE = colors.HexColor("#fff4e5"), colors.HexColor("#b5651d")
RULE = colors.HexColor("#bbbbbb")
LABEL_BG = colors.HexColor("#f3f3f3")


# --- Fonts and text ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Fonts:
    regular: str
    bold: str
    italic: str
    unicode: bool  # False: the standard Type 1 fonts, which only know Windows-1252


DEJAVU = {"regular": "DejaVuSans.ttf", "bold": "DejaVuSans-Bold.ttf", "italic": "DejaVuSans-Oblique.ttf",
          "bold_italic": "DejaVuSans-BoldOblique.ttf"}


def _font_dirs() -> list[Path]:
    """Where DejaVu Sans may be: a configured folder, the system's, Matplotlib's copy."""
    dirs = [Path(p) for p in [getattr(settings, "SECONDLOOK_REPORT_FONT_DIR", "")] if p]
    dirs.append(Path("/usr/share/fonts/truetype/dejavu"))
    try:
        import importlib.util

        spec = importlib.util.find_spec("matplotlib")  # located, not imported (slow)
        if spec and spec.origin:
            dirs.append(Path(spec.origin).parent / "mpl-data" / "fonts" / "ttf")
    except (ImportError, ValueError):
        pass
    return dirs


@functools.lru_cache(maxsize=1)
def report_fonts() -> Fonts:
    """DejaVu Sans when found (flag reasons carry "≥", names may carry any script), else Helvetica."""
    from reportlab.lib.fonts import addMapping

    for folder in _font_dirs():
        paths = {k: folder / name for k, name in DEJAVU.items()}
        if not all(p.is_file() for p in paths.values()):
            continue
        try:
            names = {k: f"SL-DejaVu-{k}" for k in paths}
            for key, path in paths.items():
                pdfmetrics.registerFont(TTFont(names[key], str(path)))
            family = names["regular"]
            addMapping(family, 0, 0, names["regular"])
            addMapping(family, 1, 0, names["bold"])
            addMapping(family, 0, 1, names["italic"])
            addMapping(family, 1, 1, names["bold_italic"])
            return Fonts(regular=family, bold=names["bold"], italic=names["italic"], unicode=True)
        except Exception:  # a damaged font file must not stop the report
            log.warning("could not load the report font from %s", folder, exc_info=True)
    log.warning("DejaVu Sans not found: the PDF report falls back to Helvetica (Windows-1252 only)")
    return Fonts(regular="Helvetica", bold="Helvetica-Bold", italic="Helvetica-Oblique", unicode=False)


ASCII_STAND_INS = {"\u2265": ">=", "\u2264": "<=", "\u2212": "-", "\u2192": "->", "\u2009": " ", "\u202f": " "}


def plain(text: Any) -> str:
    """Text the chosen font can show: as is with DejaVu; otherwise outside Windows-1252 replaced."""
    text = "" if text is None else str(text)
    if report_fonts().unicode:
        return text
    text = "".join(ASCII_STAND_INS.get(ch, ch) for ch in text)
    return text.encode("cp1252", errors="replace").decode("cp1252")


def esc(text: Any) -> str:
    """Record text made safe for Paragraph markup (and for the font); line breaks kept."""
    return escape(plain(text)).replace("\n", "<br/>")


def bold(text: Any) -> str:
    return f"<b>{esc(text)}</b>"


@functools.lru_cache(maxsize=1)
def _styles() -> dict[str, ParagraphStyle]:
    fonts = report_fonts()
    base = getSampleStyleSheet()
    body = ParagraphStyle("SLBody", parent=base["BodyText"], fontName=fonts.regular, fontSize=9.5, leading=12.5)
    return {
        "body": body,
        "small": ParagraphStyle("SLSmall", parent=body, fontSize=8, leading=10, textColor=colors.HexColor("#444444")),
        "title": ParagraphStyle("SLTitle", parent=base["Title"], fontName=fonts.bold, fontSize=17, leading=21,
                                alignment=0, spaceAfter=4),
        "h2": ParagraphStyle("SLH2", parent=base["Heading2"], fontName=fonts.bold, fontSize=13, leading=16,
                             spaceBefore=10, spaceAfter=4, keepWithNext=1),
        "h3": ParagraphStyle("SLH3", parent=base["Heading3"], fontName=fonts.bold, fontSize=10.5, leading=13,
                             spaceBefore=7, spaceAfter=3, keepWithNext=1),
        "label": ParagraphStyle("SLLabel", parent=body, fontName=fonts.bold),
        "warn": ParagraphStyle("SLWarn", parent=body, fontName=fonts.bold, fontSize=11, leading=14,
                               textColor=WARN_EDGE),
        "bullet": ParagraphStyle("SLBullet", parent=body, leftIndent=12, bulletIndent=3,
                                 bulletFontName=fonts.regular),
    }


def para(markup: str, style: str = "body") -> Paragraph:
    """A paragraph of ready markup (callers escape record text with ``esc``/``bold``)."""
    return Paragraph(markup, _styles()[style])


def bullets(items: Iterable[str], style: str = "bullet") -> list[Paragraph]:
    return [Paragraph(esc(item), _styles()[style], bulletText="•") for item in items]


# --- Formatting ----------------------------------------------------------------------------------

def person(user) -> str:
    """A user as the pages name them: full name, else username."""
    return "the system" if user is None else display_name(user)


def when(moment: datetime | None) -> str:
    return timezone.localtime(moment).strftime("%Y-%m-%d %H:%M") if moment else "—"


# --- Boxes and tables ----------------------------------------------------------------------------

# splitInRow: a row taller than the space left (a long note, many line breaks) is split across
# pages, as its paragraphs allow, instead of failing the whole report with a LayoutError.

def boxed(flowables: list[Flowable], background, edge) -> Table:
    table = Table([[flowables]], colWidths=[CONTENT_WIDTH], splitInRow=1)
    table.setStyle(TableStyle([("BACKGROUND", (0, 0), (-1, -1), background), ("BOX", (0, 0), (-1, -1), 1, edge),
                               ("LEFTPADDING", (0, 0), (-1, -1), 6), ("RIGHTPADDING", (0, 0), (-1, -1), 6),
                               ("TOPPADDING", (0, 0), (-1, -1), 5), ("BOTTOMPADDING", (0, 0), (-1, -1), 5)]))
    return table


def facts_table(rows: list[tuple[str, str]], label_width: float = 42 * mm) -> Table:
    """Label/value rows; values are ready markup."""
    data = [[para(esc(label), "label"), para(value)] for label, value in rows]
    table = Table(data, colWidths=[label_width, CONTENT_WIDTH - label_width], splitInRow=1)
    table.setStyle(TableStyle([("VALIGN", (0, 0), (-1, -1), "TOP"), ("BACKGROUND", (0, 0), (0, -1), LABEL_BG),
                               ("LINEBELOW", (0, 0), (-1, -1), 0.25, RULE),
                               ("TOPPADDING", (0, 0), (-1, -1), 3), ("BOTTOMPADDING", (0, 0), (-1, -1), 3)]))
    return table


def grid(rows: list[list[str]], widths: list[float]) -> Table:
    """A table with a header row; cells are ready markup."""
    data = [[para(cell, "label" if r == 0 else "body") for cell in row] for r, row in enumerate(rows)]
    table = Table(data, colWidths=widths, repeatRows=1)
    table.setStyle(TableStyle([("VALIGN", (0, 0), (-1, -1), "TOP"), ("BACKGROUND", (0, 0), (-1, 0), LABEL_BG),
                               ("GRID", (0, 0), (-1, -1), 0.25, RULE),
                               ("TOPPADDING", (0, 0), (-1, -1), 3), ("BOTTOMPADDING", (0, 0), (-1, -1), 3)]))
    return table
