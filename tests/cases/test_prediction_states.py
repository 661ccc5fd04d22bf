"""Each transition of the prediction state machine applies from its own state only, in one
conditional UPDATE: a second writer that arrives late changes nothing."""
from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from cases import prediction_states as states
from cases.models import LesionImage, Prediction

pytestmark = pytest.mark.django_db


@pytest.fixture
def prediction(world, model_version) -> Prediction:
    image = LesionImage.objects.create(lesion=world.lesion_a, file="images/s.png", sha256="5" * 64, size_bytes=10,
                                       width=64, height=64, uploaded_by=world.clin_a)
    return Prediction.objects.create(image=image, model_version=model_version)


def _get(prediction: Prediction) -> Prediction:
    return Prediction.objects.get(pk=prediction.pk)


def test_dispatch_is_claimed_once_and_can_be_released(prediction):
    now = timezone.now()
    assert states.claim_dispatch(prediction.pk, now=now)
    assert not states.claim_dispatch(prediction.pk, now=now)  # a concurrent sweep loses
    assert not states.release_dispatch(prediction.pk, enqueued_at=now - timedelta(seconds=1))  # not its claim
    assert states.release_dispatch(prediction.pk, enqueued_at=now)
    assert _get(prediction).enqueued_at is None


def test_start_finish_and_a_late_second_worker(prediction):
    now = timezone.now()
    assert states.start(prediction.pk, now=now, stale_before=now - timedelta(minutes=3))
    row = _get(prediction)
    assert (row.status, row.attempts) == ("running", 1)
    # a second delivery while the first still runs: refused unless it is a redelivery
    assert not states.start(prediction.pk, now=now, stale_before=now - timedelta(minutes=3))
    assert states.finish(prediction.pk, started_at=now, melanoma_probability=0.3, malignancy_score=0.4, flagged=False)
    row = _get(prediction)
    assert (row.status, row.melanoma_probability, row.error) == ("done", 0.3, "")
    assert row.finished_at is not None
    # nothing moves a finished prediction: not a late finish, fail, release or start
    assert not states.finish(prediction.pk, started_at=now, melanoma_probability=0.9)
    assert not states.fail(prediction.pk, started_at=now, reason="late")
    assert not states.release(prediction.pk, started_at=now)
    assert not states.start(prediction.pk, now=now, stale_before=now, resume=True)
    assert _get(prediction).melanoma_probability == 0.3


def test_a_redelivery_or_a_stale_run_takes_over(prediction):
    first = timezone.now() - timedelta(minutes=10)
    assert states.start(prediction.pk, now=first, stale_before=first - timedelta(minutes=3))
    second = timezone.now()
    assert states.start(prediction.pk, now=second, stale_before=second - timedelta(minutes=3))  # first is stale
    # the first run's late result is not stored: it is no longer the running one
    assert not states.finish(prediction.pk, started_at=first, melanoma_probability=0.9)
    third = timezone.now()
    assert states.start(prediction.pk, now=third, stale_before=third - timedelta(minutes=3), resume=True)
    assert _get(prediction).attempts == 3


def test_fail_then_retry(prediction):
    now = timezone.now()
    assert not states.retry_failed(prediction.pk)  # pending, not failed
    states.start(prediction.pk, now=now, stale_before=now)
    assert states.fail(prediction.pk, started_at=now, reason="Scoring error: x" * 300)
    row = _get(prediction)
    assert row.status == "failed" and len(row.error) == 2000
    assert states.retry_failed(prediction.pk)
    row = _get(prediction)
    assert (row.status, row.error, row.enqueued_at, row.started_at) == ("pending", "", None, None)


def test_batch_mate_start_and_release(prediction):
    now = timezone.now()
    assert not states.start_batch_mate(prediction.pk, now=now)  # never sent: its own task does not exist
    states.claim_dispatch(prediction.pk, now=now)
    assert states.start_batch_mate(prediction.pk, now=now)
    assert states.release(prediction.pk, started_at=now)
    row = _get(prediction)
    assert (row.status, row.attempts, row.started_at) == ("pending", 0, None)


def test_requeue_stuck_only_when_older_than_the_limit(prediction):
    started = timezone.now() - timedelta(minutes=5)
    states.start(prediction.pk, now=started, stale_before=started)
    assert not states.requeue_stuck(prediction.pk, started_before=started - timedelta(seconds=1))
    assert states.requeue_stuck(prediction.pk, started_before=timezone.now())
    row = _get(prediction)
    assert (row.status, row.enqueued_at) == ("pending", None) and "re-queued" in row.error
