"""The prediction state machine: every change of a prediction's status, each one conditional UPDATE.

    pending --start--> running --finish--> done
       ^                  |  \\--fail----> failed --retry--> pending
       |                  |  \\--give_up-> failed (its worker died max_attempts times)
       +----release-------+   (a batch mate this task could not score, or one its resumed
       |                  |    run leaves out: release_batch_mates)
       +----requeue-------+   (its worker died: no longer alive, or past the hard time limit;
                               not sent again before a back-off that doubles per attempt)

A pending prediction is also *dispatched* (``enqueued_at`` set) once its task is sent: claiming
the dispatch is conditional too, so an upload and a concurrent sweep never both send it.

Each function returns whether it changed the row: False means another writer (a second worker, a
redelivered task, the sweep) got there first, and the caller must not act as if it had won.
"""
from __future__ import annotations

from datetime import datetime, timedelta

from django.db.models import F, Q
from django.utils import timezone

from cases.models import Prediction

Status = Prediction.Status


def _rows(prediction_id: int, *conditions: Q, **lookups):
    return Prediction.objects.filter(*conditions, pk=prediction_id, **lookups)


def claim_dispatch(prediction_id: int, *, now: datetime) -> bool:
    """Pending and not yet sent: mark it sent at ``now`` (before the task is published)."""
    return bool(_rows(prediction_id, status=Status.PENDING, enqueued_at__isnull=True).update(enqueued_at=now))


def release_dispatch(prediction_id: int, *, enqueued_at: datetime) -> bool:
    """Undo a dispatch claim made at ``enqueued_at`` (the publish failed, or the sweep re-sends a
    lost message), so that the prediction counts as never sent."""
    return bool(_rows(prediction_id, status=Status.PENDING, enqueued_at=enqueued_at).update(enqueued_at=None))


def start(prediction_id: int, *, now: datetime, stale_before: datetime, max_attempts: int,
          run_by: str = "", worker: str = "") -> bool:
    """pending -> running, claimed by task run ``run_by`` on ``worker``, while fewer than
    ``max_attempts`` runs have started. A running row is taken over when it started before
    ``stale_before`` (its worker must be dead) or when ``run_by`` claimed it already (the same
    message, redelivered after its worker died)."""
    claimable = Q(status=Status.PENDING) | Q(status=Status.RUNNING, started_at__lt=stale_before)
    if run_by:
        claimable |= Q(status=Status.RUNNING, run_by=run_by)
    return bool(_rows(prediction_id, claimable, attempts__lt=max_attempts).update(
        status=Status.RUNNING, started_at=now, finished_at=None, attempts=F("attempts") + 1, error="",
        run_by=run_by, worker=worker, not_before=None))


def start_batch_mate(prediction_id: int, *, now: datetime, max_attempts: int, run_by: str = "",
                     worker: str = "") -> bool:
    """pending (already sent) -> running, for a prediction another task scores in its batch; or
    one that ``run_by`` itself claimed as a batch mate already. (A run resumed after its worker
    died claims none: cases.scoring.run_prediction releases them with ``release_batch_mates``.)"""
    claimable = Q(status=Status.PENDING, enqueued_at__isnull=False)
    if run_by:
        claimable |= Q(status=Status.RUNNING, run_by=run_by)
    return bool(_rows(prediction_id, claimable, attempts__lt=max_attempts).update(
        status=Status.RUNNING, started_at=now, finished_at=None, attempts=F("attempts") + 1, error="",
        run_by=run_by, worker=worker, not_before=None))


def release_batch_mates(run_by: str, *, own_id: int) -> int:
    """running -> pending and not sent, for every batch mate task run ``run_by`` claimed before its
    worker died (all its running rows but ``own_id``), their attempts kept: the resumed run scores its
    own image alone, so that an image that stops the worker costs its mates no further attempt, and
    the sweep sends them again (their own task may have come and gone while they ran). One UPDATE;
    returns how many it released."""
    if not run_by:
        return 0
    return Prediction.objects.filter(status=Status.RUNNING, run_by=run_by).exclude(pk=own_id).update(
        status=Status.PENDING, started_at=None, enqueued_at=None, run_by="", worker="")


def release(prediction_id: int, *, started_at: datetime) -> bool:
    """running -> pending for a batch mate this task could not score (its own task will)."""
    return bool(_rows(prediction_id, status=Status.RUNNING, started_at=started_at).update(
        status=Status.PENDING, started_at=None, attempts=F("attempts") - 1))


def finish(prediction_id: int, *, started_at: datetime, **results) -> bool:
    """running (this run) -> done, storing ``results`` (scores, flags, assessment, heatmap...)."""
    return bool(_rows(prediction_id, status=Status.RUNNING, started_at=started_at).update(
        status=Status.DONE, finished_at=timezone.now(), error="", **results))


def fail(prediction_id: int, *, started_at: datetime, reason: str) -> bool:
    """running (this run) -> failed, with the reason shown to users."""
    return bool(_rows(prediction_id, status=Status.RUNNING, started_at=started_at).update(
        status=Status.FAILED, error=reason[:2000], finished_at=timezone.now()))


def backoff(attempts: int, *, base_s: float) -> timedelta:
    """How long a prediction whose worker died waits before it is sent again: ``base_s`` after
    the first attempt, doubling with each further one, at most 10 minutes."""
    return timedelta(seconds=min(600.0, base_s * 2 ** max(0, attempts - 1)))


def requeue(prediction_id: int, *, started_before: datetime, now: datetime, max_attempts: int,
            backoff_s: float, worker: str | None = None) -> bool:
    """running since before ``started_before`` (on ``worker``, when given), whose worker died ->
    pending and not sent, not before the back-off; or -> failed (`give_up`) once it has used its
    ``max_attempts``."""
    lookups = {"status": Status.RUNNING, "started_at__lt": started_before}
    if worker is not None:
        lookups["worker"] = worker
    row = _rows(prediction_id, **lookups).values_list("attempts", flat=True).first()
    if row is None:
        return False
    if row >= max_attempts:
        return give_up(prediction_id, attempts=row, **lookups)
    return bool(_rows(prediction_id, attempts=row, **lookups).update(
        status=Status.PENDING, enqueued_at=None, run_by="", worker="",
        not_before=now + backoff(row, base_s=backoff_s),
        error="The worker stopped while scoring this image; it is sent again."))


def give_up(prediction_id: int, *, attempts: int, **lookups) -> bool:
    """pending or running -> failed after ``attempts`` runs that never finished (each time its
    worker died: the image itself may crash the model)."""
    lookups.setdefault("status__in", [Status.PENDING, Status.RUNNING])
    return bool(_rows(prediction_id, **lookups).update(
        status=Status.FAILED, finished_at=timezone.now(), run_by="",
        error=(f"Scoring stopped {attempts} times without a result (the worker stopped each time), so it "
               "was not tried again. The image may be one the model cannot process; check it, then retry.")))


def retry_failed(prediction_id: int) -> bool:
    """failed -> pending and not sent, with its attempts counted afresh (a clinician asked to try again)."""
    return bool(_rows(prediction_id, status=Status.FAILED).update(
        status=Status.PENDING, error="", enqueued_at=None, started_at=None, finished_at=None, attempts=0,
        not_before=None, run_by="", worker=""))
