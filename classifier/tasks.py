"""Celery tasks: thin wrappers that take primary keys and call plain service functions.

Nothing heavy is imported at module level: workers fork, and TensorFlow must load in the child.
"""
from __future__ import annotations

from datetime import timedelta

from celery import shared_task
from django.conf import settings
from django.db import InterfaceError, OperationalError

# Transient: the database or broker hiccuped; the same task can simply run again later.
TRANSIENT_ERRORS = (OperationalError, InterfaceError, ConnectionError, TimeoutError)


@shared_task(
    bind=True,
    name="classifier.tasks.score_image",
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
    from cases.scoring import run_prediction

    # A redelivered message (worker died mid-task) or our own retry may find the row 'running'.
    resume = bool((self.request.delivery_info or {}).get("redelivered")) or self.request.retries > 0
    return run_prediction(prediction_id=int(prediction_id), resume=resume)


@shared_task(name="classifier.tasks.sweep_pending", ignore_result=True, autoretry_for=TRANSIENT_ERRORS, max_retries=2)
def sweep_pending(stale_after_s: float | None = None, running_stale_after_s: float | None = None) -> int:
    """Periodic (beat): re-send predictions never enqueued, lost, or orphaned by a dead worker."""
    from cases.scoring import sweep

    sent = sweep(
        stale_after=None if stale_after_s is None else timedelta(seconds=stale_after_s),
        running_stale_after=None if running_stale_after_s is None else timedelta(seconds=running_stale_after_s),
    )
    return len(sent)


@shared_task(
    bind=True,
    name="classifier.tasks.train_model",
    acks_late=True,
    soft_time_limit=settings.TRAINING_SOFT_TIME_LIMIT,
    time_limit=settings.TRAINING_TIME_LIMIT,
)
def train_model(self, version_id: int) -> str:
    """Train the registry version ``version_id`` (routed to the "training" queue by settings).

    Thin on purpose: the work lives in ``classifier.retraining.run_training(version_id=...)``.
    """
    from classifier.retraining import run_training

    return run_training(version_id=int(version_id))


@shared_task(
    name="classifier.tasks.rescore_images",
    acks_late=True,
    autoretry_for=TRANSIENT_ERRORS,
    retry_backoff=2,
    max_retries=5,
    soft_time_limit=1800,
    time_limit=1900,
)
def rescore_images(job_id: int) -> int:
    """Queue predictions with the job's model version for the job's images (idempotent)."""
    from classifier.rescoring import run_rescore

    return run_rescore(job_id=int(job_id))
