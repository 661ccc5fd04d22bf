"""Monitoring of the model in use, per ISO week and clinic, with a drift alert (admin page).

Which model version each figure is about:

- the score figures (scored, flag rate, abstentions, PSI, the drift alert and its reference) are
  those of ONE version: the active one unless the admin picks another. An image counts with that
  version's latest finished score of it; an image it has not scored is left out (and
  ``coverage`` says what share of the period's uploads it has scored), so an activation without
  re-scoring never shows up as drift, and the version's scores are compared with its own
  validation histogram;
- reviewer agreement and the outcome figures judge what happened in practice: the flags and calls
  made at the time, by whichever version was in use then (each outcome row names them).

Each figure counts under the ISO week (local time, Monday first) of what it measures:

- uploads: images uploaded that week;
- scored: those images with a finished score by the version, each counted once (its latest one);
- flag rate = flagged / scored; abstentions = not assessable / scored (an image the model could
  not assess is also flagged: it goes to the dermatologists, so it counts in the flag rate);
- lesion flag rate (what the alert compares) = lesions with a flagged image that week / lesions with
  a scored image that week (the images of one lesion are not independent trials);
- PSI: population stability index of the melanoma probabilities of the scored images the model
  could assess (a clinical photo or an image it could not assess has no score to compare) against
  the reference's, over the 10 fixed bins [0, 0.1), …, [0.9, 1.0]:
  ``PSI = Σ_i (c_i − r_i) · ln(c_i / r_i)``, with c_i and r_i the shares of the week's and of the
  reference's scores in bin i, each floored at ε = 1e-4 (an empty bin would make the log infinite);
- agreement: share of the reviews signed that week (an amended review counts as its amendment)
  whose agreement with the AI flag is "agree". Only reviews that saw a call the model itself made
  (an assessable score) count: a review whose lesion went to review only because the model could
  not assess its images (a forced flag, not a judgement) is counted apart, as scoring does not let
  such a score disagree with a review either (cases.scoring._store_result);
- outcomes (``outcome_calls``): histopathology results resolved per tracked lesion (the patient's
  lesion followed over visits: a result on any visit speaks for the lesion, which training labels
  narrow to the visits up to the excision (cases.training_labels); visits with disagreeing results
  are counted apart). The call judged
  is the one made in practice: each image's FIRST finished score (never a later re-score, which
  may come from a version trained on these very outcomes), at the earliest visit where the model
  could assess an image, among the visits up to the one of the latest result (as training labels
  do: a photo of the scar after the excision is no call on the lesion); flagged when any of that
  visit's assessable images was flagged. It counts
  under the week of that visit's first upload. Truth groups: melanoma, malignant (melanoma,
  basal cell carcinoma, squamous cell carcinoma, actinic keratosis: the classes of the malignancy
  score, mlcore.labels.MALIGNANT_CLASSES) and benign (the other classes). Melanoma sensitivity and
  malignant sensitivity count flagged / all; specificity counts benign lesions not flagged / all
  benign lesions, so a correctly flagged BCC is never a false positive. Counted apart, in no
  rate: lesions the model could assess at no visit (a forced flag), results without any scored
  image, visits with disagreeing results, and the result "other" (neither benign nor malignant
  known). PPV: malignant / flagged, among the flagged lesions with a result.
  Verification bias: these rates are among lesions WITH histopathology, and unflagged lesions are
  rarely excised, so sensitivity is overstated and specificity understated; the lesions the model
  judged (flagged or not) that have no result are counted (``unverified_calls``) and shown beside
  them.

Reference. The score distribution is compared with the model version's validation
split: its metrics carry ``melanoma_probability_histogram`` (10 counts on the bins above, written
by training, or for an older artifact by ``python -m training evaluate --split val
--record-reference``). A version without one falls back to production itself: the version's scores
of each clinic's first ``MONITOR_REFERENCE_WEEKS`` weeks from the first upload it scored (the
pooled row: of all clinics in view), extended week by week (in order, never into the week checked)
until it holds ``MONITOR_MIN_PSI_IMAGES`` assessable images. The flag-rate reference is always a
production period, since referral populations differ from the public sets: the same first weeks,
extended likewise until they hold ``MONITOR_MIN_IMAGES`` scored images.

Alert. For the latest complete week, after the reference period:

- flag rate, with at least ``MONITOR_MIN_IMAGES`` scored images (the reference holding as many):
  an alert when the lesion flag rate differs from the reference's by more than
  ``MONITOR_FLAG_RATE_BOUND`` (the smallest change that matters clinically) AND Fisher's exact
  two-sided test of the two lesion proportions gives p < 0.05 / the number of groups (clinics and
  the pooled row) whose flag rate is compared that week (Bonferroni). A bound alone alarmed in
  about one clinic-week in five at 30 images without any change.
- PSI, with at least ``MONITOR_MIN_PSI_IMAGES`` ASSESSABLE images in the week (and in the
  reference histogram): an alert when PSI > ``MONITOR_PSI_BOUND``. Below a few hundred images the
  PSI of an unchanged distribution is mostly sampling noise (empty bins floored at ε): at 30
  images it exceeded 0.25 in most weeks. At 200 assessable images against a validation
  histogram it does so in well under 1 % of weeks, so no further correction is made across groups.
"""
from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field, fields
from datetime import date, datetime, time, timedelta
from typing import Iterable, Sequence

