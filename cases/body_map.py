"""The body map: front and back outlines as simple shapes, each a region with its ISIC site group.

One geometry serves the clickable map on the lesion form, the patient's map of all lesions and
the PDF report. Coordinates are in one figure's box (FIGURE_W x FIGURE_H); a point is stored as
fractions of that box. Left/right is the patient's: on the front view the patient's right is on
the viewer's left, on the back view it is on the viewer's right.
"""
from __future__ import annotations

from dataclasses import dataclass

FIGURE_W, FIGURE_H = 180, 400
GAP = 30  # between the front and back figures in the combined SVG
MIDLINE_BAND = 5  # points this close to the vertical midline are "midline"
EDGE_TOLERANCE = 3  # a click this close to a region (its drawn outline) counts as on it
# this close to the midline a click cannot tell the patient's side reliably: the side given is kept
SIDE_AMBIGUOUS_BAND = 12


@dataclass(frozen=True)
class Region:
    view: str  # "front" or "back"
    site: str  # ISIC site group (cases.models.Lesion.Site value)
    name: str  # what a screen reader says
    shape: str  # "circle" (cx, cy, r) or "rect" (x, y, w, h)
    coords: tuple[float, ...]

    @property
    def centre(self) -> tuple[float, float]:
        if self.shape == "circle":
            return self.coords[0], self.coords[1]
        x, y, w, h = self.coords
        return x + w / 2, y + h / 2

    def contains(self, x: float, y: float) -> bool:
        if self.shape == "circle":
            cx, cy, r = self.coords
            return (x - cx) ** 2 + (y - cy) ** 2 <= r * r
        rx, ry, w, h = self.coords
        return rx <= x <= rx + w and ry <= y <= ry + h


def _figure(view: str) -> list[Region]:
    torso = "anterior torso" if view == "front" else "posterior torso"
    hands = "palms/soles" if view == "front" else "upper extremity"  # palms face forward
    feet = "lower extremity" if view == "front" else "palms/soles"  # soles face back
    first, second = ("right", "left") if view == "front" else ("left", "right")  # viewer's left, right
    regions = [
        Region(view, "head/neck", "head and neck", "circle", (90, 34, 24)),
        Region(view, "head/neck", "neck", "rect", (80, 56, 20, 16)),
        Region(view, "lateral torso", f"{first} side of the torso", "rect", (52, 72, 9, 126)),
        Region(view, torso, torso, "rect", (61, 72, 58, 126)),
        Region(view, "lateral torso", f"{second} side of the torso", "rect", (119, 72, 9, 126)),
        Region(view, "upper extremity", f"{first} arm", "rect", (28, 74, 22, 136)),
        Region(view, "upper extremity", f"{second} arm", "rect", (130, 74, 22, 136)),
        Region(view, hands, f"{first} hand", "rect", (26, 212, 26, 28)),
        Region(view, hands, f"{second} hand", "rect", (128, 212, 26, 28)),
        Region(view, "lower extremity", f"{first} leg", "rect", (58, 200, 31, 168)),
        Region(view, "lower extremity", f"{second} leg", "rect", (91, 200, 31, 168)),
        Region(view, feet, f"{first} foot", "rect", (54, 370, 35, 20)),
        Region(view, feet, f"{second} foot", "rect", (91, 370, 35, 20)),
    ]
    if view == "front":
        regions.insert(4, Region(view, "oral/genital", "genital area", "rect", (80, 186, 20, 14)))
    return regions


REGIONS: list[Region] = _figure("front") + _figure("back")


def region_at(view: str, x: float, y: float) -> Region | None:
    """The region under a point (figure coordinates); the smallest one wins where shapes touch."""
    hits = [r for r in REGIONS if r.view == view and r.contains(x, y)]
    return min(hits, key=lambda r: r.coords[2] * (r.coords[3] if r.shape == "rect" else r.coords[2]), default=None)


def regions_near(view: str, x: float, y: float, tolerance: float = EDGE_TOLERANCE) -> list[Region]:
    """Every region within ``tolerance`` of a point (figure coordinates): a click on an outline's
    edge (or where two regions meet) may belong to either side of it."""
    def near(region: Region) -> bool:
        if region.shape == "circle":
            cx, cy, r = region.coords
            return (x - cx) ** 2 + (y - cy) ** 2 <= (r + tolerance) ** 2
        rx, ry, w, h = region.coords
        return rx - tolerance <= x <= rx + w + tolerance and ry - tolerance <= y <= ry + h + tolerance
    return [r for r in REGIONS if r.view == view and near(r)]


