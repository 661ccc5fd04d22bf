"""Lesions followed over visits (sequential dermoscopy): each patient lesion's timeline, what
changed between visits, and its status on the body map. Read-only; no Django views here."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from django.conf import settings
from django.db.models import Count, Prefetch, Q, QuerySet

from cases.models import Lesion, LesionImage, Outcome, PatientLesion, Prediction, Review
from mlcore.labels import MALIGNANT_CLASSES
from cases.roles import display_name
from cases.templatetags.cases_extras import percent

BENIGN_DIAGNOSES = {"nevus", "seborrheic keratosis", "pigmented benign keratosis", "dermatofibroma",
                    "vascular lesion"}


def earlier_visits(lesion: Lesion) -> QuerySet[Lesion]:
    """The same patient lesion at visits before this one (by visit date, then by when opened)."""
    if lesion.tracked_id is None:
        return Lesion.objects.none()
    return Lesion.objects.filter(_before(lesion.case), tracked_id=lesion.tracked_id).exclude(pk=lesion.pk)


def _before(case) -> Q:
    """Lesions seen at visits before ``case``'s."""
    return Q(case__visit_date__lt=case.visit_date) | Q(case__visit_date=case.visit_date,
                                                        case__created_at__lt=case.created_at)


def earlier_visit_counts(case, lesions: Sequence[Lesion]) -> dict[int, int]:
    """``earlier_visits(lesion).count()`` by lesion id for ``lesions`` of ``case``, in one query
    (a patient lesion is seen at most once per visit: its id tells which of them a row counts for);
    a lesion missing from the result has none."""
    by_tracked = {lesion.tracked_id: lesion.pk for lesion in lesions if lesion.tracked_id is not None}
    if not by_tracked:
        return {}
    rows = (Lesion.objects.filter(_before(case), tracked_id__in=by_tracked).exclude(pk__in=by_tracked.values())
            .order_by().values("tracked_id").annotate(n=Count("pk")))
    return {by_tracked[row["tracked_id"]]: row["n"] for row in rows}


def latest_scored(image: LesionImage) -> Prediction | None:
    """The image's current prediction (``LesionImage.current_prediction``), if it is done (from a
    prefetched ``predictions``)."""
    latest = image.current_prediction()
    return latest if latest is not None and latest.status == Prediction.Status.DONE else None


@dataclass
class Visit:
    """One visit's record of the lesion, as the timeline shows it."""

    lesion: Lesion
    images: list[LesionImage]
    melanoma: float | None  # the highest melanoma probability of its assessable, scored images
    cannot_assess: bool
    versions: frozenset[str]  # the model versions whose scores ``melanoma`` is the highest of
    review: Review | None
    # every image's result in force is finished (``latest_scored``): no score waits, runs, failed
    # or is missing, so ``melanoma`` is the visit's score and not that of only some of its images
    complete: bool = True
    # an image's prediction in force failed (as the body map's "scoring-failed"): the visit says
    # so, with the way to retry, never "not scored yet" as if a worker were still on it
    scoring_failed: bool = False
    changed_reasons: list[str] = field(default_factory=list)
    # the image ``melanoma`` is the score of (the first image when none has one): a picture shown
    # beside the visit's score must be the one scored so
    shown_image: LesionImage | None = None

    @property
    def changed(self) -> bool:
        return bool(self.changed_reasons)


def timeline(tracked: PatientLesion, visible: QuerySet[Lesion]) -> list[Visit]:
    """The patient lesion's visits that ``visible`` allows, oldest first, each with its score and
    a "changed" marker: the score rose by more than FOLLOW_UP_SCORE_RISE since the most recent
    earlier visit with a comparable score (``_baseline``), or the dermatologist recorded a change."""
    predictions = Prediction.objects.select_related("model_version")
    images = LesionImage.objects.prefetch_related(Prefetch("predictions", queryset=predictions)).order_by("pk")
    lesions = (visible.filter(tracked=tracked).select_related("case")
               .prefetch_related(Prefetch("images", queryset=images), "reviews__reviewer", "outcomes")
               .order_by("case__visit_date", "case__created_at", "pk"))
    visits: list[Visit] = []
    for lesion in lesions:
        pictures = list(lesion.images.all())
        current = [i.current_prediction() for i in pictures]
        finished = [p if p is not None and p.status == Prediction.Status.DONE else None for p in current]
        scored = [p for p in finished if p is not None]
        assessable = [(p.melanoma_probability, image) for image, p in zip(pictures, finished)
                      if p is not None and p.assessable]
        highest = max(assessable, key=lambda pair: pair[0], default=None)  # the first image of a tie
        reviews = sorted(lesion.reviews.all(), key=lambda r: r.created_at)
        visit = Visit(lesion=lesion, images=pictures, melanoma=highest[0] if highest else None,
                      cannot_assess=any(not p.assessable for p in scored),
                      versions=frozenset(p.model_version.version for p in scored if p.assessable),
                      review=reviews[-1] if reviews else None, complete=len(scored) == len(finished),
                      scoring_failed=any(p is not None and p.status == Prediction.Status.FAILED for p in current),
                      shown_image=highest[1] if highest else next(iter(pictures), None))
        visit.changed_reasons = _changes(_baseline(visits, visit), visit)
        visits.append(visit)
    return visits