from django.conf import settings
from django.db.models import Exists, Min, OuterRef, Q
from django.utils import timezone

from cases.models import Clinic, Lesion, LesionImage, Outcome, Prediction, Review
from classifier.models import ModelVersion
from mlcore.labels import CLASSES, MALIGNANT_CLASSES, MELANOMA
from mlcore.scoring import SCORE_BINS, SCORE_HISTOGRAM_KEY, score_bin, score_histogram

BINS = SCORE_BINS
PSI_EPSILON = 1e-4
VALIDATION_HISTOGRAM_KEY = SCORE_HISTOGRAM_KEY
ALL_CLINICS = "All clinics in view"
CLINIC_PATH = "lesion__case__patient__clinic_id"
Z_95 = 1.959963984540054  # two-sided 95 % normal quantile, for the Wilson intervals

# what became of a tracked lesion's histopathology result (``OutcomeCall.status``)
JUDGED = "judged"  # the model made a call at some visit: counted in the rates
NOT_ASSESSED = "not assessed"  # scored, but the model could assess no image at any visit
NO_SCORED_IMAGE = "no scored image"  # a result, but no image of the lesion has a finished score
RESULTS_DISAGREE = "results disagree"  # its visits carry different results

MALIGNANT, BENIGN, UNCLASSIFIED = "malignant", "benign", "unclassified"


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


def wilson_interval(hits: int, n: int, *, z: float = Z_95) -> tuple[float, float] | None:
    """Wilson score interval of the proportion hits / n (None when n is 0). Each outcome counted
    here is one tracked lesion with one call, so this is the lesion-level interval (images of one
    lesion are never counted as separate trials)."""
    if n <= 0:
        return None
    p, z2 = hits / n, z * z
    denominator = 1 + z2 / n
    centre = (p + z2 / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / denominator
    # exact at the ends (all or none hit), where float rounding would give 0.9999…
    return (0.0 if hits == 0 else max(0.0, centre - half)), (1.0 if hits == n else min(1.0, centre + half))


def truth_group(diagnosis: str) -> str:
    """Malignant (the classes of the malignancy score), benign (the other classes), or
    unclassified (the result "other": it may be either)."""
    if diagnosis in MALIGNANT_CLASSES:
        return MALIGNANT
    return BENIGN if diagnosis in CLASSES else UNCLASSIFIED


# --- outcomes: the model's call in practice against histopathology -----------------------------

@dataclass(frozen=True)
class OutcomeCall:
    """One tracked lesion with a histopathology result, and the call the model made on it in
    practice (``status`` JUDGED: ``flagged``; otherwise why it is counted apart)."""

    lesion_key: str
    clinic_id: int
    moment: datetime  # it counts under this moment's week
    diagnosis: str | None  # None: its visits' results disagree
    status: str
    flagged: bool | None = None
    versions: tuple[str, ...] = ()  # the versions whose first scores made the call


@dataclass
class OutcomeCounts:
    """Histopathology results of tracked lesions against the model's call in practice."""

    melanoma_caught: int = 0
    melanoma_missed: int = 0
    malignant_caught: int = 0  # melanomas included
    malignant_missed: int = 0
    benign_cleared: int = 0
    benign_flagged: int = 0
    # counted apart, in no rate
    melanomas_not_assessed: int = 0
    malignant_not_assessed: int = 0  # melanomas included
    benign_not_assessed: int = 0
    other_diagnosis: int = 0
    without_score: int = 0
    disagreeing: int = 0
    # judged lesions (the model made a call) WITHOUT any result: what verification leaves unseen
    unverified_flagged: int = 0
    unverified_cleared: int = 0
    versions: Counter = field(default_factory=Counter)  # version -> judged lesions it made the call on

    def add_unverified(self, flagged: bool) -> None:
        """Count one tracked lesion the model judged that has no histopathology result."""
        self.unverified_flagged += bool(flagged)
        self.unverified_cleared += not flagged

    def add(self, call: OutcomeCall) -> None:
        """Count one tracked lesion (module docstring: which call, which truth group)."""
        if call.status == RESULTS_DISAGREE:
            self.disagreeing += 1
            return
        if call.status == NO_SCORED_IMAGE:
            self.without_score += 1
            return
        group, melanoma = truth_group(call.diagnosis), call.diagnosis == MELANOMA
        if group == UNCLASSIFIED:
            self.other_diagnosis += 1
            return
        if call.status == NOT_ASSESSED:  # a forced flag sent it to review: not the model's call
            self.melanomas_not_assessed += melanoma
            self.malignant_not_assessed += group == MALIGNANT
            self.benign_not_assessed += group == BENIGN
            return
        flagged = bool(call.flagged)
        self.versions.update(call.versions)
        if melanoma:
            self.melanoma_caught += flagged
            self.melanoma_missed += not flagged
        if group == MALIGNANT:
            self.malignant_caught += flagged
            self.malignant_missed += not flagged
        else:
            self.benign_flagged += flagged
            self.benign_cleared += not flagged

    def __iadd__(self, other: "OutcomeCounts") -> "OutcomeCounts":
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))
        return self

    @property
    def melanomas(self) -> int:
        return self.melanoma_caught + self.melanoma_missed

    @property
    def malignant(self) -> int:
        return self.malignant_caught + self.malignant_missed

    @property
    def benign(self) -> int:
        return self.benign_cleared + self.benign_flagged

    @property
    def judged(self) -> int:
        return self.malignant + self.benign

    @property
    def not_assessed(self) -> int:
        return self.malignant_not_assessed + self.benign_not_assessed

    @property
    def set_apart(self) -> int:
        """Tracked lesions with a result counted in no rate."""
        return self.not_assessed + self.other_diagnosis + self.without_score + self.disagreeing

    @property
    def unverified(self) -> int:
        return self.unverified_flagged + self.unverified_cleared

    @property
    def flagged_with_result(self) -> int:
        """Judged lesions the model flagged whose result is benign or malignant: the PPV's n."""
        return self.malignant_caught + self.benign_flagged

    @property
    def ppv(self) -> float | None:
        """Positive predictive value: malignant / flagged, among the flagged lesions with a result."""
        return _rate(self.malignant_caught, self.flagged_with_result)

    @property
    def ppv_ci(self) -> tuple[float, float] | None:
        return wilson_interval(self.malignant_caught, self.flagged_with_result)

    @property
    def melanoma_sensitivity(self) -> float | None:
        return _rate(self.melanoma_caught, self.melanomas)

    @property
    def malignant_sensitivity(self) -> float | None:
        return _rate(self.malignant_caught, self.malignant)

    @property
    def specificity(self) -> float | None:
        return _rate(self.benign_cleared, self.benign)

    @property
    def melanoma_sensitivity_ci(self) -> tuple[float, float] | None:
        return wilson_interval(self.melanoma_caught, self.melanomas)

    @property
    def malignant_sensitivity_ci(self) -> tuple[float, float] | None:
        return wilson_interval(self.malignant_caught, self.malignant)

    @property
    def specificity_ci(self) -> tuple[float, float] | None:
        return wilson_interval(self.benign_cleared, self.benign)

    @property
    def versions_text(self) -> str:
        """"v1 (12 lesions), v2 (1 lesion)"; a lesion whose images were first scored by two
        versions counts under both."""
        return ", ".join(f"{v} ({n} lesion{'s' if n != 1 else ''})" for v, n in sorted(self.versions.items()))


