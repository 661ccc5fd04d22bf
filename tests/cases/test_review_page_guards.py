"""The review page guards what the dermatologist saw and typed: a save against images or scores
that changed after the page was opened is refused (nothing saved, the forms kept as typed); a
lost claim or a newly flagged lesion keeps the typed review too; opening the page renews the
claim and says when it expires; the page and the web queue are audited as views; an unscored
image and a lesion flagged only by an earlier score say so."""
from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from audit.models import AuditEvent
from cases import queue
from cases.models import Case, Lesion, Prediction, Review
from tests.support.case_helpers import make_image
from tests.support.review_helpers import (claim_case as _claim, open_review_page, queue_lesions as _queue,
                                           score_for_review as _score, seen_fingerprint as _seen)

pytestmark = pytest.mark.django_db

NOTES = "Irregular network at 6 o'clock; typed before the change."


def _answers(lesion, seen: str | None, **extra) -> dict:
    prefix = f"lesion-{lesion.pk}"
    data = {f"{prefix}-agreement": "agree", f"{prefix}-final_diagnosis": "melanoma",
            f"{prefix}-management": "excision", f"{prefix}-notes": NOTES, **extra}
    if seen is not None:
        data[f"{prefix}-seen"] = seen
    return data


@pytest.fixture
def opened(world, model_version, client):
    """Derm has claimed case A (lesion A flagged by image 1) and opened its review page."""
    return open_review_page(world, model_version, client)


# --- 1. A save against what changed after the page was opened -----------------------------------

def test_a_new_image_uploaded_while_the_page_was_open_refuses_the_save_and_keeps_the_typed_review(
        world, model_version, client, opened):
    page, first = opened
    seen = _seen(page, world.lesion_a)
    second = make_image(world, sha="b" * 64)  # the clinician uploads image 2 meanwhile
    Prediction.objects.create(image=second, model_version=model_version)  # waiting to be scored
    url = f"/cases/{world.case_a.pk}/review/"
    refused = client.post(url, _answers(world.lesion_a, seen))
    html = refused.content.decode()
    assert refused.status_code == 409
    assert not Review.objects.exists() and Lesion.objects.get(pk=world.lesion_a.pk).awaiting_review
    assert Case.objects.get(pk=world.case_a.pk).claimed_by == world.derm  # still the reviewer's
    label = world.lesion_a.tracked.label
    assert f"Lesion {label} (Posterior torso) has a new image since you opened this page: check it and save again." in html
    assert NOTES.replace("'", "&#x27;") in html and 'value="melanoma" selected' in html  # as typed
    assert f'src="/images/{second.pk}/file/"' in html  # the new image is on the page now
    again = _seen(html, world.lesion_a)
    assert again != seen
    saved = client.post(url, _answers(world.lesion_a, again))
    assert saved.status_code == 302 and saved["Location"] == "/queue/"
    review = Review.objects.get()
    assert review.notes == NOTES
    # the audit says which scores the review was given against
    event = AuditEvent.objects.get(action="review", object_id=str(review.pk))
    current = second.predictions.get()
    assert event.new_values["seen_predictions"] == sorted([first.predictions.get().pk, current.pk])
    assert event.new_values["seen_images"] == [first.pk, second.pk]


def test_a_rescore_landing_while_the_page_was_open_refuses_the_save(world, model_version, client, opened):
    page, first = opened
    seen = _seen(page, world.lesion_a)
    # a correction's re-score: the old score is stale at once, whatever the new one's state
    _score(first, model_version, status="pending", reason="site corrected", revision=1)
    refused = client.post(f"/cases/{world.case_a.pk}/review/", _answers(world.lesion_a, seen))
    assert refused.status_code == 409 and not Review.objects.exists()
    label = world.lesion_a.tracked.label
    assert (f"Lesion {label} (Posterior torso) was re-scored since you opened this page: check it and save again."
            in refused.content.decode())


def test_a_score_finishing_while_the_page_was_open_refuses_the_save_but_scoring_moving_on_does_not(
        world, model_version, client):
    image = make_image(world)
    waiting = Prediction.objects.create(image=image, model_version=model_version)
    _queue(world.lesion_a)
    _claim(world.case_a, world.derm)
    client.force_login(world.derm)
    url = f"/cases/{world.case_a.pk}/review/"
    seen = _seen(client.get(url).content.decode(), world.lesion_a)
    # waiting → running shows no score either: the reviewer saw the same thing
    Prediction.objects.filter(pk=waiting.pk).update(status=Prediction.Status.RUNNING, started_at=timezone.now())
    assert queue.lesion_fingerprint(Lesion.objects.get(pk=world.lesion_a.pk)) == seen
    Prediction.objects.filter(pk=waiting.pk).update(status=Prediction.Status.DONE, melanoma_probability=0.9,
                                                    malignancy_score=0.9, flagged=True, finished_at=timezone.now())
    refused = client.post(url, _answers(world.lesion_a, seen))
    assert refused.status_code == 409 and "was re-scored since you opened this page" in refused.content.decode()
    assert not Review.objects.exists()


