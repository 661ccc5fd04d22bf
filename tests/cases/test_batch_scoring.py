"""Under a burst, one task scores several enqueued predictions of the same model version in one
forward pass; their own tasks then find them done (no-op). Claims are conditional UPDATEs."""
from __future__ import annotations

from functools import partial

import pytest
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.db import OperationalError
from django.utils import timezone

from cases import scoring
from cases.models import LesionImage, Prediction
from classifier.models import ModelVersion
from tests.support.imagegen import png
from tests.support.scoring_stubs import StandInScore, counted_passes

pytestmark = pytest.mark.django_db


# one stand-in result per image (other scoring tests import it)
R = partial(StandInScore, malignancy_score=0.2, inference_ms=3.0)


@pytest.fixture
def fake(monkeypatch, media_root):
    return counted_passes(monkeypatch, R)


def _pred(world, mv, i, enqueued=True):
    name = default_storage.save(f"lesion-images/b{i}.png", ContentFile(png(seed=i)))
    img = LesionImage.objects.create(lesion=world.lesion_a, file=name, sha256=f"{i:064x}", size_bytes=10,
                                     width=96, height=64, uploaded_by=world.clin_a)
    return Prediction.objects.create(image=img, model_version=mv, enqueued_at=timezone.now() if enqueued else None)


def test_burst_is_scored_in_one_batch_and_other_tasks_are_no_ops(world, model_version, fake, settings):
    settings.SECONDLOOK_SCORE_BATCH = 4
    other_mv = ModelVersion.objects.create(version="other-v2", artifact_path="/nonexistent/other")
    preds = [_pred(world, model_version, i) for i in range(6)]
    not_enqueued = _pred(world, model_version, 10, enqueued=False)
    other = _pred(world, other_mv, 11)
    assert scoring.run_prediction(prediction_id=preds[0].pk) == "done"
    assert fake == [4]  # own + 3 mates
    states = {p.pk: Prediction.objects.get(pk=p.pk).status for p in preds + [not_enqueued, other]}
    assert [states[p.pk] for p in preds] == ["done"] * 4 + ["pending"] * 2
    assert states[not_enqueued.pk] == "pending" and states[other.pk] == "pending"
    # the mates' own tasks arrive later: idempotent no-ops, each prediction scored exactly once
    for p in preds[1:4]:
        assert scoring.run_prediction(prediction_id=p.pk).startswith("not claimable")
    assert scoring.run_prediction(prediction_id=preds[4].pk) == "done"
    assert fake == [4, 2]
    assert all(Prediction.objects.get(pk=p.pk).attempts == 1 for p in preds)


def test_lone_image_and_batching_disabled(world, model_version, fake, settings):
    p = _pred(world, model_version, 0)
    assert scoring.run_prediction(prediction_id=p.pk) == "done" and fake == [1]
    settings.SECONDLOOK_SCORE_BATCH = 1
    a, b = _pred(world, model_version, 1), _pred(world, model_version, 2)
    scoring.run_prediction(prediction_id=a.pk)
    assert fake == [1, 1] and Prediction.objects.get(pk=b.pk).status == "pending"


def test_mate_already_claimed_elsewhere_is_skipped(world, model_version, fake):
    a, b = _pred(world, model_version, 0), _pred(world, model_version, 1)
    started = timezone.now()
    Prediction.objects.filter(pk=b.pk).update(status="running", started_at=started, attempts=1)
    assert scoring.run_prediction(prediction_id=a.pk) == "done" and fake == [1]
    b.refresh_from_db()
    assert b.status == "running" and b.started_at == started and b.attempts == 1


def test_redelivered_mate_supersedes_cleanly(world, model_version, fake, monkeypatch):
    """A mate whose own message is redelivered while the batch runs is re-claimed by it; the batch's
    write for that mate loses (started_at changed), so exactly one result is stored."""
    a, b = _pred(world, model_version, 0), _pred(world, model_version, 1)

    def predict_images(model, images, contexts=None):
        fake.append(len(images))
        # while the batch is predicting, b's redelivered task re-claims it
        Prediction.objects.filter(pk=b.pk).update(started_at=timezone.now() + timezone.timedelta(seconds=1))
        return [R() for _ in images]

    monkeypatch.setattr("mlcore.inference.predict_images", predict_images)
    assert scoring.run_prediction(prediction_id=a.pk) == "done"
    b.refresh_from_db()
    assert b.status == "running"  # left to its own (redelivered) run


def test_batch_error_releases_mates(world, model_version, fake, monkeypatch):
    a, b = _pred(world, model_version, 0), _pred(world, model_version, 1)

    def boom(model, images):
        raise RuntimeError("kaboom")

    monkeypatch.setattr("mlcore.inference.predict_images", boom)
    assert scoring.run_prediction(prediction_id=a.pk) == "failed"
    a.refresh_from_db()
    b.refresh_from_db()
    assert a.status == "failed" and b.status == "pending" and b.attempts == 0


