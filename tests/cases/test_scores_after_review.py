"""A score the dermatologist could not have seen when signing a review reaches a dermatologist: a
correction's re-score made after the review, or an image's first score that landed after it, puts
the lesion back in the queue when flagged or when the model could not assess it. A new version's
re-score of a score the reviewer saw stays out of the queue (listed for the admin instead). A lesion
already waiting keeps the time it was first flagged."""
from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from cases import corrections, scoring
from cases.models import Case, Lesion, LesionImage, Prediction, Review
from classifier.models import ModelVersion
from classifier.registry import activate
from tests.support.case_helpers import make_image
from tests.support.scoring_stubs import StandInScore, every_image_scores

pytestmark = pytest.mark.django_db


Score = StandInScore


@pytest.fixture
def score(monkeypatch) -> StandInScore:
    """Melanoma 0.9: above the test version's threshold (0.5)."""
    return every_image_scores(monkeypatch, StandInScore(melanoma_probability=0.9))


def _outcome(kind: str, score: Score) -> None:
    """The new score: flagged by the model, below the thresholds, or not assessable."""
    if kind == "low":
        score.melanoma_probability = 0.1
    elif kind == "not assessable":
        score.melanoma_probability, score.assessable, score.assessment_notes = 0.1, False, ["the image is blurred"]


def _review(world, *, at) -> Review:
    """A signed "nevus / reassure" review at ``at``; the lesion leaves the queue, the case is reviewed."""
    review = Review.objects.create(lesion=world.lesion_a, reviewer=world.derm, agreement="disagree",
                                   final_diagnosis="nevus", management="reassure")
    Review.objects.filter(pk=review.pk).update(created_at=at)
    Lesion.objects.filter(pk=world.lesion_a.pk).update(flagged=True, awaiting_review=False,
                                                       flagged_at=at - timedelta(hours=1))
    Case.objects.filter(pk=world.case_a.pk).update(status=Case.Status.REVIEWED)
    review.refresh_from_db()
    return review


def _image(world, *, at, sha="c" * 64) -> LesionImage:
    image = make_image(world, sha)
    LesionImage.objects.filter(pk=image.pk).update(uploaded_at=at)
    image.refresh_from_db()
    return image


def _seen_and_reviewed(world, version) -> LesionImage:
    """An image scored (flagged) three hours ago and reviewed an hour ago as nevus / reassure."""
    now = timezone.now()
    image = _image(world, at=now - timedelta(hours=4))
    first = Prediction.objects.create(image=image, model_version=version, status="done", flagged=True,
                                      melanoma_probability=0.7, malignancy_score=0.1,
                                      finished_at=now - timedelta(hours=3))
    Prediction.objects.filter(pk=first.pk).update(created_at=now - timedelta(hours=4))
    _review(world, at=now - timedelta(hours=1))
    return image


def _in_queue(world) -> bool:
    lesion = Lesion.objects.get(pk=world.lesion_a.pk)
    return lesion.awaiting_review


@pytest.mark.parametrize("kind", ["flagged", "not assessable"])
def test_a_correction_rescore_after_the_review_puts_the_lesion_back_in_the_queue(world, model_version, score,
                                                                                 dispatched, kind):
    image = _seen_and_reviewed(world, model_version)
    _outcome(kind, score)
    [rescore] = corrections.correct_lesion_site(user=world.clin_a, lesion=world.lesion_a, anatomic_site="head/neck",
                                                reason="wrong site entered")
    assert rescore.image == image and rescore.reason
    assert scoring.run_prediction(prediction_id=rescore.pk).startswith("done")
    assert _in_queue(world)
    assert Case.objects.get(pk=world.case_a.pk).status == Case.Status.OPEN
    rescore.refresh_from_db()
    if kind == "flagged":  # said in a correction's words, not a new model's
        assert rescore.review_disagreement == ("Re-score after a record correction disagrees with review: it flags "
                                               "a lesion reviewed as nevus (reassure).")
    else:  # the forced flag of an image it could not assess is not a judgement against the review
        assert rescore.review_disagreement == ""


def test_a_correction_rescore_that_agrees_with_the_review_leaves_the_lesion_out_of_the_queue(world, model_version,
                                                                                            score, dispatched):
    _seen_and_reviewed(world, model_version)
    _outcome("low", score)
    [rescore] = corrections.correct_lesion_site(user=world.clin_a, lesion=world.lesion_a, anatomic_site="head/neck",
                                                reason="wrong site entered")
    assert scoring.run_prediction(prediction_id=rescore.pk) == "done"
    assert not _in_queue(world)
    rescore.refresh_from_db()
    assert rescore.review_disagreement == ""


