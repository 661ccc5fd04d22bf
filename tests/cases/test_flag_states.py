"""What a flagged lesion says while an image of it has no finished score in force: it is never
"below the thresholds" (case page, queue, report) and its case never sinks to the bottom of the
queue; the case page's poll keeps the flag badge's words current; a visit whose scoring failed
says so on the timeline; a closed case re-flagged by a re-score is reviewed without reopening it;
claim times carry their date; a filtered case list that matches nothing says so."""
from __future__ import annotations

import re
from datetime import timedelta

import pypdfium2 as pdfium
import pytest
from django.utils import timezone

from cases import followup, queue
from cases.models import Case, Lesion, PatientLesion, Prediction
from cases.report import build_case_report
from tests.support.case_helpers import make_image

pytestmark = pytest.mark.django_db

CLEARED = queue.FLAG_CLEARED_TEXT


def _score(image, version, *, melanoma=None, flagged=False, minutes_ago=0, revision=0, reason="", status="done"):
    done = status == "done"
    return Prediction.objects.create(
        image=image, model_version=version, status=status, melanoma_probability=melanoma if done else None,
        malignancy_score=melanoma if done else None, flagged=flagged, context_revision=revision, reason=reason,
        error="worker lost" if status == "failed" else "",
        created_at=timezone.now() - timedelta(minutes=minutes_ago), finished_at=timezone.now() if done else None)


def _queue(*lesions):
    Lesion.objects.filter(pk__in=[lesion.pk for lesion in lesions]).update(
        flagged=True, awaiting_review=True, flagged_at=timezone.now())


def _pdf_text(data: bytes) -> str:
    pdf = pdfium.PdfDocument(data)
    try:
        text = " ".join(pdf[i].get_textpage().get_text_range() for i in range(len(pdf)))
    finally:
        pdf.close()
    return " ".join(text.split())


@pytest.fixture
def corrected(world, model_version):
    """Clinic A's lesion flagged by image A (60 %) with an unflagged image B (2 %); A's correction
    re-score waits. Clinic B's case is flagged at 30 %."""
    flagging = make_image(world)
    _score(flagging, model_version, melanoma=0.6, flagged=True, minutes_ago=60)
    _score(make_image(world, sha="b" * 64), model_version, melanoma=0.02, minutes_ago=30)
    rescore = _score(flagging, model_version, revision=1, reason="site corrected", status="pending")
    other = make_image(world, sha="c" * 64, lesion=world.lesion_b)
    _score(other, model_version, melanoma=0.3, flagged=True)
    _queue(world.lesion_a, world.lesion_b)
    return rescore


def _row(case):
    return next(row for row in queue.review_queue() if row.pk == case.pk)


def test_a_lesion_is_not_cleared_while_its_flagging_images_re_score_waits_or_failed(world, corrected, client):
    case = world.case_a
    # the other image's 2 % is the only finished score in force: it must not clear the lesion
    assert queue.flag_cleared_lesions(case) == set()
    row = _row(case)
    assert not row.flag_cleared and row.unscored and not row.scoring_failed
    # unjudged, it ranks as "could not assess" does: above the case flagged at 30 %
    assert [r.pk for r in queue.review_queue()] == [case.pk, world.case_b.pk]
    assert row.queue_rank == queue.CANNOT_ASSESS_RANK
    client.force_login(world.clin_a)
    assert CLEARED not in client.get(f"/cases/{case.pk}/").content.decode()
    client.force_login(world.derm)
    page = client.get("/queue/").content.decode()
    assert "its current score is below the thresholds" not in page and "an image is not scored yet" in page

    Prediction.objects.filter(pk=corrected.pk).update(status="failed", error="worker lost",
                                                      finished_at=timezone.now())
    assert queue.flag_cleared_lesions(case) == set()
    row = _row(case)
    assert not row.flag_cleared and row.scoring_failed and row.queue_rank == queue.CANNOT_ASSESS_RANK
    page = client.get("/queue/").content.decode()
    assert "Scoring failed for an image" in page and "its current score is below the thresholds" not in page

    # the correction's score finishes below the thresholds: now every image is judged, and cleared
    Prediction.objects.filter(pk=corrected.pk).update(status="done", melanoma_probability=0.03,
                                                      malignancy_score=0.03, flagged=False, error="")
    assert queue.flag_cleared_lesions(case) == {world.lesion_a.pk}
    row = _row(case)
    assert row.flag_cleared and not row.unscored and not row.scoring_failed and row.top_melanoma == 0.03
    assert [r.pk for r in queue.review_queue()] == [world.case_b.pk, case.pk]
    client.force_login(world.clin_a)
    page = client.get(f"/cases/{case.pk}/").content.decode()
    assert page.count(CLEARED) == 1


