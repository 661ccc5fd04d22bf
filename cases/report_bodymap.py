"""The body map in the PDF report: the front and back outlines of cases.body_map (the geometry
the case page's map uses), the lesion's ISIC site shaded, and the point the clinician marked.

Drawn with ReportLab's vector graphics, so it prints sharply and needs no image files. The map's
coordinates run downwards from the top (SVG); ReportLab's run upwards, hence the flips below.
"""
from __future__ import annotations

from dataclasses import dataclass

from reportlab.graphics.shapes import Circle, Drawing, Rect, String
from reportlab.lib import colors

SKIN = colors.HexColor("#eeeeee")
EDGE = colors.HexColor("#888888")
SITE = colors.HexColor("#f4a259")
SITE_EDGE = colors.HexColor("#b5651d")
MARK = colors.HexColor("#c0392b")
CAPTION = colors.HexColor("#444444")
CAPTION_H = 10.0  # points under the figures for "Front" / "Back"


@dataclass(frozen=True)
class MapPoint:
    """Where the clinician marked the lesion: "front" or "back", x and y in 0..1 from top left."""

    view: str
    x: float
    y: float


def map_point_of(lesion) -> MapPoint | None:
    """The marked point of the lesion's patient record, if it has one (lesions placed from the
    list, and records from before the body map, have none)."""
    tracked = getattr(lesion, "tracked", None)
    view = getattr(tracked, "map_view", "") if tracked is not None else ""
    x, y = getattr(tracked, "map_x", None), getattr(tracked, "map_y", None)
    if view not in ("front", "back") or x is None or y is None:
        return None
    return MapPoint(view=view, x=float(x), y=float(y))


def _geometry():
    """cases.body_map, or None where this checkout has no body map (the report then says the
    site in words only)."""
    try:
        from cases import body_map
    except ImportError:
        return None
    return body_map


def _region_shape(region, x0: float, scale: float, fig_h: float, shaded: bool):
    fill, edge = (SITE, SITE_EDGE) if shaded else (SKIN, EDGE)
    if region.shape == "circle":
        cx, cy, r = region.coords
        return Circle(x0 + cx * scale, CAPTION_H + (fig_h - cy) * scale, r * scale,
                      fillColor=fill, strokeColor=edge, strokeWidth=0.6)
    x, y, w, h = region.coords
    return Rect(x0 + x * scale, CAPTION_H + (fig_h - y - h) * scale, w * scale, h * scale,
                fillColor=fill, strokeColor=edge, strokeWidth=0.6)


def _figure(drawing: Drawing, geometry, view: str, site: str, x0: float, scale: float) -> None:
    """One outline with the site's regions shaded, captioned with the patient's right and left."""
    regions = [r for r in geometry.REGIONS if r.view == view]
    for region in regions:  # shaded ones last, so their edges are not drawn over
        if region.site != site:
            drawing.add(_region_shape(region, x0, scale, geometry.FIGURE_H, shaded=False))
    for region in regions:
        if region.site == site:
            drawing.add(_region_shape(region, x0, scale, geometry.FIGURE_H, shaded=True))
    width = geometry.FIGURE_W * scale
    drawing.add(String(x0 + width / 2, 1, view.capitalize(), fontSize=7, textAnchor="middle", fillColor=CAPTION))
    # seen from the front, the patient's right is on the viewer's left
    left, right = ("R", "L") if view == "front" else ("L", "R")
    drawing.add(String(x0 + 4, 1, left, fontSize=6, fillColor=EDGE))
    drawing.add(String(x0 + width - 4, 1, right, fontSize=6, textAnchor="end", fillColor=EDGE))


def _marker(drawing: Drawing, point: MapPoint, x0: float, scale: float, geometry) -> None:
    cx = x0 + point.x * geometry.FIGURE_W * scale
    cy = CAPTION_H + (1.0 - point.y) * geometry.FIGURE_H * scale
    drawing.add(Circle(cx, cy, 3.2, fillColor=None, strokeColor=MARK, strokeWidth=1.2))
    drawing.add(Circle(cx, cy, 1.2, fillColor=MARK, strokeColor=MARK, strokeWidth=0))


def body_map(site: str, point: MapPoint | None = None, *, height: float = 140.0) -> Drawing | None:
    """Front and back outlines, ``height`` points tall, with ``site`` shaded and ``point`` marked;
    None without a body-map geometry."""
    geometry = _geometry()
    if geometry is None:
        return None
    scale = (height - CAPTION_H) / geometry.FIGURE_H
    gap = 8.0
    figure_w = geometry.FIGURE_W * scale
    drawing = Drawing(2 * figure_w + gap, height)
    origins = {"front": 0.0, "back": figure_w + gap}
    for view, x0 in origins.items():
        _figure(drawing, geometry, view, site, x0, scale)
    if point is not None and point.view in origins:
        _marker(drawing, point, origins[point.view], scale, geometry)
    return drawing