def point_region(view: str, fx: float, fy: float) -> Region | None:
    """The region a point (fractions of one figure) is on, allowing for a click on an edge."""
    x, y = fx * FIGURE_W, fy * FIGURE_H
    return region_at(view, x, y) or next(iter(regions_near(view, x, y)), None)


def describe(region: Region) -> str:
    """A region as the error messages name it: "back view, right arm (site “upper extremity”)"."""
    return f"{region.view} view, {region.name} (site “{region.site}”)"


OFF_OUTLINE = "The point is not on the body outline: click on the figure where the lesion is."


def site_problem(view: str, fx: float, fy: float, site: str) -> str | None:
    """Why a body-map point contradicts the anatomic site recorded with it, or None when they
    agree. The point and the site the model reads must never disagree."""
    near = regions_near(view, fx * FIGURE_W, fy * FIGURE_H)
    if not near:
        return OFF_OUTLINE
    if site in {r.site for r in near}:
        return None
    return (f"The point on the body map is on the {describe(point_region(view, fx, fy))}, but the site given is "
            f"“{site}”. Click the map where the lesion is, or choose the site that matches the point.")


def side_problem(view: str, fx: float, side: str) -> str | None:
    """Why a body-map point contradicts the patient's side recorded with it, or None. Near the
    midline a click cannot tell the side, and the side given stands."""
    x = fx * FIGURE_W
    if not side or abs(x - FIGURE_W / 2) <= SIDE_AMBIGUOUS_BAND or side == side_at(view, x):
        return None
    return (f"The point on the body map is on the patient's {side_at(view, x)}, but the side given is “{side}”. "
            f"Click the map again, or choose the side that matches the point.")


def side_at(view: str, x: float) -> str:
    """The patient's side of a point: "left", "right" or "midline"."""
    if abs(x - FIGURE_W / 2) <= MIDLINE_BAND:
        return "midline"
    viewer_left = x < FIGURE_W / 2
    if view == "front":
        return "right" if viewer_left else "left"
    return "left" if viewer_left else "right"


def offset(view: str) -> float:
    """x offset of a figure in the combined SVG (front left, back right)."""
    return 0.0 if view == "front" else FIGURE_W + GAP


SVG_WIDTH = 2 * FIGURE_W + GAP


@dataclass(frozen=True)
class Marker:
    """A lesion drawn on the map."""

    x: float  # combined-SVG coordinates
    y: float
    label: str
    status: str
    title: str
    url: str


def drawn_regions() -> list[dict]:
    """Each region with its shape in combined-SVG coordinates, for the template."""
    rows = []
    for region in REGIONS:
        dx = offset(region.view)
        if region.shape == "circle":
            cx, cy, r = region.coords
            shape = {"cx": cx + dx, "cy": cy, "r": r}
        else:
            x, y, w, h = region.coords
            shape = {"x": x + dx, "y": y, "w": w, "h": h}
        cx, cy = region.centre
        rows.append({"region": region, "shape": region.shape, **shape,
                     "centre_x": (cx) / FIGURE_W, "centre_y": cy / FIGURE_H,
                     "side": side_at(region.view, cx)})
    return rows


def marker_position(view: str, fx: float, fy: float) -> tuple[float, float]:
    """Stored fractions of one figure -> combined-SVG coordinates."""
    return offset(view) + fx * FIGURE_W, fy * FIGURE_H


def svg_context(markers: list[Marker] | None = None, *, interactive: bool = False, clearable: bool = False) -> dict:
    """Everything templates/cases/partials/body_map.html needs (``clearable``: the form's point is
    optional, and a button takes it off again)."""
    return {"regions": drawn_regions(), "markers": markers or [], "interactive": interactive, "clearable": clearable,
            "width": SVG_WIDTH, "height": FIGURE_H, "figure_w": FIGURE_W, "back_x": offset("back"),
            "label_y": FIGURE_H - 2}