def test_a_new_image_without_a_score_keeps_a_cleared_lesion_from_reading_cleared(world, model_version):
    image = make_image(world)
    _score(image, model_version, melanoma=0.6, flagged=True, minutes_ago=60)
    _score(image, model_version, melanoma=0.02, revision=1, reason="site corrected")
    _queue(world.lesion_a)
    assert queue.flag_cleared_lesions(world.case_a) == {world.lesion_a.pk}
    waiting = make_image(world, sha="d" * 64)
    _score(waiting, model_version, status="pending")
    assert queue.flag_cleared_lesions(world.case_a) == set()
    assert not _row(world.case_a).flag_cleared
    # an image never scored at all (no model when it was uploaded) is no more judged
    Prediction.objects.filter(image=waiting).delete()
    assert queue.flag_cleared_lesions(world.case_a) == set() and _row(world.case_a).unscored


def test_the_report_explains_a_flag_the_current_scores_cleared_with_the_case_pages_words(world, corrected):
    text = _pdf_text(build_case_report(world.case_a, generated_by=world.clin_a))
    assert "Status: Flagged — awaiting dermatologist review" in text
    assert CLEARED not in text  # the flagging image's correction is still waiting
    Prediction.objects.filter(pk=corrected.pk).update(status="done", melanoma_probability=0.03,
                                                      malignancy_score=0.03, flagged=False,
                                                      finished_at=timezone.now())
    text = _pdf_text(build_case_report(world.case_a, generated_by=world.clin_a))
    assert "Status: Flagged — awaiting dermatologist review " + CLEARED in text
    assert text.count(CLEARED) == 1  # the lesion of clinic B's case is not in this report


def test_the_status_poll_gives_each_lesions_review_state_and_badge_words(world, model_version, client):
    reviewed = world.lesion_a
    Lesion.objects.filter(pk=reviewed.pk).update(flagged=True, awaiting_review=False, flagged_at=timezone.now())
    never = Lesion.objects.create(case=world.case_a, anatomic_site="head/neck")
    client.force_login(world.clin_a)
    url = f"/cases/{world.case_a.pk}/status.json"
    lesions = {item["id"]: item for item in client.get(url).json()["lesions"]}
    assert lesions[reviewed.pk] == {"id": reviewed.pk, "flagged": True, "awaiting_review": False,
                                    "badge": "Flagged — reviewed"}
    assert lesions[never.pk]["badge"] == "" and lesions[never.pk]["flagged"] is False
    # a new image of the reviewed lesion is flagged: the poll says "awaiting" at once
    Lesion.objects.filter(pk=reviewed.pk).update(awaiting_review=True)
    data = client.get(url).json()
    lesions = {item["id"]: item for item in data["lesions"]}
    assert lesions[reviewed.pk]["awaiting_review"] is True
    assert lesions[reviewed.pk]["badge"] == "Flagged — awaiting dermatologist review"
    assert data["flagged_lesions"] == [reviewed.pk]
    page = client.get(f"/cases/{world.case_a.pk}/").content.decode()
    # the badge sits in a live region that is always there, so its change is announced
    assert re.search(rf'data-lesion-flag="{reviewed.pk}" aria-live="polite">\s*<span class="flag-badge">'
                     r"Flagged — awaiting dermatologist review</span>", page)
    assert re.search(rf'data-lesion-flag="{never.pk}" aria-live="polite">\s*<span class="flag-badge" hidden>', page)