def scoring_versions(visits: list[Visit]) -> list[tuple[str, float | None]]:
    """(version, melanoma threshold) of the model versions whose scores the timeline plots, in
    the order of the visits: scores and thresholds of different versions are not on one scale."""
    seen: dict[str, float | None] = {}
    for visit in visits:
        for image in visit.images:
            prediction = latest_scored(image)
            if prediction is not None and prediction.assessable:
                seen.setdefault(prediction.model_version.version, prediction.model_version.melanoma_threshold)
    return list(seen.items())


def _comparable(visit: Visit) -> bool:
    """Whether the visit's score may be compared with another visit's. An image still waiting or
    running, or whose scoring failed (or that has no prediction at all), leaves the visit partly
    judged: its highest score is not the visit's, neither as the baseline nor as the later
    score. A failed image counts like a pending one, as the body map says of it ("scoring
    failed: retry the image": the others' scores do not clear the lesion); once retried, the
    visit is compared. An image the model could not assess (a clinical photo, a blurred image)
    is finished: the visit's score is that of its assessable images, as the timeline shows."""
    return visit.complete and visit.melanoma is not None and len(visit.versions) == 1


def _baseline(earlier: list[Visit], visit: Visit) -> Visit | None:
    """The visit to compare ``visit``'s score with: the most recent earlier one with a comparable
    score of the same single model version. Visits between them without such a score (only a
    clinical photo or a blurred image, scoring unfinished, another version) are passed over, so
    that a rise across them is still marked."""
    if not _comparable(visit):
        return None
    return next((v for v in reversed(earlier) if _comparable(v) and v.versions == visit.versions), None)


def _changes(previous: Visit | None, visit: Visit) -> list[str]:
    reasons = []
    rise = settings.FOLLOW_UP_SCORE_RISE
    # scores of different model versions are not on one scale: a rise between them says nothing
    comparable = previous is not None and len(previous.versions | visit.versions) == 1
    if comparable and previous.melanoma is not None and visit.melanoma is not None:
        if visit.melanoma - previous.melanoma > rise:
            reasons.append(f"melanoma probability rose from {percent(previous.melanoma)} to {percent(visit.melanoma)} "
                           f"(+{_points(visit.melanoma - previous.melanoma, rise)} points; marked above "
                           f"{rise_points(rise)} points) since {previous.lesion.case.visit_date:%Y-%m-%d}")
    if visit.review is not None and visit.review.lesion_changed:
        reasons.append(f"{display_name(visit.review.reviewer)} recorded a change")
    return reasons


def rise_points(rise: float) -> str:
    """FOLLOW_UP_SCORE_RISE in percentage points, without trailing zeros: 0.1 → "10", 0.125 → "12.5"."""
    return f"{rise * 100:.1f}".rstrip("0").rstrip(".")


def _points(difference: float, rise: float) -> str:
    """A rise in percentage points, one decimal, with more (up to 3) where one would read as equal
    to the mark it exceeds: 0.1004 against 0.10 → "10.04", never "10.0"."""
    for digits in (1, 2, 3):
        text = f"{difference * 100:.{digits}f}"
        if float(text) != round(rise * 100, digits):
            break
    return text


@dataclass(frozen=True)
class PlotPoint:
    x: float
    y: float
    label: str
    value: float
    changed: bool


def score_plot(visits: list[Visit], *, width: int = 320, height: int = 120, pad: int = 24) -> dict:
    """Coordinates of a small SVG line plot of the melanoma probability per visit (0..1 on y)."""
    scored = [v for v in visits if v.melanoma is not None]
    span = max(len(scored) - 1, 1)
    points = [PlotPoint(x=pad + i * (width - 2 * pad) / span, y=height - pad - v.melanoma * (height - 2 * pad),
                        label=f"{v.lesion.case.visit_date:%Y-%m-%d}", value=v.melanoma, changed=v.changed)
              for i, v in enumerate(scored)]
    return {"width": width, "height": height, "pad": pad, "points": points,
            "polyline": " ".join(f"{p.x:.1f},{p.y:.1f}" for p in points),
            "y_for": {"0": height - pad, "50": height / 2, "100": pad}}


