"""Celery tasks of the model registry: thin wrappers that take primary keys and call plain functions.

Nothing heavy is imported at module level: workers fork, and TensorFlow must load in the child.
"""
from __future__ import annotations

from celery import shared_task
from django.conf import settings

from classifier.retraining import run_training, sweep_stale_runs
from classifier.warmup import warm_version


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
    With acks_late and reject_on_worker_lost, a worker killed mid-run (out of memory) gets the
    message redelivered: the broker's flag tells run_training to fail that run at once, with why.
    """
    redelivered = bool((self.request.delivery_info or {}).get("redelivered"))
    return run_training(version_id=int(version_id), redelivered=redelivered)


@shared_task(name="classifier.tasks.sweep_training_runs", ignore_result=True, soft_time_limit=60, time_limit=90)
def sweep_training_runs() -> list[str]:
    """Periodic (beat): fail the training runs that cannot still be running, with the reason."""
    return sweep_stale_runs()


@shared_task(name="classifier.tasks.warm_model", ignore_result=True, soft_time_limit=120, time_limit=180)
def warm_model(version_id: int) -> str:
    """Load a newly active version on this inference worker before uploads need it (best effort;
    idempotent: a second run finds the model cached)."""
    return warm_version(version_id=int(version_id))
