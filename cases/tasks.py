"""Celery tasks of the clinical records: scoring images, the sweep of stuck predictions,
re-scoring and the sweep of stale re-scoring jobs. Thin wrappers that take primary keys and call
plain functions (cases.scoring, cases.rescoring); heavy imports (TensorFlow) happen inside those, in the worker's child.
"""
from __future__ import annotations

import logging
from datetime import timedelta

from celery import Task, shared_task
from celery.exceptions import SoftTimeLimitExceeded
from celery.signals import worker_ready
from django.conf import settings

from cases.rescoring import (RESCORE_SOFT_TIME_LIMIT_S, RESCORE_TIME_LIMIT_S, START_AGAIN, fail_rescore,
                             run_rescore, stopped_reason, sweep_stale_rescores)
from cases.scoring import TRANSIENT_ERRORS, requeue_previous_incarnation, run_prediction, sweep

log = logging.getLogger(__name__)



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
    """Score one image's pending prediction (idempotent: safe to redeliver). The task id marks
    the run: a redelivered message (its worker died) or a retry resumes its own running rows."""
    return run_prediction(prediction_id=int(prediction_id), run_by=self.request.id or "",
                          worker=self.request.hostname or "")


# No retry of its own (no autoretry_for): beat sends a new sweep every SWEEP_INTERVAL_SECONDS, and
# that one is the retry. Retries of a failed sweep would only pile up behind it, each doing the
# same work again, with no back-off and no expiry, while the database or broker is down.
@shared_task(name="cases.tasks.sweep_pending", ignore_result=True)
def sweep_pending(stale_after_s: float | None = None, running_stale_after_s: float | None = None) -> int:
    """Periodic (beat): re-send predictions never enqueued, lost, or orphaned by a dead worker."""
    sent = sweep(
        stale_after=None if stale_after_s is None else timedelta(seconds=stale_after_s),
        running_stale_after=None if running_stale_after_s is None else timedelta(seconds=running_stale_after_s),
    )
    return len(sent)


class RescoreTask(Task):
    """The re-scoring task's base: whatever ends it failed, its job ends failed too."""

    def on_failure(self, exc, task_id, args, kwargs, einfo) -> None:
        """Called after the task raised, and by the worker's parent process when the hard time limit
        killed the task (its own except clauses never ran). A job the task already failed with a
        more precise reason keeps that one (fail_rescore changes queued or running jobs only)."""
        job_id = args[0] if args else (kwargs or {}).get("job_id")
        if job_id is None:
            return
        try:
            fail_rescore(job_id=int(job_id), reason=stopped_reason(exc))
        except Exception:  # the database is down too: the stale-job sweep fails it later
            log.exception("could not mark re-scoring job %s failed", job_id)


@shared_task(
    bind=True,
    base=RescoreTask,
    name="cases.tasks.rescore_images",
    acks_late=True,
    autoretry_for=TRANSIENT_ERRORS,
    retry_backoff=2,
    max_retries=5,
    soft_time_limit=RESCORE_SOFT_TIME_LIMIT_S,
    time_limit=RESCORE_TIME_LIMIT_S,
)
def rescore_images(self, job_id: int, after: int = 0, done: int = 0, until: int | None = None) -> int:
    """One chunk of a re-scoring job (cases.rescoring.run_rescore): queue predictions with the job's
    model version for its next images, then queue the task again for the chunk after (idempotent).
    A job that cannot finish ends failed with the reason, never "running" for ever."""
    job_id = int(job_id)
    again = START_AGAIN
    try:
        return run_rescore(job_id=job_id, after=int(after), done=int(done),
                           until=None if until is None else int(until))
    except TRANSIENT_ERRORS as exc:
        if self.request.retries < self.max_retries:
            raise  # autoretry_for sends it again later
        fail_rescore(job_id=job_id, reason=f"The database or broker kept failing ({type(exc).__name__}: {exc}); {again}")
        raise
    except SoftTimeLimitExceeded:
        fail_rescore(job_id=job_id, reason=f"Stopped after {RESCORE_SOFT_TIME_LIMIT_S // 60} minutes; {again}")
        raise
    except Exception as exc:
        fail_rescore(job_id=job_id, reason=f"{type(exc).__name__}: {exc}")
        raise


@shared_task(name="cases.tasks.sweep_rescore_jobs", ignore_result=True, soft_time_limit=60, time_limit=90)
def sweep_rescore_jobs() -> list[int]:
    """Periodic (beat): fail the re-scoring jobs that cannot still be queued or running, with the reason."""
    return sweep_stale_rescores()


@worker_ready.connect
def _resume_after_restart(sender=None, **kwargs) -> None:
    """A worker that starts under the name of one that died re-queues what that one was scoring
    (a ping cannot tell them apart), then asks for a sweep, so nothing waits for the hard time limit."""
    hostname = getattr(sender, "hostname", "") or ""
    try:
        if requeue_previous_incarnation(hostname):
            sweep_pending.delay()
            # and once their back-off has passed (beat sweeps too, but maybe only every 30 s)
            sweep_pending.apply_async(countdown=settings.SCORING_BACKOFF_S + 1)
    except Exception:  # never stop a worker from starting
        log.exception("could not re-queue the predictions of %s's previous run", hostname)