def current_result(lesion: Lesion) -> Outcome | None:
    """The lesion's histopathology result in force, from a prefetched ``outcomes`` (the one no
    later result supersedes; ``cases.outcomes.current_outcome`` without a query)."""
    outcomes = list(lesion.outcomes.all())
    superseded = {o.supersedes_id for o in outcomes}
    return max((o for o in outcomes if o.pk not in superseded), key=lambda o: (o.entered_at, o.pk), default=None)


def status(tracked: PatientLesion, visits: Sequence[Lesion]) -> str:
    """The lesion's status on the body map, from its visible visits (oldest first, with prefetched
    ``outcomes``, ``reviews`` and ``images__predictions``). A histopathology result comes first,
    whatever the model or the review said (malignant, benign or another diagnosis): the newest
    one in force at any visit, as a result is entered at the visit of the excision or biopsy and a
    later visit (the scar, say) does not undo it. Then flagged (a visit waits for a
    dermatologist) or in review (every waiting visit is claimed), whichever visit it is. Then the
    latest visit: reviewed: benign (a dermatologist's benign diagnosis with reassurance or
    follow-up), reviewed (any other review, an excision or biopsy advised included), not flagged
    (every image scored below the thresholds, never reviewed: the model never says "benign"),
    scoring failed (an image's current prediction, `LesionImage.current_prediction`, failed) or
    not scored (an image still waits for its score, or there is none). An image uploaded after
    the latest review whose scoring failed or is unfinished outranks the review: nobody has
    judged it."""
    if not visits:
        return "not-scored"
    results = [r for r in map(current_result, visits) if r is not None]
    result = max(results, key=lambda o: (o.diagnosis_date, o.entered_at, o.pk), default=None)
    if result is not None:
        if result.diagnosis in MALIGNANT_CLASSES:
            return "histo-malignant"
        return "histo-benign" if result.diagnosis in BENIGN_DIAGNOSES else "histo-other"
    waiting = [v for v in visits if v.awaiting_review]
    if waiting:
        return "in-review" if all(v.case.claimed_by_id for v in waiting) else "flagged"
    latest = visits[-1]
    images = list(latest.images.all())
    review = max(latest.reviews.all(), key=lambda r: r.created_at, default=None)
    if review is not None:
        unseen = _unjudged([i for i in images if i.uploaded_at > review.created_at])
        if unseen is not None:
            return unseen
        reassured = review.management in (Review.Management.REASSURE, Review.Management.FOLLOW_UP)
        return "benign" if review.final_diagnosis in BENIGN_DIAGNOSES and reassured else "reviewed"
    if not images:
        return "not-scored"
    return _unjudged(images) or ("flagged" if latest.flagged else "not-flagged")


def _unjudged(images: list[LesionImage]) -> str | None:
    """The status when one of ``images`` has no finished score ("scoring-failed" or "not-scored"),
    else None: one image unjudged, the others' scores (or a review that never saw it) do not
    clear the lesion."""
    newest = [image.current_prediction() for image in images]
    if any(p is not None and p.status == Prediction.Status.FAILED for p in newest):
        return "scoring-failed"
    if any(p is None or p.status != Prediction.Status.DONE for p in newest):
        return "not-scored"
    return None


STATUS_LABELS = {"histo-malignant": "Histopathology: malignant", "histo-benign": "Histopathology: benign",
                 "histo-other": "Histopathology: other diagnosis", "flagged": "Flagged, awaiting review", "in-review": "In review", "reviewed": "Reviewed",
                 "benign": "Reviewed: benign", "not-flagged": "Not flagged",
                 "scoring-failed": "Scoring failed: retry the image", "not-scored": "Not scored yet"}


@dataclass
class MapLesion:
    tracked: PatientLesion
    latest: Lesion | None
    status: str
    visit_count: int

    @property
    def status_label(self) -> str:
        return STATUS_LABELS[self.status]


def patient_map(patient, visible: QuerySet[Lesion]) -> list[MapLesion]:
    """Every patient lesion with at least one visible visit, for the map and its list."""
    # the version joined: current_prediction() asks it of an unfinished re-score (one query per image otherwise)
    predictions = Prediction.objects.select_related("model_version").order_by()
    lesions = (visible.filter(case__patient=patient).select_related("case", "tracked")
               .prefetch_related("reviews", "outcomes", Prefetch("images__predictions", queryset=predictions))
               .order_by("case__visit_date", "case__created_at", "pk"))
    by_tracked: dict[int, list[Lesion]] = {}
    for lesion in lesions:
        if lesion.tracked_id is not None:
            by_tracked.setdefault(lesion.tracked_id, []).append(lesion)
    tracked = PatientLesion.objects.filter(pk__in=by_tracked).order_by("number")
    return [MapLesion(tracked=t, latest=by_tracked[t.pk][-1], status=status(t, by_tracked[t.pk]),
                      visit_count=len(by_tracked[t.pk])) for t in tracked]
