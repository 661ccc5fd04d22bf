"""What the case page, the queue, the timeline, the upload and the review page tell the clinician
and the dermatologist: a lesion still queued after its current score fell below the thresholds
says why; the queue ranks by the score in force; a score never reads as equal to a threshold it
is not; a visit the model could not assess is not "not scored"; clinical photos are not said to
be scored; and the review page links to the earlier visits it asks about."""
from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from cases import queue, services
from cases.models import Case, Lesion, LesionImage, Prediction
from classifier.models import ModelVersion
from tests.support.case_helpers import make_image
from tests.support.imagegen import png, upload

pytestmark = pytest.mark.django_db

CLEARED = "Flagged by an earlier score; its current score is below the thresholds."


def _score(image, version, *, melanoma, flagged=True, assessable=True, minutes_ago=0, revision=0, reason="",
           status="done"):
    done = status == "done"
    return Prediction.objects.create(
        image=image, model_version=version, status=status, melanoma_probability=melanoma if done else None,
        malignancy_score=melanoma if done else None, flagged=flagged, assessable=assessable,
        context_revision=revision, reason=reason, assessment_notes=[] if assessable else ["not dermoscopic"],
        created_at=timezone.now() - timedelta(minutes=minutes_ago), finished_at=timezone.now() if done else None)


def _queue(*lesions):
    Lesion.objects.filter(pk__in=[lesion.pk for lesion in lesions]).update(
        flagged=True, awaiting_review=True, flagged_at=timezone.now())


def test_the_case_page_says_why_a_lesion_whose_current_score_is_not_flagged_still_waits(world, model_version,
                                                                                         client):
    image = make_image(world)
    _queue(world.lesion_a)
    _score(image, model_version, melanoma=0.6, minutes_ago=60)
    client.force_login(world.clin_a)
    url = f"/cases/{world.case_a.pk}/"
    assert CLEARED not in client.get(url).content.decode()  # its current score flagged it
    _score(image, model_version, melanoma=0.02, flagged=False, revision=1, reason="site corrected")
    page = client.get(url).content.decode()
    assert "Flagged — awaiting dermatologist review" in page and "Not flagged" in page
    assert page.count(CLEARED) == 1 and f'id="lesion-{world.lesion_a.pk}-flag-cleared"' in page
    (case,) = queue.review_queue()
    assert case.flag_cleared  # the queue and the case page decide it the same way
    # a dermatologist's review closes it: the explanation goes with the flag
    Lesion.objects.filter(pk=world.lesion_a.pk).update(awaiting_review=False)
    assert CLEARED not in client.get(url).content.decode()


def test_the_queue_ranks_and_shows_the_score_in_force_not_one_a_correction_made_stale(world, model_version, client):
    stale = make_image(world)
    _score(stale, model_version, melanoma=0.6, minutes_ago=60)
    _score(stale, model_version, melanoma=None, revision=1, reason="site corrected", status="pending")
    other = make_image(world, sha="b" * 64, lesion=world.lesion_b)
    _score(other, model_version, melanoma=0.3)
    _queue(world.lesion_a, world.lesion_b)
    rows = list(queue.review_queue())
    # the stale 60 % ranks nothing; the image waiting for its re-score is unjudged, so its case ranks
    # as one the model could not assess, above the 30 % (never at the bottom as if it were cleared)
    assert [row.pk for row in rows] == [world.case_a.pk, world.case_b.pk]
    assert rows[0].queue_rank == queue.CANNOT_ASSESS_RANK and rows[0].unscored and not rows[0].scoring_failed
    assert rows[0].top_melanoma is None and not rows[0].cannot_assess and not rows[0].flag_cleared
    client.force_login(world.derm)
    page = client.get("/queue/").content.decode()
    assert "60.0%" not in page and "30.0%" in page
    # a re-score by another version waiting leaves the finished score in force, as on the case page
    Prediction.objects.filter(image=stale, reason="site corrected").delete()
    newer = ModelVersion.objects.create(version="unit-test-v2", artifact_path="/x")
    _score(stale, newer, melanoma=None, status="pending")
    assert stale.current_prediction().melanoma_probability == 0.6
    assert [row.top_melanoma for row in queue.review_queue()] == [0.6, 0.3]