def test_a_result_that_cannot_be_saved_fails_with_its_reason_and_releases_the_mates(world, model_version, fake,
                                                                                    monkeypatch):
    """A full disk (or a value the database refuses) while saving: the task's own prediction fails
    with that reason at once, instead of staying "running" until the sweep blames the image."""
    a, b = _pred(world, model_version, 0), _pred(world, model_version, 1)

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(scoring, "_store_result", disk_full)
    assert scoring.run_prediction(prediction_id=a.pk) == "failed"
    a.refresh_from_db()
    b.refresh_from_db()
    assert a.status == "failed" and "could not be saved" in a.error and "No space left" in a.error
    assert b.status == "pending"  # its own task tries again


def test_a_database_hiccup_while_saving_is_left_to_the_tasks_retry(world, model_version, fake, monkeypatch):
    from django.db import OperationalError

    a = _pred(world, model_version, 0)

    def dropped(*args, **kwargs):
        raise OperationalError("server closed the connection unexpectedly")

    monkeypatch.setattr(scoring, "_store_result", dropped)
    with pytest.raises(OperationalError):
        scoring.run_prediction(prediction_id=a.pk, run_by="task-1")
    a.refresh_from_db()
    assert a.status == "running" and a.run_by == "task-1"  # the retry (same task id) resumes it


def test_a_re_score_of_a_version_rolled_back_is_not_scored_but_an_uploads_first_score_is(world, model_version,
                                                                                       fake, settings):
    """Once its version is no longer active, a re-score (the version's revision 0 of an image another
    version scored first) is failed with the reason instead of scored, alone or as a batch mate;
    an image's first score, by the version active at upload, is still scored."""
    from classifier.registry import activate

    settings.SECONDLOOK_SCORE_BATCH = 4
    earlier = ModelVersion.objects.create(version="v0", status="ready", artifact_path="/nonexistent/v0")
    first = _pred(world, earlier, 0)  # v0 scored this image first; v1 re-scores it
    Prediction.objects.filter(pk=first.pk).update(status="done", melanoma_probability=0.2, malignancy_score=0.3,
                                                  finished_at=timezone.now())
    rescore = Prediction.objects.create(image=first.image, model_version=model_version, enqueued_at=timezone.now())
    uploads = [_pred(world, model_version, i) for i in (1, 2)]
    activate(ModelVersion.objects.create(version="v2", status="ready", artifact_path="/nonexistent/v2"))

    assert scoring.run_prediction(prediction_id=uploads[0].pk) == "done"
    assert fake == [2]  # the other upload came along, the re-score did not
    assert [Prediction.objects.get(pk=p.pk).status for p in uploads] == ["done", "done"]
    assert Prediction.objects.get(pk=rescore.pk).status == "pending"

    assert scoring.run_prediction(prediction_id=rescore.pk).startswith("not scored")
    assert fake == [2]
    rescore.refresh_from_db()
    assert rescore.status == "failed" and rescore.melanoma_probability is None and not rescore.flagged
    assert rescore.error == ("Not scored: model version unit-test-v1 was rolled back or replaced by another version "
                             "before this re-score ran.")


@pytest.mark.parametrize("owner, name, error", [
    (scoring.states, "start_batch_mate", OperationalError("server closed the connection unexpectedly")),
    (scoring, "image_context", OperationalError("server closed the connection unexpectedly")),
    (scoring, "_read_image_bytes", TimeoutError("read timed out")),
])
def test_a_database_hiccup_while_reading_is_retried_not_a_failure(world, model_version, fake, settings, monkeypatch,
                                                                   owner, name, error):
    """An OperationalError (or a storage timeout) while claiming batch mates, reading the images or
    their clinical context is transient: the task retries (autoretry_for) and its retry, the same
    task run, resumes its own row and scores it, instead of failing it for good. Like any resumed
    run it scores its image alone: the mate goes back to pending (never failed), for its own task."""
    settings.SECONDLOOK_SCORE_BATCH = 2
    own, mate = _pred(world, model_version, 0), _pred(world, model_version, 1)
    real, calls = getattr(owner, name), []

    def hiccup(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise error
        return real(*args, **kwargs)

    monkeypatch.setattr(owner, name, hiccup)
    with pytest.raises(type(error)):
        scoring.run_prediction(prediction_id=own.pk, run_by="task-1", worker="w1")
    own.refresh_from_db()
    assert own.status == "running" and own.error == ""  # not failed: the retry takes it up again
    assert scoring.run_prediction(prediction_id=own.pk, run_by="task-1", worker="w1") == "done"
    assert [Prediction.objects.get(pk=p.pk).status for p in (own, mate)] == ["done", "pending"]
    assert scoring.run_prediction(prediction_id=mate.pk, run_by="task-2") == "done"