def test_the_fingerprint_is_each_images_prediction_in_force_and_its_state(world, model_version):
    first, second = make_image(world), make_image(world, sha="b" * 64)
    old = _score(first, model_version, minutes_ago=10)
    lesion = Lesion.objects.get(pk=world.lesion_a.pk)
    assert queue.lesion_fingerprint(lesion) == f"{first.pk}:{old.pk}:done;{second.pk}:-:-"
    failed = _score(second, model_version, status="failed")
    assert queue.lesion_fingerprint(lesion) == f"{first.pk}:{old.pk}:done;{second.pk}:{failed.pk}:failed"


def test_submit_reviews_checks_what_was_seen_under_the_lock_and_writes_nothing_on_a_change(world, model_version):
    image = make_image(world)
    _score(image, model_version)
    _queue(world.lesion_a)
    _claim(world.case_a, world.derm)
    lesion = Lesion.objects.get(pk=world.lesion_a.pk)
    seen = {lesion.pk: queue.lesion_fingerprint(lesion)}
    entry = queue.LesionReview(lesion=lesion, agreement="agree", final_diagnosis="nevus", management="reassure")
    make_image(world, sha="c" * 64)
    with pytest.raises(queue.ChangedSinceOpened, match="has a new image since you opened this page") as refused:
        queue.submit_reviews(case=world.case_a, reviewer=world.derm, reviews=[entry], seen=seen)
    assert list(refused.value.problems) == [lesion.pk]
    assert not Review.objects.exists() and not AuditEvent.objects.filter(action="review").exists()
    # the API gives no fingerprint: it is not asked for one
    queue.submit_reviews(case=world.case_a, reviewer=world.derm, reviews=[entry])
    assert "seen_predictions" not in AuditEvent.objects.get(action="review").new_values


# --- 2. A lost claim or a new flagged lesion keeps the typed review; the claim is renewed -------

def test_a_claim_taken_over_while_the_page_was_open_keeps_the_typed_review(world, model_version, client, opened,
                                                                           settings):
    page, _ = opened
    seen = _seen(page, world.lesion_a)
    # the claim lapsed and a colleague took the case over
    Case.objects.filter(pk=world.case_a.pk).update(claimed_at=timezone.now() - timedelta(
        hours=settings.CLAIM_EXPIRY_HOURS + 1))
    queue.claim_case(case=world.case_a, reviewer=world.derm2)
    refused = client.post(f"/cases/{world.case_a.pk}/review/", _answers(world.lesion_a, seen))
    html = refused.content.decode()
    assert refused.status_code == 409 and not Review.objects.exists()
    assert "This case is now claimed by Derm2" in html and "nothing was saved" in html
    assert NOTES.replace("'", "&#x27;") in html
    assert Case.objects.get(pk=world.case_a.pk).claimed_by == world.derm2


def test_a_lesion_flagged_while_the_page_was_open_asks_for_its_review_and_keeps_the_others(
        world, model_version, client, opened):
    page, _ = opened
    seen = _seen(page, world.lesion_a)
    other = Lesion.objects.create(case=world.case_a, anatomic_site="head/neck")
    _queue(other)
    refused = client.post(f"/cases/{world.case_a.pk}/review/", _answers(world.lesion_a, seen))
    html = refused.content.decode()
    assert refused.status_code == 409 and not Review.objects.exists()
    assert (f"Lesion {other.tracked.label} (Head/neck) was flagged for review since you opened this page: "
            "review it too and save again.") in html
    assert NOTES.replace("'", "&#x27;") in html
    assert f'name="lesion-{other.pk}-seen"' in html
    # the new lesion's form is not shown as wrongly filled in: it was never on the page
    fieldset = html[html.index(f'id="review-lesion-{other.pk}"'):]
    assert "This field is required" not in fieldset[:fieldset.index("</fieldset>")]