@pytest.mark.parametrize("kind", ["flagged", "not assessable"])
def test_a_first_score_that_lands_after_the_review_puts_the_lesion_back_in_the_queue(world, model_version, score,
                                                                                     kind):
    """The image was uploaded before the review but still being scored when the dermatologist saved it."""
    now = timezone.now()
    image = _image(world, at=now - timedelta(hours=2))
    pending = Prediction.objects.create(image=image, model_version=model_version)
    Prediction.objects.filter(pk=pending.pk).update(created_at=now - timedelta(hours=2))
    _review(world, at=now - timedelta(hours=1))
    _outcome(kind, score)
    assert scoring.run_prediction(prediction_id=pending.pk).startswith("done")
    assert _in_queue(world)
    assert Case.objects.get(pk=world.case_a.pk).status == Case.Status.OPEN


def test_a_retried_first_score_after_the_review_is_not_covered_by_it(world, model_version, score):
    """A first score that failed before the review and is scored on retry afterwards: the reviewer saw none."""
    now = timezone.now()
    image = _image(world, at=now - timedelta(hours=3))
    failed = Prediction.objects.create(image=image, model_version=model_version, status="failed", error="worker died")
    _review(world, at=now - timedelta(hours=1))
    Prediction.objects.filter(pk=failed.pk).update(status="pending", error="")  # the Retry button
    assert scoring.run_prediction(prediction_id=failed.pk) == "done (flagged)"
    assert _in_queue(world)


@pytest.mark.parametrize("kind", ["flagged", "not assessable"])
def test_a_new_versions_rescore_of_a_score_the_reviewer_saw_stays_out_of_the_queue(world, model_version, score,
                                                                                   kind):
    image = _seen_and_reviewed(world, model_version)
    newer = activate(ModelVersion.objects.create(version="v2", status="ready", artifact_path="/x",
                                                 melanoma_threshold=0.5, malignancy_threshold=0.6))
    rescore = Prediction.objects.create(image=image, model_version=newer)
    _outcome(kind, score)
    assert scoring.run_prediction(prediction_id=rescore.pk).startswith("done")
    assert not _in_queue(world)
    assert Case.objects.get(pk=world.case_a.pk).status == Case.Status.REVIEWED
    rescore.refresh_from_db()
    if kind == "flagged":
        assert rescore.review_disagreement.startswith("New model disagrees with review: it flags")


def test_review_covers_only_scores_the_reviewer_could_have_seen(world, model_version):
    now = timezone.now()
    image = _seen_and_reviewed(world, model_version)
    review = scoring.review_of_image(image)
    version_rescore = Prediction(image=image, model_version=model_version, context_revision=1,
                                 created_at=now)
    correction_after = Prediction(image=image, model_version=model_version, context_revision=1, reason="site",
                                  created_at=now)
    correction_before = Prediction(image=image, model_version=model_version, context_revision=1, reason="site",
                                   created_at=review.created_at - timedelta(minutes=5))
    assert scoring.review_covers(review, version_rescore)
    assert not scoring.review_covers(review, correction_after)
    assert scoring.review_covers(review, correction_before)  # the reviewer saw the corrected record
    unseen = _image(world, at=now - timedelta(hours=2), sha="e" * 64)
    assert not scoring.review_covers(review, Prediction(image=unseen, model_version=model_version, created_at=now))


# --- flagged_at: the wait starts when the lesion was first flagged ------------------------------

def test_a_second_flagged_image_keeps_the_time_the_lesion_has_been_waiting_since(world, model_version, score):
    monday = timezone.now() - timedelta(days=2)
    Lesion.objects.filter(pk=world.lesion_a.pk).update(flagged=True, awaiting_review=True, flagged_at=monday)
    second = Prediction.objects.create(image=make_image(world, "f" * 64), model_version=model_version)
    assert scoring.run_prediction(prediction_id=second.pk) == "done (flagged)"
    lesion = Lesion.objects.get(pk=world.lesion_a.pk)
    assert lesion.awaiting_review and lesion.flagged_at == monday


def test_a_lesion_back_in_the_queue_after_a_review_waits_from_the_new_flag(world):
    monday = timezone.now() - timedelta(days=2)
    Lesion.objects.filter(pk=world.lesion_a.pk).update(flagged=True, awaiting_review=False, flagged_at=monday)
    wednesday = timezone.now()
    scoring._flag_lesion(world.lesion_a.pk, wednesday)
    lesion = Lesion.objects.get(pk=world.lesion_a.pk)
    assert lesion.awaiting_review and lesion.flagged_at == wednesday
    # never flagged before: the flag's time
    scoring._flag_lesion(world.lesion_b.pk, wednesday)
    assert Lesion.objects.get(pk=world.lesion_b.pk).flagged_at == wednesday
