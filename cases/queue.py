"""The dermatologists' review queue: flagged, unreviewed cases; atomic claims; reviews."""
from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import Case as DjCase
from django.db.models import BooleanField, CharField, Exists, ExpressionWrapper, F, FloatField, IntegerField, OuterRef, Q, QuerySet, Subquery, Value, When
from django.db.models.functions import Coalesce, Greatest
from django.http import HttpRequest
from django.utils import timezone

from audit import log as audit_log
from cases.access import is_reviewer
from cases.models import Case, Lesion, LesionImage, Prediction, Review
from cases.roles import display_name


class ClaimError(Exception):
    """The case can't be claimed (or reviewed) by this reviewer; the message says why."""


class ChangedSinceOpened(ClaimError):
    """A lesion changed after the review page was opened (a new image, a re-score, newly flagged):
    nothing was saved. ``problems``: lesion id → what changed, one sentence each."""

    def __init__(self, problems: dict[int, str]) -> None:
        super().__init__(" ".join(problems.values()))
        self.problems = problems


def _awaiting(case_ref=OuterRef("pk")) -> Exists:
    return Exists(Lesion.objects.filter(case=case_ref, awaiting_review=True))


# A case with an image the model could not assess, or with an image of a flagged lesion that has no
# finished score in force (waiting, running, failed, never scored), ranks as if its melanoma
# probability were this: above most flagged lesions (the melanoma threshold is near 0.1), below
# the most suspicious ones. An unjudged image must never sink a flagged case to the bottom.
CANNOT_ASSESS_RANK = 0.5

# Said beside the flag of a lesion in ``flag_cleared_lesions``, on the case page and in the report.
FLAG_CLEARED_TEXT = ("Flagged by an earlier score; its current score is below the thresholds. "
                     "It stays waiting until a dermatologist reviews it.")


def in_force_scores(**image_filter) -> QuerySet[Prediction]:
    """The finished predictions in force (``LesionImage.current_prediction``) of the images that
    ``image_filter`` selects: an image's newest finished prediction, unless a newer one for a
    correction (with its ``reason``) waits, runs or failed, which makes every older score stale.
    A version re-score still waiting leaves the finished score before it in force."""
    replaced_by = Prediction.objects.filter(image=OuterRef("image")).filter(
        Q(status=Prediction.Status.DONE) | ~Q(reason="")).filter(
        Q(created_at__gt=OuterRef("created_at")) | Q(created_at=OuterRef("created_at"), pk__gt=OuterRef("pk")))
    return Prediction.objects.filter(status=Prediction.Status.DONE, **image_filter).exclude(Exists(replaced_by))


def unscored_images(**image_filter) -> QuerySet[LesionImage]:
    """The images that ``image_filter`` selects without a finished score in force
    (``in_force_scores``): scoring waits, runs or failed, a correction made the old score stale, or
    the image was never scored. Their prediction shown (``current_prediction``) is their newest."""
    return LesionImage.objects.filter(**image_filter).exclude(Exists(in_force_scores(image=OuterRef("pk"))))


def _failed(unscored: QuerySet[LesionImage]) -> QuerySet[LesionImage]:
    """Those of ``unscored`` whose newest prediction failed (the one the case page shows them with)."""
    newest = Prediction.objects.filter(image=OuterRef("pk")).order_by("-created_at", "-pk").values("status")[:1]
    return unscored.annotate(newest_status=Subquery(newest)).filter(newest_status=Prediction.Status.FAILED)


def _flag_cleared(scores: QuerySet[Prediction], unscored: QuerySet[LesionImage]) -> Q:
    """Flagged by an earlier score (before a correction, or by the version a re-score replaced)
    while every image of the flagged lesions has a finished score in force and none of them is
    flagged. An image still waiting for its score, or whose scoring failed, is not judged: it may
    be the one that flagged the lesion, so nothing is said to be below the thresholds."""
    return Q(Exists(scores)) & ~Q(Exists(scores.filter(flagged=True))) & ~Q(Exists(unscored))


