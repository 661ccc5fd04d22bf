"""What the pages, the queue and the API show comes from each image's current (newest) score: a
superseded revision or model version never lends a lesion its score or its "could not assess",
an image the model could not assess never shows a score, and percentages never overstate."""
from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from cases import followup, queue
from cases.models import Lesion, Prediction
from cases.templatetags.cases_extras import percent, percent_against
from classifier.models import ModelVersion
from tests.support.case_helpers import make_image

pytestmark = pytest.mark.django_db


def _done(image, version, *, melanoma, assessable=True, minutes_ago=0, revision=0):
    return Prediction.objects.create(
        image=image, model_version=version, status="done", melanoma_probability=melanoma, malignancy_score=melanoma,
        flagged=True, assessable=assessable, context_revision=revision,
        assessment_notes=[] if assessable else ["unlike the training images"],
        created_at=timezone.now() - timedelta(minutes=minutes_ago), finished_at=timezone.now())


def _queued(world):
    Lesion.objects.filter(pk=world.lesion_a.pk).update(flagged=True, awaiting_review=True, flagged_at=timezone.now())


def test_the_queue_reads_each_images_newest_score(world, model_version):
    model_version.status = ModelVersion.Status.RETIRED
    model_version.save(update_fields=["status"])
    newer = ModelVersion.objects.create(version="unit-test-v2", artifact_path="/x", status=ModelVersion.Status.ACTIVE)
    image = make_image(world)
    _queued(world)
    old = _done(image, model_version, melanoma=0.30, minutes_ago=60)
    current = _done(image, newer, melanoma=0.0, assessable=False)  # re-scored: could not assess
    (case,) = queue.review_queue()
    assert case.cannot_assess and case.top_melanoma is None  # not the superseded 30 %
    assert case.queue_rank == queue.CANNOT_ASSESS_RANK
    # the other way round: the newest judges it, the old "could not assess" is history
    Prediction.objects.filter(pk=old.pk).update(assessable=False, melanoma_probability=0.0)
    Prediction.objects.filter(pk=current.pk).update(assessable=True, melanoma_probability=0.04)
    (case,) = queue.review_queue()
    assert not case.cannot_assess and case.top_melanoma == pytest.approx(0.04)


def test_the_api_queue_says_null_not_zero_when_nothing_could_be_assessed(world, model_version, client):
    from api.models import ApiToken

    _done(make_image(world), model_version, melanoma=0.0, assessable=False)
    _queued(world)
    token = ApiToken(user=world.derm, name="tests")
    key = token.issue()
    token.save()
    rows = client.get("/api/v1/queue/", HTTP_AUTHORIZATION=f"Token {key}").json()["results"]
    assert rows[0]["top_melanoma_probability"] is None and rows[0]["cannot_assess"] is True
    client.force_login(world.derm)
    assert "Model could not assess" in client.get("/queue/").content.decode()


def test_the_image_history_never_shows_scores_the_model_could_not_stand_behind(world, model_version, client):
    model_version.status = ModelVersion.Status.RETIRED
    model_version.save(update_fields=["status"])
    newer = ModelVersion.objects.create(version="unit-test-v2", artifact_path="/x", status=ModelVersion.Status.ACTIVE)
    image = make_image(world)
    _done(image, model_version, melanoma=0.123, minutes_ago=60)
    _done(image, newer, melanoma=0.873, assessable=False)
    client.force_login(world.clin_a)
    page = client.get(f"/images/{image.pk}/").content.decode()
    history = page[page.index('id="history"'):]
    assert "12.3%" in history and "87.3%" not in history and "Model could not assess" in history


def test_a_lesion_with_a_failed_or_waiting_image_is_not_called_not_flagged(world, model_version):
    status = lambda: followup.patient_map(world.patient_a, Lesion.objects.all())[0].status  # noqa: E731
    Lesion.objects.filter(pk=world.lesion_a.pk).update(flagged=False)
    first, second = make_image(world, sha="1" * 64), make_image(world, sha="2" * 64)
    _done(first, model_version, melanoma=0.01)
    Prediction.objects.filter(image=first).update(flagged=False)
    waiting = Prediction.objects.create(image=second, model_version=model_version)
    assert status() == "not-scored"
    Prediction.objects.filter(pk=waiting.pk).update(status="failed", error="boom", finished_at=timezone.now())
    assert status() == "scoring-failed"
    assert followup.STATUS_LABELS["scoring-failed"].startswith("Scoring failed")
    Prediction.objects.filter(pk=waiting.pk).update(status="done", melanoma_probability=0.02, malignancy_score=0.02,
                                                    error="")
    assert status() == "not-flagged"


@pytest.mark.parametrize("value, want", [(0.1234, "12.3%"), (0.9996, ">99.9%"), (1.0, "100.0%"), (0.0004, "<0.1%"),
                                         (0.0, "0.0%"), (None, "—")])
def test_percent_never_rounds_to_certainty(value, want):
    assert percent(value) == want


@pytest.mark.parametrize("value, threshold, want", [(0.4996, 0.5, "49.96%"), (0.5, 0.5, "50.0%"),
                                                    (0.5004, 0.5, "50.04%"), (0.31, 0.5, "31.0%"),
                                                    (0.12, None, "12.0%")])