# --- per-week figures -------------------------------------------------------------------------

@dataclass
class WeekStats:
    """One ISO week of one clinic (``clinic_id`` None: all clinics in view)."""

    week: date
    clinic_id: int | None
    clinic: str
    uploads: int = 0
    scored: int = 0  # images uploaded that week with a finished score by the monitored version
    flagged: int = 0
    not_assessable: int = 0
    histogram: list[int] = field(default_factory=lambda: [0] * BINS)
    lesion_flags: dict[int, bool] = field(default_factory=dict)  # lesion (visit) id -> any image flagged
    reviews: int = 0
    agreed: int = 0
    reviews_not_assessed: int = 0  # reviews of lesions with no assessable score: not in the agreement rate
    outcomes: OutcomeCounts = field(default_factory=OutcomeCounts)
    psi: float | None = None

    @property
    def label(self) -> str:
        return week_label(self.week)

    @property
    def coverage(self) -> float | None:
        """Share of the week's uploads that the monitored version has scored."""
        return _rate(self.scored, self.uploads)

    @property
    def flag_rate(self) -> float | None:
        return _rate(self.flagged, self.scored)

    @property
    def abstention_rate(self) -> float | None:
        return _rate(self.not_assessable, self.scored)

    @property
    def assessable(self) -> int:
        """Scored images the model could assess: the PSI's n."""
        return sum(self.histogram)

    @property
    def lesions(self) -> int:
        """Lesions (visits) with an image scored that week."""
        return len(self.lesion_flags)

    @property
    def flagged_lesions(self) -> int:
        return sum(self.lesion_flags.values())

    @property
    def lesion_flag_rate(self) -> float | None:
        return _rate(self.flagged_lesions, self.lesions)

    @property
    def agreement_rate(self) -> float | None:
        return _rate(self.agreed, self.reviews)

    def add_score(self, score: dict) -> None:
        self.scored += 1
        self.flagged += bool(score["flagged"])
        self.not_assessable += not score["assessable"]
        lesion = score["image__lesion_id"]
        self.lesion_flags[lesion] = self.lesion_flags.get(lesion, False) or bool(score["flagged"])
        if score["assessable"]:
            self.histogram[bin_index(score["melanoma_probability"])] += 1


def latest_scores(predictions) -> dict[int, dict]:
    """Per image id, its latest finished prediction (flag, assessable, melanoma probability, upload
    time, clinic, lesion), from a Prediction queryset (filter it to one version first: across
    versions "latest" would mix them)."""
    rows = (predictions.filter(status=Prediction.Status.DONE).order_by("image_id", "created_at", "pk")
            .values("image_id", "flagged", "assessable", "melanoma_probability", "image__uploaded_at",
                    "image__lesion_id", f"image__{CLINIC_PATH}"))
    return {row["image_id"]: row for row in rows}  # later rows replace earlier ones