def test_opening_the_review_page_renews_the_claim_and_says_when_it_expires(world, model_version, client, settings):
    settings.CLAIM_EXPIRY_HOURS = 4
    _score(make_image(world), model_version)
    _queue(world.lesion_a)
    _claim(world.case_a, world.derm, hours_ago=5)  # lapsed, nobody took it over
    client.force_login(world.derm)
    before = timezone.now()
    html = client.get(f"/cases/{world.case_a.pk}/review/").content.decode()
    case = Case.objects.get(pk=world.case_a.pk)
    assert case.claimed_by == world.derm and case.claimed_at >= before
    expires = timezone.localtime(case.claimed_at + timedelta(hours=4))
    assert f"Your claim on this case expires at {expires:%Y-%m-%d %H:%M}" in html
    assert "Claims expire after 4 h" in html
    # someone else's claim is never renewed: the page is refused as before
    _claim(world.case_a, world.derm2, hours_ago=1)
    client.force_login(world.derm)
    assert client.get(f"/cases/{world.case_a.pk}/review/").status_code == 302
    assert Case.objects.get(pk=world.case_a.pk).claimed_at < timezone.now() - timedelta(minutes=59)


def test_renew_claim_is_conditional(world):
    _queue(world.lesion_a)
    _claim(world.case_a, world.derm2, hours_ago=2)
    assert not queue.renew_claim(case=world.case_a, reviewer=world.derm)
    assert queue.renew_claim(case=world.case_a, reviewer=world.derm2)
    assert Case.objects.get(pk=world.case_a.pk).claimed_at > timezone.now() - timedelta(minutes=1)


# --- 3. Views are audited -------------------------------------------------------------------------

def test_the_review_page_and_the_web_queue_are_audited_as_views(world, model_version, client):
    _score(make_image(world), model_version)
    _score(make_image(world, sha="b" * 64, lesion=world.lesion_b), model_version)
    _queue(world.lesion_a, world.lesion_b)
    client.force_login(world.derm)
    assert client.get("/queue/").status_code == 200
    listed = AuditEvent.objects.filter(action="view", object_type="case", actor=world.derm)
    assert sorted(int(e.object_id) for e in listed) == sorted([world.case_a.pk, world.case_b.pk])
    assert {e.patient_id for e in listed} == {world.patient_a.pk, world.patient_b.pk}
    assert all(e.new_values == {"via": "list"} for e in listed)
    before = AuditEvent.objects.order_by("-pk").values_list("pk", flat=True).first()
    _claim(world.case_a, world.derm)
    assert client.get(f"/cases/{world.case_a.pk}/review/").status_code == 200
    event = AuditEvent.objects.get(action="view", pk__gt=before)
    assert (event.object_type, event.object_id, event.actor, event.patient_id) == (
        "case", str(world.case_a.pk), world.derm, world.patient_a.pk)


# --- 4. What the review page says of an unscored image and of a flag an earlier score set -------

def test_the_review_page_says_an_image_is_not_scored_and_why_a_cleared_lesion_still_waits(world, model_version,
                                                                                          client):
    unscored = make_image(world)
    _queue(world.lesion_a)
    _claim(world.case_a, world.derm)
    client.force_login(world.derm)
    url = f"/cases/{world.case_a.pk}/review/"
    html = client.get(url).content.decode()
    card = html[html.index(f'src="/images/{unscored.pk}/file/"'):]
    assert "Waiting for a model to score this image." in card[:card.index("</li>")]
    # flagged by an earlier score, its current one below the thresholds: the page says why it waits
    _score(unscored, model_version, melanoma=0.6, minutes_ago=60)
    _score(unscored, model_version, melanoma=0.02, flagged=False, revision=1, reason="site corrected")
    html = client.get(url).content.decode()
    assert "Not flagged" in html and html.count(queue.FLAG_CLEARED_TEXT) == 1
    assert f'id="lesion-{world.lesion_a.pk}-flag-cleared"' in html


def test_the_patient_and_case_lists_are_audited_as_views_of_what_they_showed(world, client):
    client.force_login(world.clin_a)
    assert client.get("/patients/").status_code == 200
    patients = AuditEvent.objects.filter(action="view", object_type="patient", actor=world.clin_a)
    # clinic A's clinician sees, and is recorded seeing, clinic A's patient only
    assert [(int(e.object_id), e.new_values) for e in patients] == [(world.patient_a.pk, {"via": "list"})]
    assert client.get("/cases/").status_code == 200
    cases = AuditEvent.objects.filter(action="view", object_type="case", actor=world.clin_a)
    assert [(int(e.object_id), e.patient_id) for e in cases] == [(world.case_a.pk, world.patient_a.pk)]