def test_a_visit_whose_scoring_failed_says_so_with_the_way_to_retry(world, model_version, client):
    tracked = world.lesion_a.tracked
    PatientLesion.objects.filter(pk=tracked.pk).update(map_view="front", map_x=0.5, map_y=0.5)
    _score(make_image(world), model_version, status="failed")
    _score(make_image(world, sha="e" * 64), model_version, status="failed")
    (visit,) = followup.timeline(tracked, Lesion.objects.all())
    assert visit.scoring_failed and visit.melanoma is None and not visit.complete
    client.force_login(world.clin_a)
    url = f"/patients/{world.patient_a.pk}/lesions/{tracked.number}/"
    page = client.get(url).content.decode()
    case_link = f'<a href="/cases/{world.case_a.pk}/#lesion-{world.lesion_a.pk}">retry from the case page</a>'
    assert "Scoring failed — " + case_link in page
    assert "Not scored yet" not in page and "· not scored" not in page and "· scoring failed</figcaption>" in page
    # the map marker says the status in words, as the patient page's does
    assert f"<title>{tracked.label}: Posterior torso, Scoring failed: retry the image</title>" in page

    # one image scored, the other failed: the score is shown, and the failure beside it
    Prediction.objects.filter(image__sha256="e" * 64).update(status="done", melanoma_probability=0.2,
                                                              malignancy_score=0.2, finished_at=timezone.now())
    page = client.get(url).content.decode()
    assert "Scoring failed for an image (not compared with other visits) — " + case_link in page


def test_a_closed_case_flagged_again_is_claimed_and_reviewed_without_reopening(world, model_version, client):
    case = world.case_a
    Case.objects.filter(pk=case.pk).update(status=Case.Status.CLOSED, closed_at=timezone.now(), closed_by=world.clin_a)
    _queue(world.lesion_a)  # a re-score by a newer version flagged it after closing
    client.force_login(world.derm)
    page = client.get(f"/cases/{case.pk}/").content.decode()
    assert "Claim for review" in page and "a dermatologist can still claim and review it" in page
    response = client.post(f"/cases/{case.pk}/claim/")
    assert response.status_code == 302 and response.url == f"/cases/{case.pk}/review/"
    case.refresh_from_db()
    assert case.claimed_by == world.derm and case.status == Case.Status.CLOSED
    assert queue.release_case(case=case, reviewer=world.derm)
    case.refresh_from_db()
    assert case.claimed_by is None and case.status == Case.Status.CLOSED
    queue.claim_case(case=case, reviewer=world.derm)
    queue.submit_reviews(case=case, reviewer=world.derm, reviews=[queue.LesionReview(
        lesion=world.lesion_a, agreement="agree", final_diagnosis="nevus", management="reassure")])
    case.refresh_from_db()
    assert case.status == Case.Status.CLOSED and case.claimed_by is None
    assert not Lesion.objects.get(pk=world.lesion_a.pk).awaiting_review
    # an open case still goes to "in review" when claimed
    _queue(world.lesion_b)
    queue.claim_case(case=world.case_b, reviewer=world.derm)
    assert Case.objects.get(pk=world.case_b.pk).status == Case.Status.IN_REVIEW


def test_a_claim_held_by_someone_else_is_given_with_its_date(world, client):
    _queue(world.lesion_a)
    queue.claim_case(case=world.case_a, reviewer=world.derm2)
    claimed = timezone.localtime(Case.objects.get(pk=world.case_a.pk).claimed_at)
    with pytest.raises(queue.ClaimError, match=re.escape(f"at {claimed:%Y-%m-%d %H:%M}.")):
        queue.claim_case(case=world.case_a, reviewer=world.derm)
    client.force_login(world.derm)
    for url in ("/queue/", f"/cases/{world.case_a.pk}/"):
        assert f"Claimed by Derm2 at {claimed:%Y-%m-%d %H:%M};" in client.get(url).content.decode(), url


def test_a_filtered_case_list_that_matches_nothing_says_so(world, client):
    client.force_login(world.clin_a)
    page = client.get("/cases/", {"q": "no such question"}).content.decode()
    assert "No cases match these filters." in page and "No cases yet." not in page
    client.force_login(world.norole)
    page = client.get("/cases/").content.decode()
    assert "No cases yet." in page