def first_scores(predictions) -> dict[int, dict]:
    """Per image id, its first finished prediction (flag, assessable, version, upload time,
    lesion): the call made in practice, which a later revision or a re-score by another version
    (perhaps trained on the outcomes it would be judged on) never replaces."""
    rows = (predictions.filter(status=Prediction.Status.DONE).order_by("image_id", "finished_at", "created_at", "pk")
            .values("image_id", "flagged", "assessable", "image__uploaded_at", "image__lesion_id",
                    "model_version__version"))
    first: dict[int, dict] = {}
    for row in rows:
        first.setdefault(row["image_id"], row)
    return first


def _uploads(clinic_ids: Sequence[int], start: datetime, end: datetime):
    return LesionImage.objects.filter(**{f"{CLINIC_PATH}__in": clinic_ids}, uploaded_at__gte=start,
                                      uploaded_at__lt=end)


def _scores_between(clinic_ids: Sequence[int], start: datetime, end: datetime,
                    version: ModelVersion | None) -> dict[int, dict]:
    """The version's latest finished score of each image uploaded in [start, end) (none without a version)."""
    if version is None:
        return {}
    return latest_scores(Prediction.objects.filter(image__in=_uploads(clinic_ids, start, end), model_version=version))


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


def _count_scores(table: _Table, clinic_ids, start, end, version: ModelVersion | None) -> None:
    for score in _scores_between(clinic_ids, start, end, version).values():
        for stats in table.targets(score["image__uploaded_at"], score[f"image__{CLINIC_PATH}"]):
            stats.add_score(score)


def reviewed_model_call() -> Exists:
    """For a Review queryset: did the review see a call the model itself made? A finished,
    assessable score (flagged or not) of an image of its lesion uploaded and scored before it was
    signed (the pairing of cases.scoring.review_of_image, seen from the review). Without one, the
    lesion went to review on the forced flag of images the model could not assess: no judgement
    to agree with. This is the rule by which cases.scoring lets only an assessable score disagree
    with a review."""
    return Exists(Prediction.objects.filter(
        image__lesion_id=OuterRef("lesion_id"), image__uploaded_at__lte=OuterRef("created_at"),
        status=Prediction.Status.DONE, finished_at__lte=OuterRef("created_at"), assessable=True))


def _count_reviews(table: _Table, clinic_ids, start, end) -> None:
    reviews = (Review.objects.filter(**{f"{CLINIC_PATH}__in": clinic_ids}, created_at__gte=start, created_at__lt=end,
                                     amended_by__isnull=True)
               .annotate(model_call=reviewed_model_call()))
    for row in reviews.values("created_at", "agreement", "model_call", CLINIC_PATH):
        for stats in table.targets(row["created_at"], row[CLINIC_PATH]):
            if not row["model_call"]:
                stats.reviews_not_assessed += 1
                continue
            stats.reviews += 1
            stats.agreed += row["agreement"] == Review.Agreement.AGREE


def _tracked_key(tracked_id: int | None, visit_id: int) -> str:
    # as cases.training_labels groups visits: by the patient's lesion, else the visit alone
    return f"tracked-{tracked_id}" if tracked_id else f"visit-{visit_id}"


def _current_results(clinic_ids: Sequence[int]) -> list[dict]:
    """Per visit (Lesion), its histopathology result in force: the newest entered of those no
    later one supersedes (as cases.training_labels.current_outcomes picks it)."""
    rows = (Outcome.objects.filter(superseded_by__isnull=True, **{f"{CLINIC_PATH}__in": clinic_ids})
            .order_by("lesion_id", "-entered_at", "-pk")
            .values("lesion_id", "diagnosis", "entered_at", "lesion__tracked_id", "lesion__case__visit_date",
                    CLINIC_PATH))
    current: dict[int, dict] = {}
    for row in rows:
        current.setdefault(row["lesion_id"], row)
    return list(current.values())


def _visits(tracked: Iterable[int], untracked: Iterable[int]) -> tuple[dict[str, list[int]], dict[int, date]]:
    """The visits of these tracked lesions and untracked visits, earliest first (visit date, then
    entry) per tracked key, and each visit's date."""
    visits_of: dict[str, list[int]] = {}
    visit_date: dict[int, date] = {}
    ordered = (Lesion.objects.filter(Q(tracked_id__in=list(tracked)) | Q(pk__in=list(untracked)))
               .order_by("case__visit_date", "case__created_at", "pk")
               .values_list("pk", "tracked_id", "case__visit_date"))
    for visit_id, tracked_id, day in ordered:  # earliest visit first
        visits_of.setdefault(_tracked_key(tracked_id, visit_id), []).append(visit_id)
        visit_date[visit_id] = day
    return visits_of, visit_date


def _first_scores_and_uploads(visit_ids: Sequence[int]) -> tuple[dict[int, list[dict]], dict[int, datetime]]:
    """Per visit, its images' first finished scores, and its first upload."""
    scores_of: dict[int, list[dict]] = {}
    for score in first_scores(Prediction.objects.filter(image__lesion_id__in=visit_ids)).values():
        scores_of.setdefault(score["image__lesion_id"], []).append(score)
    first_upload = dict(LesionImage.objects.filter(lesion_id__in=visit_ids).order_by().values("lesion_id")
                        .annotate(first=Min("uploaded_at")).values_list("lesion_id", "first"))
    return scores_of, first_upload


def _judged_visit(visits: Sequence[int], scores_of: dict[int, list[dict]]) -> int | None:
    """The earliest of these visits where the first score of an image was assessable."""
    return next((v for v in visits if any(s["assessable"] for s in scores_of.get(v, []))), None)


