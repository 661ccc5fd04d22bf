"""Re-score images with the active model version, in the background, keeping earlier predictions."""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from celery.exceptions import SoftTimeLimitExceeded

from django.conf import settings
from django.db import transaction
from django.db.models import Case, Count, F, IntegerField, Q, Value, When
from django.http import HttpRequest
from django.utils import timezone

from cases.models import LesionImage, Prediction
from cases import prediction_states as states
from cases import scoring
from classifier.dispatch import broker_connection, broker_down_reason, on_commit_or_fail, publish
from classifier.lifecycle import LifecycleError, audit_registry_event
from classifier.models import ModelVersion, RescoreJob
from classifier.registry import active_version, no_longer_active_reason

# Images one run of the re-scoring task handles: it creates and sends their predictions, then queues
# itself for the next chunk, so a worker of "inference,rescoring" takes the uploads (and beat sweeps)
# that arrived meanwhile between two chunks instead of after the whole archive
CHUNK = 200
RESCORE_TASK = "cases.tasks.rescore_images"
# The re-scoring task's Celery time limits, per chunk (it only creates and sends predictions; scoring is separate)
RESCORE_SOFT_TIME_LIMIT_S = 1800
RESCORE_TIME_LIMIT_S = RESCORE_SOFT_TIME_LIMIT_S + 100
START_AGAIN = "start the re-score again (images already queued are skipped)."
# A job still "running" this long after the hard time limit cannot be: Celery killed its task
STALE_MARGIN_S = 600


class RescoreRefused(LifecycleError):
    """A re-score of every image that one in progress already does, or that a page showing
    another active version asked for; the message says which and what to do."""


@dataclass(frozen=True)
class RescorePreview:
    """What re-scoring every image with a version would queue (its confirmation page)."""

    images: int  # every image in the archive, of every clinic
    to_queue: int  # those without the version's score, queued for it (the others are skipped)


def rescore_preview(*, version: ModelVersion) -> RescorePreview:
    """How many images a re-score of every image with ``version`` would find and queue: as
    `run_rescore` does, an image that has the version's first score (revision 0) is skipped,
    unless that score was never made because the version stopped being active meanwhile."""
    has_score = (Prediction.objects.filter(model_version=version, context_revision=0)
                 .exclude(status=Prediction.Status.FAILED, error=scoring.stale_rescore_reason(version.version)))
    images = LesionImage.objects.count()
    return RescorePreview(images=images, to_queue=images - has_score.values("image_id").distinct().count())


def start_rescore(*, user=None, image_ids: list[int] | None = None, request: HttpRequest | None = None,
                  expected_version_pk: int | None = None) -> RescoreJob:
    """Queue a re-scoring job for the chosen images (all when ``image_ids`` is empty).

    Refused (`RescoreRefused`, nothing queued) when the active version is not
    ``expected_version_pk`` (the one the confirmation page named, when given), and a re-score of
    every image while a job of the same version is queued or running: a double click or a second
    admin would otherwise start the same work twice. Both are checked with the version's row
    locked (an activation locks it too), so two requests at once cannot both pass. A re-score of
    chosen images (the image list's action) is not refused: that action has no way yet to show
    the refusal."""
    version = active_version()
    wanted = sorted(set(image_ids or []))
    with transaction.atomic():
        locked = ModelVersion.objects.select_for_update().get(pk=version.pk)
        if locked.status != ModelVersion.Status.ACTIVE or expected_version_pk not in (None, locked.pk):
            named = ModelVersion.objects.filter(pk=expected_version_pk or locked.pk).values_list("version", flat=True)
            now = ModelVersion.objects.filter(status=ModelVersion.Status.ACTIVE).values_list("version", flat=True)
            raise RescoreRefused(
                f"The active version is now {now.first() or 'none'}, not {named.first() or 'the one the page named'}: "
                f"it was rolled back or another version was activated meanwhile. Nothing was queued; reload the "
                f"page and confirm the re-score with the version active now.")
        busy = (RescoreJob.objects.filter(model_version=locked, status__in=[RescoreJob.Status.QUEUED,
                                                                            RescoreJob.Status.RUNNING])
                .order_by("created_at").first())
        if busy is not None and not wanted:
            raise RescoreRefused(
                f"A re-scoring job with {locked.version} is already {busy.get_status_display().lower()} (started "
                f"{timezone.localtime(busy.created_at):%Y-%m-%d %H:%M}); nothing was queued. Its progress shows "
                f"under \"Recent re-scoring jobs\"; start another once it has ended.")
        job = RescoreJob.objects.create(model_version=locked, image_ids=wanted, created_by=user)
        audit_registry_event(user, "rescore", locked, request=request,
                             new={"job": job.pk, "images": job.image_ids or "all"})
        on_commit_or_fail(lambda: enqueue(job.pk),
                          on_failure=lambda exc: fail_rescore(job_id=job.pk,
                                                              reason=broker_down_reason(exc, "The re-scoring job")))
    return job