def flag_cleared_lesions(case: Case) -> set[int]:
    """The case's lesions waiting for review although every image has a finished score in force
    and all of them are below the thresholds (the queue's ``flag_cleared``, per lesion): an
    earlier score flagged them, and they stay until a dermatologist reviews them."""
    scores = in_force_scores(image__lesion=OuterRef("pk"))
    unscored = unscored_images(lesion=OuterRef("pk"))
    return set(lesions_to_review(case).filter(_flag_cleared(scores, unscored)).values_list("pk", flat=True))


def review_queue() -> QuerySet[Case]:
    """Cases with unreviewed flagged lesions: highest melanoma probability first, then oldest. An
    image the model could not assess has no trustworthy score: its case is annotated
    ``cannot_assess`` and ranks at CANNOT_ASSESS_RANK (or its other lesions' score, if higher).
    So does a case with an image of a flagged lesion without a finished score in force
    (``unscored``; ``scoring_failed`` when such an image's scoring failed): that image may be the
    one that flagged the lesion. ``top_melanoma`` is None when no image has an assessable score
    (``top_threshold``: the melanoma threshold of the version that gave it); ``flag_cleared`` says
    that the lesions were flagged by an earlier score and every image's current score is not
    flagged (they stay until a dermatologist reviews them); such cases come after those still
    flagged (``cleared_last``), unless an image could not be assessed. Each image counts with its
    finished prediction in force, as the case page shows it (``in_force_scores``)."""
    # an older revision or model version the one in force replaced, or a score made stale by a
    # correction's re-score, must neither lend the case a score nor mark it "could not assess"
    awaiting_done = in_force_scores(image__lesion__case=OuterRef("pk"), image__lesion__awaiting_review=True)
    unscored = unscored_images(lesion__case=OuterRef("pk"), lesion__awaiting_review=True)
    # the same row gives the score and its version's threshold
    top = awaiting_done.filter(assessable=True).order_by("-melanoma_probability", "-created_at", "-pk")
    cannot_assess = Exists(awaiting_done.filter(assessable=False))
    # flagged by an earlier score, every current one below the thresholds: it stays for review, said so
    flag_cleared = _flag_cleared(awaiting_done, unscored)
    # a flagged lesion of the case that was seen at an earlier visit (sequential dermoscopy)
    earlier = Lesion.objects.filter(tracked=OuterRef("tracked")).filter(
        Q(case__visit_date__lt=OuterRef("case__visit_date"))
        | Q(case__visit_date=OuterRef("case__visit_date"), case__created_at__lt=OuterRef("case__created_at")))
    followed = Exists(Lesion.objects.filter(case=OuterRef("pk"), awaiting_review=True).filter(Exists(earlier)))
    waiting_since = Lesion.objects.filter(case=OuterRef("pk"), awaiting_review=True).order_by("flagged_at")
    unjudged = DjCase(When(Q(cannot_assess=True) | Q(unscored=True), then=Value(CANNOT_ASSESS_RANK)),
                      default=Value(0.0), output_field=FloatField())
    return (
        Case.objects.filter(_awaiting())
        .select_related("patient", "patient__clinic", "claimed_by", "referring_clinician")
        # None when no image of the case has an assessable score (never a made-up 0.0)
        .annotate(top_melanoma=Subquery(top.values("melanoma_probability")[:1]),
                  top_threshold=Subquery(top.values("model_version__melanoma_threshold")[:1]),
                  cannot_assess=cannot_assess, unscored=Exists(unscored), scoring_failed=Exists(_failed(unscored)),
                  flag_cleared=ExpressionWrapper(flag_cleared, output_field=BooleanField()),
                  has_earlier_visits=followed, waiting_since=Subquery(waiting_since.values("flagged_at")[:1]))
        .annotate(queue_rank=Greatest(Coalesce(F("top_melanoma"), 0.0), unjudged),
                  # flagged only by an earlier score: after the cases still flagged (an image the
                  # model could not assess is not judged below the thresholds: it keeps its rank)
                  cleared_last=DjCase(When(Q(flag_cleared=True, cannot_assess=False), then=Value(1)),
                                      default=Value(0), output_field=IntegerField()))
        .order_by("cleared_last", "-queue_rank", "created_at", "pk")
    )


