"""Monitoring of the model in use, per ISO week and clinic, with a drift alert (admin page).

Each figure counts under the ISO week (local time, Monday first) of what it measures:

- uploads: images uploaded that week;
- scored: those images with a finished score, each counted once with its *latest* finished
  prediction (a re-score replaces the earlier one, so after a new version is activated and every
  image re-scored, past weeks and the reference are that version's scores too);
- flag rate = flagged / scored; abstentions = not assessable / scored (an image the model could
  not assess is also flagged: it goes to the dermatologists, so it counts in the flag rate);
- PSI: population stability index of the melanoma probabilities of the scored images the model
  could assess (a clinical photo or an image it could not assess has no score to compare) against
  the reference's, over the 10 fixed bins [0, 0.1), …, [0.9, 1.0]:
  ``PSI = Σ_i (c_i − r_i) · ln(c_i / r_i)``, with c_i and r_i the shares of the week's and of the
  reference's scores in bin i, each floored at ε = 1e-4 (an empty bin would make the log infinite);
- agreement: share of the reviews signed that week (an amended review counts as its amendment)
  whose agreement with the AI flag is "agree";
- sensitivity / specificity on confirmed outcomes: lesions with a histopathology result, under the
  week of their first upload (the model's call being judged), truth "melanoma" against the model's
  own flag (any image of the lesion it could assess flagged by its latest score); other diagnoses,
  "other" included, are negatives. A lesion with no image the model could assess went to review on
  a forced flag, not the model's call: it is counted apart (melanomas / non-melanomas not
  assessed), in neither rate. Counts come with every rate.

Reference. The score distribution is compared with the model version's validation
split: its metrics carry ``melanoma_probability_histogram`` (10 counts on the bins above, written
by training, or for an older artifact by ``python -m training evaluate --split val
--record-reference``). A version without one falls back to production itself: each clinic's first
``MONITOR_REFERENCE_WEEKS`` weeks from its first upload (the pooled row: the first weeks of all
clinics in view). The flag-rate reference is always the production period, since referral
populations differ from the public sets.

Alert. For the latest complete week, after the reference period, with at least
``MONITOR_MIN_IMAGES`` scored images (and a reference of at least as many): an alert when
|flag rate − reference flag rate| > ``MONITOR_FLAG_RATE_BOUND`` or PSI > ``MONITOR_PSI_BOUND``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from typing import Iterable, Sequence

from django.conf import settings
from django.utils import timezone

from cases.models import Clinic, LesionImage, Outcome, Prediction, Review
from classifier.models import ModelVersion
from mlcore.labels import MELANOMA
from mlcore.scoring import SCORE_BINS, SCORE_HISTOGRAM_KEY, score_bin, score_histogram

BINS = SCORE_BINS
PSI_EPSILON = 1e-4
VALIDATION_HISTOGRAM_KEY = SCORE_HISTOGRAM_KEY
ALL_CLINICS = "All clinics in view"
CLINIC_PATH = "lesion__case__patient__clinic_id"


# --- weeks and bins ---------------------------------------------------------------------------

def week_of(moment: datetime | date) -> date:
    """The Monday of the ISO week of a moment (in the site's time zone) or a date."""
    day = timezone.localtime(moment).date() if isinstance(moment, datetime) else moment
    return day - timedelta(days=day.weekday())


def recent_weeks(count: int, today: date | None = None) -> list[date]:
    """Mondays of the last ``count`` ISO weeks, oldest first; the last is the current (incomplete) week."""
    current = week_of(today or timezone.localdate())
    return [current - timedelta(weeks=count - 1 - i) for i in range(count)]


def week_label(monday: date) -> str:
    year, week, _ = monday.isocalendar()
    return f"{year}-W{week:02d}"


def _start_of(day: date) -> datetime:
    return timezone.make_aware(datetime.combine(day, time.min))


bin_index = score_bin
histogram = score_histogram


def psi(reference: Sequence[float], current: Sequence[float], *, epsilon: float = PSI_EPSILON) -> float | None:
    """Population stability index of two histograms on the same bins (None when either is empty):
    Σ (c_i − r_i) · ln(c_i / r_i) over the shares, each floored at ``epsilon``."""
    r_total, c_total = sum(reference), sum(current)
    if r_total <= 0 or c_total <= 0:
        return None
    value = 0.0
    for r, c in zip(reference, current):
        r_share, c_share = max(r / r_total, epsilon), max(c / c_total, epsilon)
        value += (c_share - r_share) * math.log(c_share / r_share)
    return value


def _rate(part: int, whole: int) -> float | None:
    return part / whole if whole else None


# --- per-week figures -------------------------------------------------------------------------

@dataclass
class WeekStats:
    """One ISO week of one clinic (``clinic_id`` None: all clinics in view)."""

    week: date
    clinic_id: int | None
    clinic: str
    uploads: int = 0
    scored: int = 0
    flagged: int = 0
    not_assessable: int = 0
    histogram: list[int] = field(default_factory=lambda: [0] * BINS)
    reviews: int = 0
    agreed: int = 0
    true_positive: int = 0
    false_negative: int = 0
    true_negative: int = 0
    false_positive: int = 0
    melanomas_not_assessed: int = 0
    non_melanomas_not_assessed: int = 0
    psi: float | None = None

    @property
    def label(self) -> str:
        return week_label(self.week)

    @property
    def flag_rate(self) -> float | None:
        return _rate(self.flagged, self.scored)

    @property
    def abstention_rate(self) -> float | None:
        return _rate(self.not_assessable, self.scored)

    @property
    def agreement_rate(self) -> float | None:
        return _rate(self.agreed, self.reviews)

    @property
    def melanomas(self) -> int:
        return self.true_positive + self.false_negative

    @property
    def non_melanomas(self) -> int:
        return self.true_negative + self.false_positive

    @property
    def sensitivity(self) -> float | None:
        return _rate(self.true_positive, self.melanomas)

    @property
    def specificity(self) -> float | None:
        return _rate(self.true_negative, self.non_melanomas)

    def add_score(self, score: dict) -> None:
        self.scored += 1
        self.flagged += bool(score["flagged"])
        self.not_assessable += not score["assessable"]
        if score["assessable"]:
            self.histogram[bin_index(score["melanoma_probability"])] += 1

    def add_outcome(self, *, melanoma: bool, flagged: bool | None) -> None:
        """``flagged`` None: no image of the lesion could be assessed (counted apart)."""
        if flagged is None:
            self.melanomas_not_assessed += melanoma
            self.non_melanomas_not_assessed += not melanoma
        elif melanoma:
            self.true_positive += flagged
            self.false_negative += not flagged
        else:
            self.false_positive += flagged
            self.true_negative += not flagged


def latest_scores(predictions) -> dict[int, dict]:
    """Per image id, its latest finished prediction (flag, assessable, melanoma probability, upload
    time, clinic, lesion), from a Prediction queryset."""
    rows = (predictions.filter(status=Prediction.Status.DONE).order_by("image_id", "created_at", "pk")
            .values("image_id", "flagged", "assessable", "melanoma_probability", "image__uploaded_at",
                    "image__lesion_id", f"image__{CLINIC_PATH}"))
    return {row["image_id"]: row for row in rows}  # later rows replace earlier ones


def _uploads(clinic_ids: Sequence[int], start: datetime, end: datetime):
    return LesionImage.objects.filter(**{f"{CLINIC_PATH}__in": clinic_ids}, uploaded_at__gte=start,
                                      uploaded_at__lt=end)


def _scores_between(clinic_ids: Sequence[int], start: datetime, end: datetime) -> dict[int, dict]:
    return latest_scores(Prediction.objects.filter(image__in=_uploads(clinic_ids, start, end)))


class _Table:
    """WeekStats per (week, clinic id), the pooled row under clinic id None."""

    def __init__(self, weeks: Sequence[date], clinics: Sequence[Clinic], pooled: bool) -> None:
        self.groups: list[tuple[int | None, str]] = [(c.pk, c.name) for c in clinics]
        if pooled:
            self.groups.append((None, ALL_CLINICS))
        self.rows = {(week, cid): WeekStats(week, cid, name) for week in weeks for cid, name in self.groups}
        self.pooled = pooled

    def targets(self, moment: datetime | date, clinic_id: int) -> list[WeekStats]:
        week = week_of(moment)
        keys = [(week, clinic_id)] + ([(week, None)] if self.pooled else [])
        return [self.rows[key] for key in keys if key in self.rows]


def _count_uploads(table: _Table, clinic_ids, start, end) -> None:
    for row in _uploads(clinic_ids, start, end).values("uploaded_at", CLINIC_PATH):
        for stats in table.targets(row["uploaded_at"], row[CLINIC_PATH]):
            stats.uploads += 1


def _count_scores(table: _Table, clinic_ids, start, end) -> None:
    for score in _scores_between(clinic_ids, start, end).values():
        for stats in table.targets(score["image__uploaded_at"], score[f"image__{CLINIC_PATH}"]):
            stats.add_score(score)


def _count_reviews(table: _Table, clinic_ids, start, end) -> None:
    reviews = Review.objects.filter(**{f"{CLINIC_PATH}__in": clinic_ids}, created_at__gte=start, created_at__lt=end,
                                    amended_by__isnull=True)
    for row in reviews.values("created_at", "agreement", CLINIC_PATH):
        for stats in table.targets(row["created_at"], row[CLINIC_PATH]):
            stats.reviews += 1
            stats.agreed += row["agreement"] == Review.Agreement.AGREE


def outcome_calls(clinic_ids: Sequence[int]) -> list[dict]:
    """Lesions with a current histopathology result and a finished score: clinic, first upload,
    truth (melanoma or not) and the model's call: any image it could assess flagged by its latest
    score; None when it could assess none of them (their flag only sent them to review)."""
    outcomes = (Outcome.objects.filter(superseded_by__isnull=True, **{f"{CLINIC_PATH}__in": clinic_ids})
                .values_list("lesion_id", "diagnosis"))
    truth = dict(outcomes)
    calls: dict[int, dict] = {}
    for score in latest_scores(Prediction.objects.filter(image__lesion_id__in=list(truth))).values():
        lesion_id = score["image__lesion_id"]
        call = calls.setdefault(lesion_id, {"lesion_id": lesion_id, "clinic_id": score[f"image__{CLINIC_PATH}"],
                                            "first_upload": score["image__uploaded_at"], "flagged": None,
                                            "melanoma": truth[lesion_id] == MELANOMA})
        call["first_upload"] = min(call["first_upload"], score["image__uploaded_at"])
        if score["assessable"]:
            call["flagged"] = bool(call["flagged"]) or bool(score["flagged"])
    return list(calls.values())


def _count_outcomes(table: _Table, clinic_ids) -> None:
    for call in outcome_calls(clinic_ids):
        for stats in table.targets(call["first_upload"], call["clinic_id"]):
            stats.add_outcome(melanoma=call["melanoma"], flagged=call["flagged"])


# --- reference and alert ----------------------------------------------------------------------

@dataclass
class Reference:
    """What a clinic's weeks are compared with: a production period's flag rate and histogram,
    or a validation histogram stored with the model version (PSI only)."""

    clinic_id: int | None
    weeks: tuple[date, ...]
    scored: int
    flagged: int
    histogram: list[int]
    source: str = "production"

    @property
    def flag_rate(self) -> float | None:
        return _rate(self.flagged, self.scored)

    @property
    def ends(self) -> date | None:
        """The first Monday after the production period (None: no uploads yet)."""
        return self.weeks[-1] + timedelta(weeks=1) if self.weeks else None

    @property
    def description(self) -> str:
        if not self.weeks:
            return "no uploads yet"
        period = f"{week_label(self.weeks[0])} to {week_label(self.weeks[-1])}"
        scores = "validation histogram of the model version" if self.source == "validation" else "the same weeks"
        return f"flag rate from {period} ({self.scored} scored images); score distribution from {scores}"


def production_reference(clinic_ids: Sequence[int], *, clinic_id: int | None, weeks: int) -> Reference:
    """The first ``weeks`` ISO weeks from the first upload of these clinics."""
    first = (LesionImage.objects.filter(**{f"{CLINIC_PATH}__in": clinic_ids}).order_by("uploaded_at")
             .values_list("uploaded_at", flat=True).first())
    if first is None:
        return Reference(clinic_id, (), 0, 0, [0] * BINS)
    start = week_of(first)
    period = tuple(start + timedelta(weeks=i) for i in range(weeks))
    scores = _scores_between(clinic_ids, _start_of(start), _start_of(start + timedelta(weeks=weeks))).values()
    return Reference(clinic_id, period, scored=len(scores), flagged=sum(bool(s["flagged"]) for s in scores),
                     histogram=histogram(s["melanoma_probability"] for s in scores if s["assessable"]))


def validation_histogram(version) -> list[int] | None:
    """The validation histogram a model version's metrics carry (10 counts), else None."""
    counts = (getattr(version, "metrics", None) or {}).get(VALIDATION_HISTOGRAM_KEY)
    if isinstance(counts, list) and len(counts) == BINS and all(isinstance(c, (int, float)) for c in counts):
        return list(counts)
    return None


@dataclass(frozen=True)
class Bounds:
    flag_rate: float
    psi: float
    min_images: int

    @classmethod
    def from_settings(cls) -> "Bounds":
        return cls(flag_rate=settings.MONITOR_FLAG_RATE_BOUND, psi=settings.MONITOR_PSI_BOUND,
                   min_images=settings.MONITOR_MIN_IMAGES)


@dataclass
class DriftCheck:
    """The alert rule applied to one clinic's latest complete week."""

    stats: WeekStats
    reference: Reference
    evaluated: bool
    reasons: tuple[str, ...] = ()
    note: str = ""

    @property
    def clinic(self) -> str:
        return self.stats.clinic

    @property
    def week(self) -> date:
        return self.stats.week

    @property
    def alert(self) -> bool:
        return bool(self.reasons)


def drift_check(stats: WeekStats, reference: Reference, bounds: Bounds) -> DriftCheck:
    """Alert when the week's flag rate or score distribution moved beyond the bounds. The flag
    rate needs the production reference period to be over (and large enough); the PSI against a
    stored validation histogram does not."""
    enough = max(bounds.min_images, 1)
    if stats.scored < enough:
        return DriftCheck(stats, reference, evaluated=False,
                          note=f"{stats.scored} scored images (the rule needs at least {enough})")
    production = reference.ends is not None and stats.week >= reference.ends and reference.scored >= enough
    if not production and reference.source != "validation":
        note = ("within the reference period" if reference.ends is None or stats.week < reference.ends
                else f"reference period has {reference.scored} scored images (needs {enough})")
        return DriftCheck(stats, reference, evaluated=False, note=note)
    reasons = []
    if production:
        change = stats.flag_rate - reference.flag_rate
        if abs(change) > bounds.flag_rate:
            reasons.append(f"flag rate {stats.flag_rate:.0%} vs {reference.flag_rate:.0%} in the reference period "
                           f"(change {change * 100:+.0f} points, bound ±{bounds.flag_rate * 100:.0f})")
    if stats.psi is not None and stats.psi > bounds.psi:
        reasons.append(f"score distribution shifted: PSI {stats.psi:.2f} > {bounds.psi:.2f}")
    note = "" if production else "flag rate not compared: the production reference period is not over"
    return DriftCheck(stats, reference, evaluated=True, reasons=tuple(reasons), note=note)


# --- the report -------------------------------------------------------------------------------

@dataclass
class MonitoringReport:
    weeks: list[date]
    groups: list[tuple[int | None, str]]
    rows: dict[tuple[date, int | None], WeekStats]
    references: dict[int | None, Reference]
    checks: list[DriftCheck]
    bounds: Bounds
    validation_reference: bool

    @property
    def latest_complete_week(self) -> date:
        return self.weeks[-2] if len(self.weeks) > 1 else self.weeks[-1] - timedelta(weeks=1)

    @property
    def alerts(self) -> list[DriftCheck]:
        return [check for check in self.checks if check.alert]

    def series(self, clinic_id: int | None) -> list[WeekStats]:
        """One group's weeks, oldest first."""
        return [self.rows[(week, clinic_id)] for week in self.weeks]

    def table(self) -> list[WeekStats]:
        """Newest week first, the clinics in order within it."""
        return [self.rows[(week, cid)] for week in reversed(self.weeks) for cid, _ in self.groups]


def _references(groups, clinic_ids: Sequence[int], validation: list[int] | None) -> dict[int | None, Reference]:
    """Each group's production reference; its histogram replaced by the validation one when stored."""
    references = {}
    for cid, _ in groups:
        scope = clinic_ids if cid is None else [cid]
        reference = production_reference(scope, clinic_id=cid, weeks=settings.MONITOR_REFERENCE_WEEKS)
        if validation is not None:
            reference.histogram, reference.source = validation, "validation"
        references[cid] = reference
    return references


def monitoring_report(clinics: Iterable[Clinic], *, today: date | None = None, weeks: int | None = None,
                      version=None) -> MonitoringReport:
    """The weekly figures, references and drift checks of these clinics (the admin's scope)."""
    clinics = list(clinics)
    clinic_ids = [c.pk for c in clinics]
    monday_list = recent_weeks(weeks or settings.MONITOR_WEEKS, today)
    start, end = _start_of(monday_list[0]), _start_of(monday_list[-1] + timedelta(weeks=1))
    table = _Table(monday_list, clinics, pooled=len(clinics) > 1)
    _count_uploads(table, clinic_ids, start, end)
    _count_scores(table, clinic_ids, start, end)
    _count_reviews(table, clinic_ids, start, end)
    _count_outcomes(table, clinic_ids)
    if version is None:  # read only: a monitoring page never registers the shipped model
        version = ModelVersion.objects.filter(status=ModelVersion.Status.ACTIVE).first()
    validation = validation_histogram(version)
    references = _references(table.groups, clinic_ids, validation)
    for stats in table.rows.values():
        stats.psi = psi(references[stats.clinic_id].histogram, stats.histogram)
    report = MonitoringReport(monday_list, table.groups, table.rows, references, [], Bounds.from_settings(),
                              validation_reference=validation is not None)
    latest = report.latest_complete_week
    report.checks = [drift_check(table.rows[(latest, cid)], references[cid], report.bounds)
                     for cid, _ in table.groups if (latest, cid) in table.rows]
    return report