def enqueue(job_id: int) -> None:
    """Send the job's task, failing fast (by name: cases.tasks imports this module)."""
    publish(RESCORE_TASK, [job_id])


def enqueue_chunk(job_id: int, *, after: int, done: int, until: int) -> None:
    """Send the job's task for its next chunk: the images after image ``after`` (up to ``until``),
    once ``done`` of them are queued (the run that finds the job's progress elsewhere does nothing)."""
    publish(RESCORE_TASK, [job_id, after, done, until])


class _NextChunkNotQueued(Exception):
    """The broker refused the message of the job's next chunk."""


def fail_rescore(*, job_id: int, reason: str) -> bool:
    """Mark a queued or running job failed with its reason (a finished job stays as it is)."""
    return bool(RescoreJob.objects.filter(pk=job_id, status__in=[RescoreJob.Status.QUEUED, RescoreJob.Status.RUNNING])
                .update(status=RescoreJob.Status.FAILED, error=reason, finished_at=timezone.now()))


def stopped_reason(exc: BaseException) -> str:
    """What a job whose task ended with ``exc`` shows in the admin (the hard time limit kills the
    task without running its own handlers: only its failure hook sees that)."""
    from celery.exceptions import TimeLimitExceeded

    if isinstance(exc, TimeLimitExceeded):
        return (f"The re-scoring task was stopped at its hard time limit ({RESCORE_TIME_LIMIT_S // 60} minutes); "
                f"{START_AGAIN}")
    return f"The re-scoring task stopped ({type(exc).__name__}: {exc}); {START_AGAIN}"


def _still_wanted(job_id: int) -> bool:
    """The job is still running and its version still the active one (a rollback or another
    activation fails the job; this also covers one that committed just before the job was taken)."""
    return RescoreJob.objects.filter(pk=job_id, status=RescoreJob.Status.RUNNING,
                                     model_version__status=ModelVersion.Status.ACTIVE).exists()


