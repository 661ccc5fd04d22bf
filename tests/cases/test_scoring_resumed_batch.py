"""A task redelivered after its worker died (the same task id, ``run_by``) scores its own image alone:
the image that stopped the worker may be any of the batch, so its batch mates go back to pending
with their attempts as they were, instead of each paying an attempt per crash until they fail."""
from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from cases import scoring
from cases.models import Prediction
from tests.support.scoring_stubs import counted_passes, flat_image_prediction

pytestmark = pytest.mark.django_db


@pytest.fixture
def passes(monkeypatch, media_root) -> list[int]:
    """How many images each forward pass of a stand-in model saw."""
    return counted_passes(monkeypatch)


def _running(prediction: Prediction, run_by: str, *, attempts: int = 1) -> Prediction:
    """As a run ``run_by`` left it when its worker died: running, ``attempts`` started."""
    Prediction.objects.filter(pk=prediction.pk).update(status="running", run_by=run_by, worker="w1",
                                                       started_at=timezone.now() - timedelta(seconds=5),
                                                       attempts=attempts)
    prediction.refresh_from_db()
    return prediction


def test_a_redelivered_run_scores_its_image_alone_and_gives_its_batch_mate_back(world, model_version, passes,
                                                                                 settings):
    settings.SECONDLOOK_SCORE_BATCH = 8
    own = _running(flat_image_prediction(world, model_version, 0, 120), "t1")
    mate = _running(flat_image_prediction(world, model_version, 1, 130), "t1")
    waiting = flat_image_prediction(world, model_version, 2, 140)  # pending and sent: a batch mate otherwise
    elsewhere = _running(flat_image_prediction(world, model_version, 3, 150), "t2")  # another run's

    assert scoring.run_prediction(prediction_id=own.pk, run_by="t1", worker="w2") == "done"

    assert passes == [1]  # the forward pass saw the own image only
    own.refresh_from_db()
    assert (own.status, own.attempts) == ("done", 2)
    mate.refresh_from_db()
    assert (mate.status, mate.attempts, mate.run_by, mate.worker, mate.started_at) == ("pending", 1, "", "", None)
    assert mate.enqueued_at is None  # the sweep sends it again: its own task may have come and gone
    waiting.refresh_from_db()
    assert (waiting.status, waiting.attempts) == ("pending", 0)  # not claimed either
    elsewhere.refresh_from_db()
    assert (elsewhere.status, elsewhere.run_by, elsewhere.attempts) == ("running", "t2", 1)


def test_the_released_mate_is_scored_by_its_own_task_and_a_fresh_run_still_batches(world, model_version, passes,
                                                                                    settings):
    settings.SECONDLOOK_SCORE_BATCH = 8
    own = _running(flat_image_prediction(world, model_version, 0, 120), "t1")
    mate = _running(flat_image_prediction(world, model_version, 1, 130), "t1")
    scoring.run_prediction(prediction_id=own.pk, run_by="t1")
    # a fresh upload's first run takes the pending, sent images along as before
    fresh = flat_image_prediction(world, model_version, 2, 140)
    Prediction.objects.filter(pk=mate.pk).update(enqueued_at=timezone.now())  # the sweep sent it again
    assert scoring.run_prediction(prediction_id=fresh.pk, run_by="t3") == "done"
    assert passes == [1, 2]
    mate.refresh_from_db()
    assert (mate.status, mate.attempts) == ("done", 2)


def test_a_run_that_is_not_resumed_releases_nothing(world, model_version, passes, settings):
    """A first run (attempts 1 once claimed) claims its mates as before; rows of other runs are not touched."""
    settings.SECONDLOOK_SCORE_BATCH = 2
    own = flat_image_prediction(world, model_version, 0, 120)
    elsewhere = _running(flat_image_prediction(world, model_version, 1, 130), "t2")
    mate = flat_image_prediction(world, model_version, 2, 140)
    assert scoring.run_prediction(prediction_id=own.pk, run_by="t1") == "done"
    assert passes == [2]
    assert Prediction.objects.get(pk=mate.pk).status == "done"
    assert Prediction.objects.get(pk=elsewhere.pk).status == "running"
