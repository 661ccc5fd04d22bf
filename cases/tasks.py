"""Celery tasks of the clinical records: scoring images, the sweep of stuck predictions and
re-scoring. Thin wrappers that take primary keys and call plain functions (cases.scoring,
cases.rescoring); heavy imports (TensorFlow) happen inside those, in the worker's child.
"""
from __future__ import annotations

from datetime import timedelta

from celery import shared_task
from django.conf import settings
from django.db import InterfaceError, OperationalError

from cases.rescoring import run_rescore
from cases.scoring import run_prediction, sweep

# Transient: the database or broker hiccuped; the same task can simply run again later.
TRANSIENT_ERRORS = (OperationalError, InterfaceError, ConnectionError, TimeoutError)


@shared_task(
    bind=True,
    name="cases.tasks.score_image",
    acks_late=True,
    reject_on_worker_lost=True,
    autoretry_for=TRANSIENT_ERRORS,
    retry_backoff=2,
    retry_backoff_max=60,
    retry_jitter=True,
    max_retries=6,
    soft_time_limit=settings.CELERY_TASK_SOFT_TIME_LIMIT,
    time_limit=settings.CELERY_TASK_TIME_LIMIT,
)
def score_image(self, prediction_id: int) -> str:
    """Score one image's pending prediction (idempotent: safe to redeliver)."""
    # A redelivered message (worker died mid-task) or our own retry may find the row 'running'.
    resume = bool((self.request.delivery_info or {}).get("redelivered")) or self.request.retries > 0
    return run_prediction(prediction_id=int(prediction_id), resume=resume)


@shared_task(name="cases.tasks.sweep_pending", ignore_result=True, autoretry_for=TRANSIENT_ERRORS, max_retries=2)
def sweep_pending(stale_after_s: float | None = None, running_stale_after_s: float | None = None) -> int:
    """Periodic (beat): re-send predictions never enqueued, lost, or orphaned by a dead worker."""
    sent = sweep(
        stale_after=None if stale_after_s is None else timedelta(seconds=stale_after_s),
        running_stale_after=None if running_stale_after_s is None else timedelta(seconds=running_stale_after_s),
    )
    return len(sent)


@shared_task(
    name="cases.tasks.rescore_images",
    acks_late=True,
    autoretry_for=TRANSIENT_ERRORS,
    retry_backoff=2,
    max_retries=5,
    soft_time_limit=1800,
    time_limit=1900,
)
def rescore_images(job_id: int) -> int:
    """Queue predictions with the job's model version for the job's images (idempotent)."""
    return run_rescore(job_id=int(job_id))