def test_a_score_never_reads_as_equal_to_a_threshold_it_is_not(value, threshold, want):
    assert percent_against(value, threshold) == want


def _waiting(image, version, *, reason="", revision=0, status="pending"):
    return Prediction.objects.create(image=image, model_version=version, status=status, reason=reason,
                                     context_revision=revision, error="worker lost" if status == "failed" else "")


def test_a_re_score_by_another_version_never_blanks_the_result_in_force(world, model_version, client):
    ModelVersion.objects.filter(pk=model_version.pk).update(status="retired")
    newer = ModelVersion.objects.create(version="unit-test-v2", artifact_path="/x", status="active")
    image = make_image(world)
    shown = _done(image, model_version, melanoma=0.42, minutes_ago=60)
    rescore = _waiting(image, newer)
    assert image.current_prediction() == shown and image.rescore_in_progress() == rescore
    client.force_login(world.clin_a)
    page = client.get(f"/cases/{world.case_a.pk}/").content.decode()
    assert "42.0%" in page and "Re-scoring with model unit-test-v2: waiting" in page
    status = client.get(f"/cases/{world.case_a.pk}/status.json").json()
    assert status["active"] is True  # keeps polling until the re-score finishes
    [item] = status["predictions"]
    assert item["id"] == shown.pk and item["image"] == image.pk and "42.0%" in item["html"]
    assert "melanoma_probability" not in item  # scores reach the page through the summary only
    Prediction.objects.filter(pk=rescore.pk).update(status="failed", error="worker lost", finished_at=timezone.now())
    page = client.get(f"/cases/{world.case_a.pk}/").content.decode()
    assert "42.0%" in page and "Re-scoring with model unit-test-v2: failed (worker lost)" in page
    assert f"/predictions/{rescore.pk}/retry/" in page  # the clinician can send it again
    assert "42.0%" in client.get(f"/images/{image.pk}/").content.decode()
    Prediction.objects.filter(pk=rescore.pk).update(status="done", melanoma_probability=0.05, malignancy_score=0.05,
                                                   flagged=False, assessable=True)
    assert image.current_prediction() == rescore and image.rescore_in_progress() is None


def test_a_re_score_for_a_correction_makes_the_older_score_stale(world, model_version, client):
    image = make_image(world)
    _done(image, model_version, melanoma=0.42, minutes_ago=60)
    correction = _waiting(image, model_version, reason="site corrected", revision=1)
    assert image.current_prediction() == correction and image.rescore_in_progress() is None
    client.force_login(world.clin_a)
    page = client.get(f"/cases/{world.case_a.pk}/").content.decode()
    assert "42.0%" not in page and "Waiting to be scored" in page
    # a version re-score queued after the correction still does not bring the pre-correction score back
    model_version.status = ModelVersion.Status.RETIRED
    model_version.save(update_fields=["status"])
    newer = ModelVersion.objects.create(version="unit-test-v2", artifact_path="/x", status=ModelVersion.Status.ACTIVE)
    queued = _waiting(image, newer)
    assert image.current_prediction() == queued and image.current_prediction().melanoma_probability is None
    assert followup.latest_scored(image) is None  # the timeline does not plot the stale score either


def test_a_lesion_whose_current_score_cleared_its_flag_stays_queued_and_says_so(world, model_version, client):
    image = make_image(world)
    _queued(world)
    flagging = _done(image, model_version, melanoma=0.6, minutes_ago=60)
    (case,) = queue.review_queue()
    assert not case.flag_cleared
    Prediction.objects.create(image=image, model_version=model_version, status="done", context_revision=1,
                              reason="site corrected", melanoma_probability=0.02, malignancy_score=0.02,
                              flagged=False, assessable=True, finished_at=timezone.now())
    (case,) = queue.review_queue()  # still waiting for a dermatologist: nothing flagged is dropped
    assert case.flag_cleared and case.top_melanoma == 0.02 and flagging.flagged
    client.force_login(world.derm)
    assert "Flagged by an earlier score" in client.get("/queue/").content.decode()
    from api.models import ApiToken

    token = ApiToken(user=world.derm, name="queue")
    key = token.issue()
    token.save()
    rows = client.get("/api/v1/queue/", HTTP_AUTHORIZATION=f"Token {key}").json()["results"]
    assert rows[0]["flag_cleared"] is True


def test_the_case_status_poll_costs_the_same_queries_for_one_image_or_many(world, model_version, client):
    """The page polls status.json every few seconds: an image the model could not assess shows its
    lesion's review state, which must come from the prefetch, not one query per image."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    client.force_login(world.clin_a)

    def queries() -> int:
        """Queries reading lesions or reviews (the role checks of the summary are counted apart)."""
        with CaptureQueriesContext(connection) as captured:
            assert client.get(f"/cases/{world.case_a.pk}/status.json").status_code == 200
        return sum('FROM "cases_lesion"' in q["sql"] or 'FROM "cases_review"' in q["sql"]
                   for q in captured.captured_queries)

    _done(make_image(world, sha="0" * 64), model_version, melanoma=0.0, assessable=False)
    one = queries()
    for i in range(1, 4):
        _done(make_image(world, sha=str(i) * 64), model_version, melanoma=0.0, assessable=False)
    assert queries() == one