def run_rescore(*, job_id: int, after: int = 0, done: int = 0, until: int | None = None,
                chunk_size: int | None = None) -> int:
    """One chunk of the job: create a pending prediction with the job's version for each of the next
    ``chunk_size`` (default CHUNK) images after image ``after`` that lacks one, and send it; then
    queue the next chunk (`enqueue_chunk`), or mark the job done after its last. Returns how many
    images this run handled (0 when it was not the job's current chunk).

    The first chunk (the defaults) takes the job and fixes its images: those up to the last image at
    that moment (``until``), counted in ``total``. A chunk runs only while the job's progress
    (``queued``) is still ``done``, and moves it on, with the next chunk's message, in one
    transaction: a chunk delivered twice, or run again after its worker died, adds no prediction
    twice (the (image, model version, revision) uniqueness) and queues no second next chunk. A
    chunk whose next one the broker refuses ends the job failed with the reason (started again, it
    skips the images already queued).
    Each chunk restarts the stale-job sweep's clock (``started_at``). A job stopped meanwhile (a
    rollback or another activation fails it) runs no further chunk, and stays failed with the reason.
    """
    size = chunk_size or CHUNK
    claimed = RescoreJob.objects.filter(pk=job_id, status__in=[RescoreJob.Status.QUEUED, RescoreJob.Status.RUNNING],
                                        queued=done).update(status=RescoreJob.Status.RUNNING, started_at=timezone.now())
    if not claimed:
        return 0
    job = RescoreJob.objects.select_related("model_version").get(pk=job_id)
    if not _still_wanted(job_id):
        fail_rescore(job_id=job_id, reason=no_longer_active_reason(job.model_version.version))
        return 0
    images = LesionImage.objects.order_by("pk")
    if job.image_ids:
        images = images.filter(pk__in=job.image_ids)
    if until is None:  # the first chunk: the job's images are those there are now
        until = images.values_list("pk", flat=True).last() or 0
        RescoreJob.objects.filter(pk=job_id, queued=done).update(total=images.filter(pk__lte=until).count())
    ids = list(images.filter(pk__gt=after, pk__lte=until).values_list("pk", flat=True)[:size])
    if ids:
        with broker_connection() as connection:  # one per chunk, not one per image
            for image_id in ids:
                # the version's first score of the image (revision 0); corrections add later revisions
                prediction, created = Prediction.objects.get_or_create(
                    image_id=image_id, model_version=job.model_version, context_revision=0)
                if not created and _reopen_unscored(prediction, job.model_version):
                    prediction.enqueued_at = None
                if created or prediction.enqueued_at is None:  # a lost send stays pending: the sweep sends it
                    scoring.dispatch_prediction(prediction.pk, connection=connection, queue=scoring.RESCORE_QUEUE)
    handled = done + len(ids)
    more = len(ids) == size and images.filter(pk__gt=ids[-1], pk__lte=until).exists()
    # only the job's current chunk of a job still running moves on: one stopped meanwhile stays failed
    current = RescoreJob.objects.filter(pk=job_id, status=RescoreJob.Status.RUNNING, queued=done)
    try:
        with transaction.atomic():
            if not more:
                current.update(queued=handled, status=RescoreJob.Status.DONE, finished_at=timezone.now())
            elif current.update(queued=handled, started_at=timezone.now()):
                try:  # in the transaction: the next chunk cannot take the job before its progress is saved
                    enqueue_chunk(job_id, after=ids[-1], done=handled, until=until)
                except SoftTimeLimitExceeded:
                    raise
                except Exception as exc:
                    raise _NextChunkNotQueued(exc) from exc
    except _NextChunkNotQueued as lost:
        exc = lost.__cause__
        current.update(queued=handled)  # this chunk's predictions are made and sent
        fail_rescore(job_id=job_id, reason=(
            f"The re-scoring job's next chunk could not be queued after {handled} images: the "
            f"message broker (Redis) did not answer ({type(exc).__name__}: {exc}); {START_AGAIN}"))
    return len(ids)


def _reopen_unscored(prediction: Prediction, version: ModelVersion) -> bool:
    """A re-score of ``version`` that was not scored because the version stopped being active for a
    while (rolled back, then activated again) goes back to pending, to be sent again."""
    return (prediction.status == Prediction.Status.FAILED
            and prediction.error == scoring.stale_rescore_reason(version.version)
            and states.retry_failed(prediction.pk))