def outcome_calls(clinic_ids: Sequence[int]) -> list[OutcomeCall]:
    """Each tracked lesion of these clinics with a current histopathology result on any visit, and
    the model's call on it in practice: at the earliest visit (visit date, then entry) up to the
    visit of its latest result (a later visit, e.g. a photo of the scar, is no call on it) where the
    first finished score of an image was assessable, flagged when any such image was flagged,
    counted under that visit's first upload (module docstring). The others are counted apart:
    scored but never assessable (under the first scored visit's first upload), no scored image or
    disagreeing results (under the lesion's first upload, else the week its result was entered)."""
    results = _current_results(clinic_ids)
    if not results:
        return []
    groups: dict[str, list[dict]] = {}
    for row in results:
        groups.setdefault(_tracked_key(row["lesion__tracked_id"], row["lesion_id"]), []).append(row)
    tracked = {row["lesion__tracked_id"] for row in results if row["lesion__tracked_id"]}
    untracked = [row["lesion_id"] for row in results if not row["lesion__tracked_id"]]
    visits_of, visit_date = _visits(tracked, untracked)
    scores_of, first_upload = _first_scores_and_uploads([v for group in visits_of.values() for v in group])
    calls = []
    for key, rows in groups.items():
        # as cases.training_labels: the results speak for their visits and the ones before them
        excised = max(row["lesion__case__visit_date"] for row in rows)
        visits = [v for v in visits_of.get(key, []) if visit_date[v] <= excised]
        clinic_id = rows[0][CLINIC_PATH]
        # no call to date it by: the lesion's first upload, else when its result was entered
        fallback = min((first_upload[v] for v in visits if v in first_upload),
                       default=min(row["entered_at"] for row in rows))
        diagnoses = {row["diagnosis"] for row in rows}
        if len(diagnoses) > 1:
            calls.append(OutcomeCall(key, clinic_id, fallback, None, RESULTS_DISAGREE))
            continue
        diagnosis = diagnoses.pop()
        judged = _judged_visit(visits, scores_of)
        if judged is not None:
            own = [s for s in scores_of[judged] if s["assessable"]]  # a forced flag is not the model's call
            calls.append(OutcomeCall(key, clinic_id, first_upload[judged], diagnosis, JUDGED,
                                     flagged=any(s["flagged"] for s in own),
                                     versions=tuple(sorted({s["model_version__version"] for s in own}))))
            continue
        scored = next((v for v in visits if scores_of.get(v)), None)
        if scored is not None:
            calls.append(OutcomeCall(key, clinic_id, first_upload[scored], diagnosis, NOT_ASSESSED,
                                     versions=tuple(sorted({s["model_version__version"] for s in scores_of[scored]}))))
        else:
            calls.append(OutcomeCall(key, clinic_id, fallback, diagnosis, NO_SCORED_IMAGE))
    return calls


def unverified_calls(clinic_ids: Sequence[int], start: datetime, end: datetime,
                     verified: Iterable[str] = ()) -> list[tuple[datetime, int, bool]]:
    """The model's call in practice (as ``outcome_calls`` picks it) on each tracked lesion of these
    clinics with NO histopathology result (none of ``verified``, the keys of those with one), whose
    call's visit had its first upload in [start, end): (that moment, clinic id, flagged)."""
    verified = set(verified)
    pairs = set(LesionImage.objects.filter(**{f"{CLINIC_PATH}__in": clinic_ids}, uploaded_at__gte=start,
                                           uploaded_at__lt=end).values_list("lesion_id", "lesion__tracked_id"))
    if not pairs:
        return []
    tracked = {t for _, t in pairs if t}
    untracked = [v for v, t in pairs if not t]
    visits_of, _ = _visits(tracked, untracked)
    visits_of = {key: visits for key, visits in visits_of.items() if key not in verified}
    scores_of, first_upload = _first_scores_and_uploads([v for group in visits_of.values() for v in group])
    clinic_of = dict(Lesion.objects.filter(pk__in=list(scores_of)).values_list("pk", "case__patient__clinic_id"))
    calls = []
    for visits in visits_of.values():
        judged = _judged_visit(visits, scores_of)
        if judged is None or not start <= first_upload[judged] < end:
            continue
        flagged = any(s["flagged"] for s in scores_of[judged] if s["assessable"])
        calls.append((first_upload[judged], clinic_of[judged], flagged))
    return calls


def _count_outcomes(table: _Table, clinic_ids, start, end) -> None:
    calls = outcome_calls(clinic_ids)
    for call in calls:
        for stats in table.targets(call.moment, call.clinic_id):
            stats.outcomes.add(call)
    for moment, clinic_id, flagged in unverified_calls(clinic_ids, start, end, {call.lesion_key for call in calls}):
        for stats in table.targets(moment, clinic_id):
            stats.outcomes.add_unverified(flagged)


# --- reference and alert ----------------------------------------------------------------------