def queue_size_for(user) -> int | None:
    """Queue length for the navigation badge; None for users who don't review."""
    if not user.is_authenticated or not is_reviewer(user):
        return None
    return Case.objects.filter(_awaiting()).count()


def claim_expired_before(now=None):
    """Claims made before this moment have expired (settings.CLAIM_EXPIRY_HOURS): anyone may
    take the case over, so a forgotten claim never hides a flagged lesion for long."""
    return (now or timezone.now()) - timedelta(hours=settings.CLAIM_EXPIRY_HOURS)


def claim_expires_at(case: Case):
    """When the case's claim lapses (None when nobody holds it)."""
    if case.claimed_by_id is None or case.claimed_at is None:
        return None
    return case.claimed_at + timedelta(hours=settings.CLAIM_EXPIRY_HOURS)


def claim_expired(case: Case, now=None) -> bool:
    """Whether someone claimed the case and the claim has lapsed, so another reviewer may take it over."""
    expires = claim_expires_at(case)
    return expires is not None and expires < (now or timezone.now())


def mark_claims(cases, now=None) -> None:
    """Set ``claim_expires_at`` and ``claim_expired`` on each case, for the pages that show a claim."""
    now = now or timezone.now()
    for case in cases:
        case.claim_expires_at = claim_expires_at(case)
        case.claim_expired = claim_expired(case, now)


def _keep_closed(status: str) -> DjCase:
    """``status`` for the updated case, unless it is closed: it stays closed (see ``claim_case``)."""
    return DjCase(When(status=Case.Status.CLOSED, then=Value(Case.Status.CLOSED)), default=Value(status),
                  output_field=CharField())


def claim_when(value) -> str:
    """A claim time as the messages and pages give it: date and time (a claim may be days old)."""
    return f"{timezone.localtime(value):%Y-%m-%d %H:%M}"


def claim_case(*, case: Case, reviewer, request: HttpRequest | None = None) -> None:
    """Claim a queued case with one conditional UPDATE; raises ClaimError if someone else has it
    (a claim older than CLAIM_EXPIRY_HOURS is taken over). A closed case stays closed: a re-score
    by a newer model version may flag one of its lesions afterwards, and that lesion must still
    reach a dermatologist, so it can be claimed and reviewed, but claiming never reopens it."""
    if not is_reviewer(reviewer):
        raise ClaimError("Only dermatologists can claim cases.")
    now = timezone.now()
    free = Q(claimed_by__isnull=True) | Q(claimed_at__lt=claim_expired_before(now))
    with transaction.atomic():
        previous = Case.objects.filter(pk=case.pk).values_list("claimed_by_id", flat=True).first()
        claimed = Case.objects.filter(free, _awaiting(), pk=case.pk).exclude(claimed_by=reviewer).update(
            claimed_by=reviewer, claimed_at=now, status=_keep_closed(Case.Status.IN_REVIEW)
        )
        if claimed:
            audit_log.record(action="claim", obj=case, actor=reviewer, request=request,
                             old={"claimed_by": previous},
                             new={"claimed_by": reviewer.pk, "claimed_at": now.isoformat()})
            return
    current = Case.objects.select_related("claimed_by").get(pk=case.pk)
    if current.claimed_by_id == reviewer.pk:
        return  # already ours: claiming twice is harmless
    if current.claimed_by_id is not None:
        raise ClaimError(f"This case was already claimed by {display_name(current.claimed_by)} at {claim_when(current.claimed_at)}.")
    raise ClaimError("This case is no longer waiting for review.")


