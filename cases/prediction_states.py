"""The prediction state machine: every change of a prediction's status, each one conditional UPDATE.

    pending --start--> running --finish--> done
       ^                  |  \\--fail----> failed --retry--> pending
       |                  |
       +----release-------+   (a batch mate this task could not score)
       +----requeue_stuck-+   (its worker died: running for longer than the hard time limit)

A pending prediction is also *dispatched* (``enqueued_at`` set) once its task is sent: claiming
the dispatch is conditional too, so an upload and a concurrent sweep never both send it.

Each function returns whether it changed the row: False means another writer (a second worker, a
redelivered task, the sweep) got there first, and the caller must not act as if it had won.
"""
from __future__ import annotations

from datetime import datetime

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


def start(prediction_id: int, *, now: datetime, stale_before: datetime, resume: bool = False) -> bool:
    """pending -> running. A running row is taken over when it started before ``stale_before``
    (its worker must be dead) or when ``resume`` (this delivery is a redelivery or retry)."""
    claimable = Q(status=Status.PENDING) | Q(status=Status.RUNNING, started_at__lt=stale_before)
    if resume:
        claimable |= Q(status=Status.RUNNING)
    return bool(_rows(prediction_id, claimable).update(
        status=Status.RUNNING, started_at=now, finished_at=None, attempts=F("attempts") + 1, error=""))


def start_batch_mate(prediction_id: int, *, now: datetime) -> bool:
    """pending (already sent) -> running, for a prediction another task scores in its batch."""
    return bool(_rows(prediction_id, status=Status.PENDING, enqueued_at__isnull=False).update(
        status=Status.RUNNING, started_at=now, finished_at=None, attempts=F("attempts") + 1, error=""))


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


def requeue_stuck(prediction_id: int, *, started_before: datetime) -> bool:
    """running since before ``started_before`` (its worker died) -> pending and not sent."""
    return bool(_rows(prediction_id, status=Status.RUNNING, started_at__lt=started_before).update(
        status=Status.PENDING, enqueued_at=None, error="Worker stopped while scoring; re-queued."))


def retry_failed(prediction_id: int) -> bool:
    """failed -> pending and not sent (a clinician asked to try again)."""
    return bool(_rows(prediction_id, status=Status.FAILED).update(
        status=Status.PENDING, error="", enqueued_at=None, started_at=None, finished_at=None))