@dataclass
class Reference:
    """What a clinic's weeks are compared with: a production period's flag rate and histogram,
    or a validation histogram stored with the model version (PSI only).

    ``weeks``: the flag-rate period (the first weeks, extended until it holds the minimum of scored
    images; ``complete`` False: it does not yet). ``histogram_weeks``: the period of a production
    histogram, likewise extended until it holds the PSI's minimum of assessable images."""

    clinic_id: int | None
    weeks: tuple[date, ...]
    scored: int
    flagged: int
    histogram: list[int]
    source: str = "production"
    lesions: int = 0  # lesions (visits) with a scored image in the period
    flagged_lesions: int = 0  # of those, with a flagged image
    complete: bool = True
    histogram_weeks: tuple[date, ...] = ()
    histogram_complete: bool = True

    @property
    def flag_rate(self) -> float | None:
        return _rate(self.flagged, self.scored)

    @property
    def lesion_flag_rate(self) -> float | None:
        return _rate(self.flagged_lesions, self.lesions)

    @property
    def ends(self) -> date | None:
        """The first Monday after the flag-rate period (None: the version scored no upload yet)."""
        return self.weeks[-1] + timedelta(weeks=1) if self.weeks else None

    @property
    def histogram_ends(self) -> date | None:
        """The first Monday after the production histogram's period (None: no such period)."""
        return self.histogram_weeks[-1] + timedelta(weeks=1) if self.histogram_weeks else None

    @property
    def description(self) -> str:
        if not self.weeks:
            return "no upload scored by this version yet"
        text = (f"flag rate from {_period(self.weeks)} ({self.scored} scored images, {self.lesions} lesions"
                f"{'' if self.complete else ', still short of the minimum'}); ")
        if self.source == "validation":
            return text + (f"score distribution: validation histogram of the model version "
                           f"({sum(self.histogram)} images)")
        same = "the same weeks" if self.histogram_weeks == self.weeks else _period(self.histogram_weeks)
        return (text + f"score distribution from {same} ({sum(self.histogram)} assessable images"
                f"{'' if self.histogram_complete else ', still short of the minimum'})")


def _period(weeks: Sequence[date]) -> str:
    return f"{week_label(weeks[0])} to {week_label(weeks[-1])}" if weeks else "no weeks"