def test_the_queue_shows_a_score_just_below_the_threshold_with_the_digits_that_tell_them_apart(world, model_version,
                                                                                               client):
    ModelVersion.objects.filter(pk=model_version.pk).update(melanoma_threshold=0.092)
    _score(make_image(world), model_version, melanoma=0.0921)
    _queue(world.lesion_a)
    (case,) = queue.review_queue()
    assert case.top_threshold == 0.092
    client.force_login(world.derm)
    assert ">9.21%<" in client.get("/queue/").content.decode()


def _later_visit(world):
    Case.objects.filter(pk=world.case_a.pk).update(visit_date=timezone.localdate() - timedelta(days=90))
    later = services.create_case(user=world.clin_a, patient=world.patient_a, clinical_question="Follow-up",
                                 visit_date=timezone.localdate())
    return services.add_lesion(user=world.clin_a, case=later, anatomic_site="posterior torso",
                               same_as=world.lesion_a.tracked)


def test_the_timeline_tells_a_score_from_the_threshold_and_says_when_the_model_could_not_assess(world, model_version,
                                                                                               client):
    ModelVersion.objects.filter(pk=model_version.pk).update(melanoma_threshold=0.092)
    later = _later_visit(world)
    _score(make_image(world), model_version, melanoma=0.0921, flagged=False)
    _score(make_image(world, sha="c" * 64, lesion=later), model_version, melanoma=0.0, assessable=False)
    client.force_login(world.clin_a)
    page = client.get(f"/patients/{world.patient_a.pk}/lesions/1/").content.decode()
    visits = page[page.index('<ol class="timeline">'):]
    first, second = visits.split(f'id="visit-{later.pk}"')
    assert "Highest melanoma probability: <strong>9.21%</strong>" in first
    assert "Model could not assess" in second and "Not scored yet" not in second
    captions = page[page.index('class="compare-pair"'):page.index('<ol class="timeline">')]
    assert "melanoma 9.21%" in captions and "model could not assess" in captions and "not scored" not in captions


def test_clinical_photos_are_not_said_to_be_scored(world, client, dispatched):
    client.force_login(world.clin_a)
    form = client.get(f"/cases/{world.case_a.pk}/").content.decode()
    assert "clinical photos are kept for the dermatologist and not scored by the model" in form.lower()
    response = client.post(f"/lesions/{world.lesion_a.pk}/", {"images": [upload("close-up.png", png(), "image/png")],
                                                                "kind": "clinical"}, follow=True)
    texts = [str(m) for m in response.context["messages"]]
    assert LesionImage.objects.get().kind == "clinical"
    assert texts == ["1 image(s) uploaded and stored; clinical photos are not scored by the model and go to a "
                     "dermatologist."], texts


def test_the_review_page_links_to_the_earlier_visits_it_asks_about(world, client):
    later = _later_visit(world)
    _queue(later, world.lesion_b)
    for case in (later.case, world.case_b):
        Case.objects.filter(pk=case.pk).update(claimed_by=world.derm, claimed_at=timezone.now())
    client.force_login(world.derm)
    timeline = f"/patients/{world.patient_a.pk}/lesions/{later.tracked.number}/"
    page = client.get(f"/cases/{later.case_id}/review/").content.decode()
    assert "Changed since the earlier visit?" in page
    assert f'href="{timeline}"' in page and "compare with its earlier visit" in page
    assert client.get(timeline).status_code == 200  # the dermatologist may open it
    first_visit = client.get(f"/cases/{world.case_b.pk}/review/").content.decode()
    assert "Timeline of" not in first_visit  # nothing earlier to compare with