def renew_claim(*, case: Case, reviewer) -> bool:
    """The claim holder at work on the case keeps it: its claim restarts now (one conditional
    UPDATE, so a claim a colleague took over a moment ago is never taken back); False when
    ``reviewer`` does not hold it. Not audited on its own: it gives the holder nothing the
    "claim" event did not, and the review page records a "view" event in the same request."""
    now = timezone.now()
    if not Case.objects.filter(pk=case.pk, claimed_by=reviewer).update(claimed_at=now):
        return False
    case.claimed_by_id, case.claimed_at = reviewer.pk, now
    return True


def release_claims(*, cases: QuerySet[Case], admin, request: HttpRequest | None = None) -> int:
    """An admin gives claimed cases back to the queue (a reviewer away, a claim left behind)."""
    released = 0
    for case in cases.filter(claimed_by__isnull=False):
        with transaction.atomic():
            if Case.objects.filter(pk=case.pk, claimed_by_id=case.claimed_by_id).update(
                    claimed_by=None, claimed_at=None, status=_keep_closed(Case.Status.OPEN)):
                audit_log.record(action="release", obj=case, actor=admin, request=request,
                                 old={"claimed_by": case.claimed_by_id}, new={"claimed_by": None})
                released += 1
    return released


def release_case(*, case: Case, reviewer, request: HttpRequest | None = None) -> bool:
    """Give a claimed case back to the queue; only the claimer can."""
    with transaction.atomic():
        released = Case.objects.filter(pk=case.pk, claimed_by=reviewer).update(
            claimed_by=None, claimed_at=None, status=_keep_closed(Case.Status.OPEN)
        )
        if released:
            audit_log.record(action="release", obj=case, actor=reviewer, request=request,
                         old={"claimed_by": reviewer.pk}, new={"claimed_by": None})
    return bool(released)


@dataclass(frozen=True)
class LesionReview:
    """One lesion's review as entered in the form."""

    lesion: Lesion
    agreement: str
    final_diagnosis: str
    management: str
    notes: str = ""
    lesion_changed: bool | None = None


def lesions_to_review(case: Case) -> QuerySet[Lesion]:
    """The flagged lesions of the case that still wait for a review."""
    return case.lesions.filter(awaiting_review=True).order_by("pk")


# What the review page shows of a lesion: its images, their predictions and those predictions' versions.
SHOWN_PREFETCH = "images__predictions__model_version"


def _shown(lesion: Lesion) -> list[tuple[int, Prediction | None]]:
    """(image id, its prediction in force) per image of ``lesion``, by image id."""
    return sorted(((image.pk, image.current_prediction()) for image in lesion.images.all()), key=lambda pair: pair[0])


def lesion_fingerprint(lesion: Lesion) -> str:
    """What the review page shows of ``lesion``, as one string to compare at save time: per image
    "image:prediction:state" (its prediction in force, ``LesionImage.current_prediction``; "-"
    without one), by image id. A new image, a re-score or a score finishing or failing changes it;
    waiting and running read alike ("active"), as neither shows a score. Uses prefetched
    ``SHOWN_PREFETCH`` when there is one."""
    def state(prediction: Prediction | None) -> str:
        if prediction is None:
            return "-"
        return "active" if prediction.is_active else prediction.status

    return ";".join(f"{image}:{prediction.pk if prediction else '-'}:{state(prediction)}"
                    for image, prediction in _shown(lesion))


def lesion_name(lesion: Lesion) -> str:
    """How a refusal or an error names a lesion: "Lesion L2 (Posterior torso)"."""
    label = lesion.tracked.label if lesion.tracked_id else str(lesion.pk)
    return f"Lesion {label} ({lesion.get_anatomic_site_display()})"


def _changes_since_seen(lesions: list[Lesion], given: set[int], seen: dict[int, str]) -> dict[int, str]:
    """Per lesion waiting for review, what changed since the page showed it (``seen``: its fingerprints)."""
    problems = {}
    for lesion in lesions:
        name = lesion_name(lesion)
        if lesion.pk not in given:
            problems[lesion.pk] = (f"{name} was flagged for review since you opened this page: "
                                   "review it too and save again.")
            continue
        shown = seen.get(lesion.pk, "")
        if lesion_fingerprint(lesion) == shown:
            continue
        # the fingerprint's image ids tell a new image from a re-score of the ones on the page
        shown_images = {part.split(":")[0] for part in shown.split(";") if part}
        images = {str(image) for image, _ in _shown(lesion)}
        change = ("has a new image" if images - shown_images else
                  "had an image removed" if shown_images - images else "was re-scored")
        problems[lesion.pk] = f"{name} {change} since you opened this page: check it and save again."
    return problems


