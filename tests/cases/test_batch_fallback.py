"""One bad image never fails its batch mates: when a batch's forward pass fails (not a transient
error, not the time limit), the mates go back to pending for their own tasks, and the task's own
image is scored alone once; only an image that fails alone is failed, with the error named."""
from __future__ import annotations


import pytest
from celery.exceptions import SoftTimeLimitExceeded
from django.core.files.storage import default_storage
from django.db import OperationalError

from cases import scoring
from cases.models import Prediction
from tests.cases.test_batch_scoring import R
from tests.support.scoring_stubs import flat_image_prediction

pytestmark = pytest.mark.django_db

POISON = 50  # the grey level of the image the stand-in model cannot process


@pytest.fixture
def passes(monkeypatch) -> list[int]:
    """A stand-in classifier whose whole forward pass raises when any image in it is the poison one
    (as a model error or a MemoryError caused by one image would); the sizes of its passes."""
    sizes: list[int] = []

    def predict_images(model, images, contexts=None):
        sizes.append(len(images))
        if any(int(pixels[0, 0, 0]) == POISON for pixels in images):
            raise ValueError("cannot process an image of this batch")
        return [R() for _ in images]

    monkeypatch.setattr("mlcore.model_store.get_model", lambda path: object())
    monkeypatch.setattr("mlcore.inference.predict_images", predict_images)
    monkeypatch.setattr("mlcore.explain.gradcam_overlay_png", lambda *a, **k: None)
    return sizes


def _pred(world, mv, i: int, grey: int) -> Prediction:
    return flat_image_prediction(world, mv, i, grey, prefix="f")


def _released(prediction: Prediction) -> bool:
    prediction.refresh_from_db()
    return (prediction.status, prediction.attempts, prediction.error, prediction.started_at) == ("pending", 0, "",
                                                                                                None)


def test_a_mates_bad_image_does_not_fail_the_own_which_is_scored_alone(world, model_version, passes, settings):
    settings.SECONDLOOK_SCORE_BATCH = 4
    own, bad, good = (_pred(world, model_version, 0, grey=120), _pred(world, model_version, 1, grey=POISON),
                      _pred(world, model_version, 2, grey=130))
    assert scoring.run_prediction(prediction_id=own.pk) == "done"
    assert passes == [3, 1]  # the batch, then the own image alone
    own.refresh_from_db()
    assert own.status == "done" and own.melanoma_probability == pytest.approx(0.1) and own.attempts == 1
    assert _released(bad) and _released(good)  # back to their own tasks, neither failed

    # the bad image's own task: its batch (with the good one) fails, then it fails alone, in words
    assert scoring.run_prediction(prediction_id=bad.pk) == "failed"
    assert passes == [3, 1, 2, 1]
    bad.refresh_from_db()
    assert bad.status == "failed" and bad.error == "Scoring error: ValueError: cannot process an image of this batch"
    assert _released(good)
    assert scoring.run_prediction(prediction_id=good.pk) == "done" and passes[-1] == 1


def test_the_own_bad_image_fails_alone_and_its_mates_go_back_to_pending(world, model_version, passes, settings):
    settings.SECONDLOOK_SCORE_BATCH = 4
    own, mates = _pred(world, model_version, 0, grey=POISON), [_pred(world, model_version, i, grey=100 + i)
                                                              for i in (1, 2)]
    assert scoring.run_prediction(prediction_id=own.pk) == "failed"
    assert passes == [3, 1]
    own.refresh_from_db()
    assert own.status == "failed" and "ValueError: cannot process an image of this batch" in own.error
    assert all(_released(mate) for mate in mates)


def test_a_lone_image_that_fails_is_failed_at_once_with_the_error_named(world, model_version, passes, monkeypatch):
    def out_of_memory(model, images, contexts=None):
        passes.append(len(images))
        raise MemoryError("cannot allocate 2.1 GiB for the activations")

    monkeypatch.setattr("mlcore.inference.predict_images", out_of_memory)
    lone = _pred(world, model_version, 0, grey=120)
    assert scoring.run_prediction(prediction_id=lone.pk) == "failed"
    assert passes == [1]  # no second pass: it was alone already
    lone.refresh_from_db()
    assert lone.status == "failed"
    assert lone.error == "Scoring error: MemoryError: cannot allocate 2.1 GiB for the activations"


def test_an_unreadable_own_image_and_a_failed_batch_of_mates(world, model_version, passes, settings):
    """The own image could not be read (failed with that reason); the mates' pass fails: the mates
    go back to pending, and there is nothing left to score alone."""
    settings.SECONDLOOK_SCORE_BATCH = 4
    own = _pred(world, model_version, 0, grey=120)
    default_storage.delete(own.image.file.name)
    mates = [_pred(world, model_version, 1, grey=POISON), _pred(world, model_version, 2, grey=130)]
    assert scoring.run_prediction(prediction_id=own.pk) == "failed"
    assert passes == [2]
    own.refresh_from_db()
    assert own.status == "failed" and own.error.startswith("Stored image could not be read")
    assert all(_released(mate) for mate in mates)


@pytest.mark.parametrize("error", [OperationalError("server closed the connection unexpectedly"),
                                   SoftTimeLimitExceeded()])
def test_a_transient_error_or_the_time_limit_is_not_retried_alone(world, model_version, passes, settings,
                                                                   monkeypatch, error):
    """A database hiccup is the task's retry's (its rows stay running, for it to resume); the time
    limit fails the own image and releases the mates, as before: no second pass either way."""
    settings.SECONDLOOK_SCORE_BATCH = 4

    def interrupted(model, images, contexts=None):
        passes.append(len(images))
        raise error

    monkeypatch.setattr("mlcore.inference.predict_images", interrupted)
    own, mate = _pred(world, model_version, 0, grey=120), _pred(world, model_version, 1, grey=130)
    if isinstance(error, OperationalError):
        with pytest.raises(OperationalError):
            scoring.run_prediction(prediction_id=own.pk, run_by="task-1")
        own.refresh_from_db()
        mate.refresh_from_db()
        assert (own.status, mate.status, mate.run_by) == ("running", "running", "task-1")
    else:
        assert scoring.run_prediction(prediction_id=own.pk) == "failed"
        own.refresh_from_db()
        assert own.status == "failed" and own.error.startswith("Scoring took longer than")
        assert _released(mate)
    assert passes == [2]
