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
    assert states.start(prediction.pk, now=now, stale_before=now - timedelta(minutes=3), max_attempts=3, run_by="t1")
    row = _get(prediction)
    assert (row.status, row.attempts) == ("running", 1)
    # another task while the first still runs: refused (a redelivery of t1 itself is not)
    assert not states.start(prediction.pk, now=now, stale_before=now - timedelta(minutes=3), max_attempts=3, run_by="t2")
    assert states.finish(prediction.pk, started_at=now, melanoma_probability=0.3, malignancy_score=0.4, flagged=False)
    row = _get(prediction)
    assert (row.status, row.melanoma_probability, row.error) == ("done", 0.3, "")
    assert row.finished_at is not None
    # nothing moves a finished prediction: not a late finish, fail, release or start
    assert not states.finish(prediction.pk, started_at=now, melanoma_probability=0.9)
    assert not states.fail(prediction.pk, started_at=now, reason="late")
    assert not states.release(prediction.pk, started_at=now)
    assert not states.start(prediction.pk, now=now, stale_before=now, max_attempts=3, run_by="t1")
    assert _get(prediction).melanoma_probability == 0.3


def test_a_redelivery_or_a_stale_run_takes_over_until_the_attempts_are_used(prediction):
    first = timezone.now() - timedelta(minutes=10)
    assert states.start(prediction.pk, now=first, stale_before=first - timedelta(minutes=3), max_attempts=3, run_by="t1")
    second = timezone.now()
    assert states.start(prediction.pk, now=second, stale_before=second - timedelta(minutes=3), max_attempts=3,
                        run_by="t2")  # first is stale
    # the first run's late result is not stored: it is no longer the running one
    assert not states.finish(prediction.pk, started_at=first, melanoma_probability=0.9)
    third = timezone.now()
    # t2's message redelivered (its worker died): it takes its own row over at once
    assert states.start(prediction.pk, now=third, stale_before=third - timedelta(minutes=3), max_attempts=3, run_by="t2")
    assert _get(prediction).attempts == 3
    assert not states.start(prediction.pk, now=third, stale_before=timezone.now(), max_attempts=3, run_by="t2")


def test_fail_then_retry(prediction):
    now = timezone.now()
    assert not states.retry_failed(prediction.pk)  # pending, not failed
    states.start(prediction.pk, now=now, stale_before=now, max_attempts=3)
    assert states.fail(prediction.pk, started_at=now, reason="Scoring error: x" * 300)
    row = _get(prediction)
    assert row.status == "failed" and len(row.error) == 2000
    assert states.retry_failed(prediction.pk)
    row = _get(prediction)
    assert (row.status, row.error, row.enqueued_at, row.started_at, row.attempts) == ("pending", "", None, None, 0)


def test_batch_mate_start_and_release(prediction):
    now = timezone.now()
    assert not states.start_batch_mate(prediction.pk, now=now, max_attempts=3)  # never sent: no task of its own
    states.claim_dispatch(prediction.pk, now=now)
    assert states.start_batch_mate(prediction.pk, now=now, max_attempts=3, run_by="t1")
    # t1 redelivered resumes its batch mate; another task does not
    assert not states.start_batch_mate(prediction.pk, now=now, max_attempts=3, run_by="t2")
    assert states.start_batch_mate(prediction.pk, now=now, max_attempts=3, run_by="t1")
    assert states.release(prediction.pk, started_at=now)
    row = _get(prediction)
    assert (row.status, row.attempts, row.started_at) == ("pending", 1, None)


def test_requeue_backs_off_and_gives_up_after_the_last_attempt(prediction):
    started = timezone.now() - timedelta(minutes=5)
    states.start(prediction.pk, now=started, stale_before=started, max_attempts=2, run_by="t1", worker="w1")
    now = timezone.now()
    assert not states.requeue(prediction.pk, started_before=started - timedelta(seconds=1), now=now,
                              max_attempts=2, backoff_s=5)  # started after the bound
    assert not states.requeue(prediction.pk, started_before=now, now=now, max_attempts=2, backoff_s=5,
                              worker="w2")  # another worker's
    assert states.requeue(prediction.pk, started_before=now, now=now, max_attempts=2, backoff_s=5, worker="w1")
    row = _get(prediction)
    assert (row.status, row.enqueued_at, row.run_by, row.worker) == ("pending", None, "", "")
    assert row.not_before == now + timedelta(seconds=5) and "sent again" in row.error
    assert states.backoff(3, base_s=5) == timedelta(seconds=20) and states.backoff(30, base_s=5) == timedelta(minutes=10)
    states.start(prediction.pk, now=now, stale_before=now, max_attempts=2, run_by="t2", worker="w1")
    assert states.requeue(prediction.pk, started_before=timezone.now(), now=timezone.now(), max_attempts=2, backoff_s=5)
    row = _get(prediction)
    assert row.status == "failed" and "stopped 2 times" in row.error
    assert not states.start(prediction.pk, now=now, stale_before=timezone.now(), max_attempts=2)