def _lost_claim(locked: Case) -> ClaimError:
    if locked.claimed_by_id is None:
        return ClaimError("Claim the case before reviewing it (or it was released).")
    return ClaimError(f"This case is now claimed by {display_name(locked.claimed_by)} "
                      f"(since {claim_when(locked.claimed_at)}); nothing was saved.")


def submit_reviews(*, case: Case, reviewer, reviews: list[LesionReview], seen: dict[int, str] | None = None,
                   request: HttpRequest | None = None) -> list[Review]:
    """Record the reviews of all flagged lesions of a claimed case; the case leaves the queue.

    ``seen``: per lesion the ``lesion_fingerprint`` the review page showed. Given (the web page
    always gives it), a lesion whose images or scores changed since, or one flagged since, refuses
    the whole save (``ChangedSinceOpened``), and each review's audit event names the images and
    predictions it was given against. The check runs under the case's lock; an upload does not
    take that lock, so one committed in the same instant can still slip past (its own score
    re-queues the lesion when it flags it)."""
    with transaction.atomic():
        locked = Case.objects.select_for_update().get(pk=case.pk)
        if locked.claimed_by_id != reviewer.pk:
            raise _lost_claim(locked)
        lesions = lesions_to_review(locked)
        if seen is not None:  # what the page showed is compared: its images and scores, in one go
            lesions = lesions.select_related("tracked").prefetch_related(SHOWN_PREFETCH)
        lesions = list(lesions)
        pending = {lesion.pk for lesion in lesions}
        given = {entry.lesion.pk for entry in reviews}
        if not pending:
            raise ClaimError("This case has no flagged lesions waiting for review.")
        if len(given) != len(reviews):
            raise ClaimError("Give each lesion once: one review per flagged lesion.")
        if seen is not None and (problems := _changes_since_seen(lesions, given, seen)):
            raise ChangedSinceOpened(problems)
        if given != pending:
            raise ClaimError("Every flagged lesion of the case needs a review.")
        shown = {lesion.pk: _shown(lesion) for lesion in lesions} if seen is not None else {}
        saved = []
        for entry in reviews:
            review = Review(lesion=entry.lesion, reviewer=reviewer, agreement=entry.agreement,
                            final_diagnosis=entry.final_diagnosis, management=entry.management, notes=entry.notes,
                            lesion_changed=entry.lesion_changed)
            review.full_clean()
            review.save()
            new = audit_log.snapshot(review, ("lesion", "agreement", "final_diagnosis", "management",
                                              "lesion_changed", "notes"))
            if seen is not None:  # checked above: what the reviewer had on screen is what is in force
                images = shown[entry.lesion.pk]
                new |= {"seen_images": [image for image, _ in images],
                        "seen_predictions": sorted(p.pk for _, p in images if p is not None)}
            audit_log.record(action="review", obj=review, actor=reviewer, request=request, new=new)
            saved.append(review)
        Lesion.objects.filter(pk__in=pending).update(awaiting_review=False)
        old_status = locked.status
        # a closed case whose lesion a re-score flagged after closing stays closed (see claim_case)
        new_status = Case.Status.CLOSED if old_status == Case.Status.CLOSED else Case.Status.REVIEWED
        Case.objects.filter(pk=locked.pk).update(status=new_status, claimed_by=None, claimed_at=None)
        audit_log.record(action="update", obj=locked, actor=reviewer, request=request,
                     old={"status": old_status, "claimed_by": reviewer.pk},
                     new={"status": new_status, "claimed_by": None})
    return saved