def production_reference(clinic_ids: Sequence[int], *, clinic_id: int | None, weeks: int,
                         version: ModelVersion | None, min_images: int = 0, min_assessable: int = 0,
                         until: date | None = None) -> Reference:
    """The version's scores of the first ``weeks`` ISO weeks from the first upload of these clinics
    that it scored (a version activated without re-scoring starts its own reference then). When
    they hold fewer than ``min_images`` scored images, the flag-rate period takes the following
    weeks in order until it holds that many, never the week of ``until`` (the week checked) or
    later; the histogram's period likewise until it holds ``min_assessable`` assessable images."""
    first = None
    if version is not None:
        first = (LesionImage.objects.filter(**{f"{CLINIC_PATH}__in": clinic_ids}, predictions__model_version=version,
                                            predictions__status=Prediction.Status.DONE)
                 .order_by("uploaded_at").values_list("uploaded_at", flat=True).first())
    if first is None:
        return Reference(clinic_id, (), 0, 0, [0] * BINS)
    start, fixed = week_of(first), max(weeks, 1)
    by_week: dict[date, list[dict]] = {}
    fetched = start  # the first Monday not fetched yet (fetched in spans that double, from ``fixed`` weeks)

    def scores_of(monday: date) -> list[dict]:
        nonlocal fetched
        if monday >= fetched:
            step = fetched + timedelta(weeks=max(fixed, (fetched - start).days // 7))
            for score in _scores_between(clinic_ids, _start_of(fetched), _start_of(step), version).values():
                by_week.setdefault(week_of(score["image__uploaded_at"]), []).append(score)
            fetched = step
        return by_week.get(monday, [])

    def period(counted, minimum: int) -> tuple[tuple[date, ...], list[dict], bool]:
        """The first ``fixed`` weeks, then the next ones before ``until`` while fewer than ``minimum``
        rows are ``counted``: (its weeks, its scores, whether it holds the minimum)."""
        chosen: list[date] = []
        rows: list[dict] = []
        count, monday = 0, start
        while len(chosen) < fixed or (count < minimum and until is not None and monday < until):
            week = scores_of(monday)
            chosen.append(monday)
            rows += week
            count += sum(1 for row in week if counted(row))
            monday += timedelta(weeks=1)
        return tuple(chosen), rows, count >= minimum

    period_weeks, scores, complete = period(lambda r: True, min_images)
    tally = WeekStats(start, clinic_id, "")  # the period's counts, as a week counts them
    for score in scores:
        tally.add_score(score)
    histogram_weeks, assessed, histogram_complete = period(lambda r: r["assessable"], min_assessable)
    return Reference(clinic_id, period_weeks, scored=tally.scored, flagged=tally.flagged,
                     histogram=histogram(s["melanoma_probability"] for s in assessed if s["assessable"]),
                     lesions=tally.lesions, flagged_lesions=tally.flagged_lesions, complete=complete,
                     histogram_weeks=histogram_weeks, histogram_complete=histogram_complete)


def validation_histogram(version) -> list[int] | None:
    """The validation histogram a model version's metrics carry (10 counts), else None."""
    counts = (getattr(version, "metrics", None) or {}).get(VALIDATION_HISTOGRAM_KEY)
    if isinstance(counts, list) and len(counts) == BINS and all(isinstance(c, (int, float)) for c in counts):
        return list(counts)
    return None


FLAG_RATE_ALPHA = 0.05  # family-wise, over the groups whose flag rate is compared in a week


def two_proportion_p(hits_a: int, n_a: int, hits_b: int, n_b: int) -> float:
    """Two-sided p of Fisher's exact test that two proportions (hits / n, e.g. lesions with a flagged
    image / lesions) are equal; exact at the small counts of a clinic's week."""
    from scipy.stats import fisher_exact  # scipy is slow to import: only when a check needs it

    return float(fisher_exact([[hits_a, n_a - hits_a], [hits_b, n_b - hits_b]]).pvalue)


@dataclass(frozen=True)
class Bounds:
    flag_rate: float  # the smallest change of the lesion flag rate that matters clinically
    psi: float
    min_images: int  # scored images, for the flag rate (the week's and the reference's)
    min_psi_images: int = 200  # assessable images, for the PSI (the week's and the reference histogram's)

    @classmethod
    def from_settings(cls) -> "Bounds":
        return cls(flag_rate=settings.MONITOR_FLAG_RATE_BOUND, psi=settings.MONITOR_PSI_BOUND,
                   min_images=settings.MONITOR_MIN_IMAGES, min_psi_images=settings.MONITOR_MIN_PSI_IMAGES)


@dataclass
class DriftCheck:
    """The alert rule applied to one clinic's latest complete week."""

    stats: WeekStats
    reference: Reference
    evaluated: bool
    reasons: tuple[str, ...] = ()
    note: str = ""
    flag_rate_p: float | None = None  # Fisher's exact p of the lesion flag rates, when compared
    alpha: float | None = None  # the level it was held to (Bonferroni over the groups compared)

    @property
    def clinic(self) -> str:
        return self.stats.clinic

    @property
    def week(self) -> date:
        return self.stats.week

    @property
    def alert(self) -> bool:
        return bool(self.reasons)


def flag_rate_gate(stats: WeekStats, reference: Reference, bounds: Bounds) -> str:
    """Why the week's flag rate cannot be compared with the reference's ("" when it can)."""
    enough = max(bounds.min_images, 1)
    if stats.scored < enough:
        return f"{stats.scored} scored images (the rule needs at least {enough})"
    if reference.ends is None:
        return "no reference: the version scored no earlier upload"
    if stats.week < reference.ends:
        return f"this week is within the reference period ({_period(reference.weeks)})"
    if not reference.complete:
        return (f"the reference period ({_period(reference.weeks)}, from the first upload the version scored) "
                f"holds {reference.scored} scored images, fewer than {enough}; it takes in the following weeks "
                f"until it holds {enough}")
    return ""


def psi_gate(stats: WeekStats, reference: Reference, bounds: Bounds) -> str:
    """Why the week's PSI is not held to its bound ("" when it is): too few assessable images in
    the week or in the reference histogram (below a few hundred the PSI is mostly sampling noise)."""
    enough = max(bounds.min_psi_images, 1)
    if stats.assessable < enough:
        return f"{stats.assessable} assessable images (needs at least {enough})"
    held = sum(reference.histogram)
    if reference.source == "validation":
        return "" if held >= enough else f"the validation histogram holds {held} images (needs at least {enough})"
    if reference.histogram_ends is None or stats.week < reference.histogram_ends:
        return ("this week is within the reference period of the score distribution "
                f"({_period(reference.histogram_weeks)})")
    if not reference.histogram_complete:
        return (f"the reference score distribution ({_period(reference.histogram_weeks)}) holds {held} assessable "
                f"images, fewer than {enough}; it takes in the following weeks until it holds {enough}")
    return ""


def drift_check(stats: WeekStats, reference: Reference, bounds: Bounds, *, comparisons: int = 1) -> DriftCheck:
    """Alert when the week's lesion flag rate or score distribution moved (module docstring): the
    flag rate by more than the bound AND significantly (Fisher's exact p < 0.05 / ``comparisons``,
    the number of groups whose flag rate is compared this week); the PSI beyond its bound on enough
    assessable images. Each part is evaluated only when its gate lets it (the note says why not)."""
    reasons, notes = [], []
    p_value = alpha = None
    flag_gate, score_gate = flag_rate_gate(stats, reference, bounds), psi_gate(stats, reference, bounds)
    if flag_gate:
        notes.append(f"flag rate not compared: {flag_gate}")
    else:
        alpha = FLAG_RATE_ALPHA / max(comparisons, 1)
        p_value = two_proportion_p(stats.flagged_lesions, stats.lesions, reference.flagged_lesions, reference.lesions)
        change = stats.lesion_flag_rate - reference.lesion_flag_rate
        detail = (f"{stats.flagged_lesions}/{stats.lesions} vs {reference.flagged_lesions}/{reference.lesions} "
                  f"lesions with a flagged image; change {change * 100:+.0f} points, "
                  f"bound ±{bounds.flag_rate * 100:.0f}; "
                  f"Fisher's exact p = {p_value:.2g}, level {alpha:.2g}")
        if abs(change) > bounds.flag_rate and p_value < alpha:
            reasons.append(f"flag rate {stats.lesion_flag_rate:.0%} vs {reference.lesion_flag_rate:.0%} in the "
                           f"reference period ({detail})")
        elif abs(change) > bounds.flag_rate:
            notes.append(f"flag rate change beyond the bound but not significant ({detail})")
    if score_gate:
        notes.append(f"PSI not evaluated: {score_gate}")
    elif stats.psi is not None and stats.psi > bounds.psi:
        reasons.append(f"score distribution shifted: PSI {stats.psi:.2f} > {bounds.psi:.2f} "
                       f"({stats.assessable} assessable images)")
    return DriftCheck(stats, reference, evaluated=not (flag_gate and score_gate), reasons=tuple(reasons),
                      note="; ".join(notes), flag_rate_p=p_value, alpha=alpha)


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
    version: ModelVersion | None = None  # whose scores the score figures are

    @property
    def version_label(self) -> str:
        return self.version.version if self.version is not None else "no active model version"

    @property
    def latest_complete_week(self) -> date:
        return self.weeks[-2] if len(self.weeks) > 1 else self.weeks[-1] - timedelta(weeks=1)

    @property
    def alerts(self) -> list[DriftCheck]:
        return [check for check in self.checks if check.alert]

    @property
    def summary_group(self) -> int | None:
        """The row that speaks for everything in view: the pooled one, or the only clinic's."""
        return None if len(self.groups) != 1 else self.groups[0][0]

    def series(self, clinic_id: int | None) -> list[WeekStats]:
        """One group's weeks, oldest first."""
        return [self.rows[(week, clinic_id)] for week in self.weeks]

    def table(self) -> list[WeekStats]:
        """Newest week first, the clinics in order within it."""
        return [self.rows[(week, cid)] for week in reversed(self.weeks) for cid, _ in self.groups]

    @property
    def uploads(self) -> int:
        """Images uploaded in the weeks shown, in all clinics in view."""
        return sum(s.uploads for s in self.rows.values() if s.clinic_id is not None)

    @property
    def scored(self) -> int:
        """Of those, the images the monitored version has a finished score for."""
        return sum(s.scored for s in self.rows.values() if s.clinic_id is not None)

    @property
    def coverage(self) -> float | None:
        return _rate(self.scored, self.uploads)

    def outcome_totals(self, clinic_id: int | None) -> OutcomeCounts:
        """One group's outcome counts over the weeks shown."""
        total = OutcomeCounts()
        for stats in self.series(clinic_id):
            total += stats.outcomes
        return total

    def outcome_summary(self) -> list[tuple[str, OutcomeCounts]]:
        """(group name, its totals) for every group, the pooled one last."""
        return [(name, self.outcome_totals(cid)) for cid, name in self.groups]

    def reviews_set_apart(self) -> int:
        """Reviews of lesions with no assessable score (left out of the agreement), all clinics in view."""
        return sum(s.reviews_not_assessed for s in self.rows.values() if s.clinic_id is not None)


def _references(groups, clinic_ids: Sequence[int], validation: list[int] | None,
                version: ModelVersion | None, bounds: Bounds, until: date) -> dict[int | None, Reference]:
    """Each group's production reference (extended up to ``until``, the week checked, until it holds
    the minima); its histogram replaced by the validation one when stored."""
    references = {}
    for cid, _ in groups:
        scope = clinic_ids if cid is None else [cid]
        reference = production_reference(scope, clinic_id=cid, weeks=settings.MONITOR_REFERENCE_WEEKS,
                                         version=version, min_images=bounds.min_images,
                                         min_assessable=0 if validation is not None else bounds.min_psi_images,
                                         until=until)
        if validation is not None:
            reference.histogram, reference.source = validation, "validation"
        references[cid] = reference
    return references


def monitoring_report(clinics: Iterable[Clinic], *, today: date | None = None, weeks: int | None = None,
                      version: ModelVersion | None = None) -> MonitoringReport:
    """The weekly figures, references and drift checks of these clinics (the admin's scope); the
    score figures are ``version``'s (default: the active version; none active: no score figures)."""
    clinics = list(clinics)
    clinic_ids = [c.pk for c in clinics]
    if version is None:  # read only: a monitoring page never registers the shipped model
        version = ModelVersion.objects.filter(status=ModelVersion.Status.ACTIVE).first()
    monday_list = recent_weeks(weeks or settings.MONITOR_WEEKS, today)
    start, end = _start_of(monday_list[0]), _start_of(monday_list[-1] + timedelta(weeks=1))
    table = _Table(monday_list, clinics, pooled=len(clinics) > 1)
    _count_uploads(table, clinic_ids, start, end)
    _count_scores(table, clinic_ids, start, end, version)
    _count_reviews(table, clinic_ids, start, end)
    _count_outcomes(table, clinic_ids, start, end)
    validation = validation_histogram(version)
    bounds = Bounds.from_settings()
    report = MonitoringReport(monday_list, table.groups, table.rows, {}, [], bounds,
                              validation_reference=validation is not None, version=version)
    latest = report.latest_complete_week
    report.references = references = _references(table.groups, clinic_ids, validation, version, bounds, latest)
    for stats in table.rows.values():
        stats.psi = psi(references[stats.clinic_id].histogram, stats.histogram)
    weeks_checked = [(table.rows[(latest, cid)], references[cid])
                     for cid, _ in table.groups if (latest, cid) in table.rows]
    # Bonferroni: the flag rate is tested once per group compared this week
    comparisons = sum(not flag_rate_gate(stats, reference, bounds) for stats, reference in weeks_checked)
    report.checks = [drift_check(stats, reference, bounds, comparisons=comparisons)
                     for stats, reference in weeks_checked]
    return report