def sweep_stale_rescores(*, now: datetime | None = None) -> list[int]:
    """Fail, with the reason, the jobs that cannot still be queued or running; returns their ids.

    Running, in its first chunk (nothing queued yet): taken by a worker longer ago than the task's
    hard time limit plus STALE_MARGIN_S (the worker was killed, or the failure hook could not write).
    Running between chunks (some images queued): its next chunk waits in the rescoring queue, behind
    the scores its last chunk sent and every upload, as a queued job does: it is stale only when no
    worker took a chunk for as long as a queued job may wait (below; a later chunk whose worker was
    killed, its message not yet redelivered, is found then too). Queued: created longer ago
    than a job may wait behind the rescoring queue's own backlog (RESCORE_STALE_AFTER_S, at least
    that same limit): no worker consumes the queue, or the broker lost the message.
    """
    now = now or timezone.now()
    running_limit = RESCORE_TIME_LIMIT_S + STALE_MARGIN_S
    queued_limit = max(running_limit, int(settings.RESCORE_STALE_AFTER_S))
    running_before = now - timedelta(seconds=running_limit)
    stale = [
        (RescoreJob.Status.RUNNING,
         Q(queued=0, started_at__lt=running_before) | Q(started_at__isnull=True, created_at__lt=running_before),
         f"The re-scoring task stopped without finishing: it was still marked running {running_limit // 60} "
         f"minutes after a worker took it, past its time limit (the worker was stopped or killed); {START_AGAIN}"),
        (RescoreJob.Status.RUNNING,
         Q(queued__gt=0, started_at__lt=now - timedelta(seconds=queued_limit)),
         f"The re-scoring job stopped between chunks: no worker took its next chunk within {queued_limit / 3600:g} "
         f"hours of the last (the worker was stopped or killed, or the broker lost the message); {START_AGAIN}"),
        (RescoreJob.Status.QUEUED,
         Q(created_at__lt=now - timedelta(seconds=queued_limit)),
         f"No worker took the job within {queued_limit / 3600:g} hours: start a worker of the rescoring queue "
         f"(celery -A melanoma_site worker -Q inference,rescoring), then {START_AGAIN}"),
    ]
    failed: list[int] = []
    for status, old, reason in stale:
        rows = RescoreJob.objects.filter(old, status=status)
        for pk in list(rows.values_list("pk", flat=True)[:500]):
            # the same conditions in the UPDATE: a job a worker takes meanwhile is left alone
            if rows.filter(pk=pk).update(status=RescoreJob.Status.FAILED, error=reason, finished_at=now):
                failed.append(pk)
    return sorted(failed)


def scored_count(job: RescoreJob, *, predictions=None) -> int:
    """How many of the job's images have a finished prediction from the job's version (among
    ``predictions``, e.g. one clinic's; default all)."""
    base = Prediction.objects.all() if predictions is None else predictions
    done = base.filter(model_version=job.model_version, status="done")
    if job.image_ids:
        done = done.filter(image_id__in=job.image_ids)
    return done.count()


def disagreement_count(job: RescoreJob, *, predictions=None) -> int:
    """How many of the job's new scores disagree with a dermatologist's review of the same image
    (among ``predictions``, e.g. one clinic's; default all)."""
    base = Prediction.objects.all() if predictions is None else predictions
    rows = base.filter(model_version=job.model_version).exclude(review_disagreement="")
    if job.image_ids:
        rows = rows.filter(image_id__in=job.image_ids)
    return rows.count()


def job_counts(jobs, *, predictions=None) -> dict[int, tuple[int, int]]:
    """(``scored_count``, ``disagreement_count``) of each of ``jobs`` by job id, with the same
    definitions, in one grouped query whatever the number of jobs (the jobs' list). The rows are
    per version, and per image only for the images a job with a chosen list names: a job over all
    images sums its version's rows, a job over chosen images those of its images."""
    jobs = list(jobs)
    if not jobs:
        return {}
    base = Prediction.objects.all() if predictions is None else predictions
    chosen = {image for job in jobs for image in job.image_ids}
    chosen_versions = {job.model_version_id for job in jobs if job.image_ids}
    image = Case(When(Q(model_version_id__in=chosen_versions, image_id__in=chosen), then=F("image_id")),
                 default=Value(None), output_field=IntegerField())
    rows = (base.filter(model_version_id__in={job.model_version_id for job in jobs}).order_by()
            .values("model_version_id", key=image)
            .annotate(done=Count("pk", filter=Q(status="done")),
                      disagree=Count("pk", filter=~Q(review_disagreement=""))))
    counts: dict[int, tuple[int, int]] = {}
    rows = list(rows)
    for job in jobs:
        ids = set(job.image_ids)
        mine = [r for r in rows if r["model_version_id"] == job.model_version_id and (not ids or r["key"] in ids)]
        counts[job.pk] = (sum(r["done"] for r in mine), sum(r["disagree"] for r in mine))
    return counts
