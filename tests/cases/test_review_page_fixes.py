"""The review page after a refused save and the queue row: a change that landed before an
incomplete submit is still refused on the next one; "Claim and save" saves what was typed on a
released case (and says who took it otherwise); the page lists the diagnoses the model cannot
rule out and opens its links in a new tab; an error summary links to each field in error; the
queue says "age unknown" and gives the visit date, as the review page does; a case whose flag was
cleared comes after those still flagged."""
from __future__ import annotations

import re
from datetime import date

import pytest

from audit.models import AuditEvent
from cases import queue
from cases.models import Case, Review
from tests.support.case_helpers import make_image
from tests.support.review_helpers import (claim_case as _claim, open_review_page, queue_lesions as _queue,
                                           score_for_review as _score, seen_fingerprint as _seen)

pytestmark = pytest.mark.django_db

NOTES = "Blue-white veil at 3 o'clock; typed before the refusal."


def _answers(lesion, seen: str, **values) -> dict:
    data = {"agreement": "agree", "final_diagnosis": "melanoma", "management": "excision", "notes": NOTES} | values
    prefix = f"lesion-{lesion.pk}"
    return {f"{prefix}-{key}": value for key, value in data.items() if value is not None} | {f"{prefix}-seen": seen}


@pytest.fixture
def opened(world, model_version, client):
    """Derm has claimed case A (lesion A flagged by image 1, its set melanoma + nevus) and opened its review page."""
    return open_review_page(world, model_version, client, prediction_set=["melanoma", "nevus"], class_probabilities={"melanoma": 0.6, "nevus": 0.4})


# --- 2. A change before an incomplete submit is caught on the next one ----------------------------

def test_a_change_before_an_incomplete_submit_is_still_refused_on_the_next_save(world, model_version, client,
                                                                               opened):
    page, first = opened
    url = f"/cases/{world.case_a.pk}/review/"
    seen = _seen(page, world.lesion_a)
    _score(first, model_version, melanoma=0.9, reason="site corrected", revision=1)  # re-scored meanwhile
    incomplete = client.post(url, _answers(world.lesion_a, seen, management=None))
    assert incomplete.status_code == 400
    html = incomplete.content.decode()
    assert _seen(html, world.lesion_a) == seen  # what the reviewer was shown, not what is in force now
    refused = client.post(url, _answers(world.lesion_a, _seen(html, world.lesion_a)))
    assert refused.status_code == 409 and not Review.objects.exists()
    assert "was re-scored since you opened this page: check it and save again." in refused.content.decode()
    # the refusal shows the new score; saved once seen
    saved = client.post(url, _answers(world.lesion_a, _seen(refused.content.decode(), world.lesion_a)))
    assert saved.status_code == 302 and Review.objects.get().notes == NOTES


# --- 3. "Claim and save" ---------------------------------------------------------------------------

def test_claim_and_save_saves_what_was_typed_on_a_released_case(world, client, opened):
    page, _ = opened
    url = f"/cases/{world.case_a.pk}/review/"
    seen = _seen(page, world.lesion_a)
    assert "Claim and save" not in page  # the reviewer holds the claim: the plain Save
    queue.release_case(case=world.case_a, reviewer=world.derm)
    refused = client.post(url, _answers(world.lesion_a, seen))
    html = refused.content.decode()
    assert refused.status_code == 409 and not Review.objects.exists()
    assert 'name="claim" value="1">Claim and save</button>' in html and "Save review</button>" not in html
    assert NOTES.replace("'", "&#x27;") in html and _seen(html, world.lesion_a) == seen
    saved = client.post(url, _answers(world.lesion_a, _seen(html, world.lesion_a)) | {"claim": "1"})
    assert saved.status_code == 302 and saved["Location"] == "/queue/"
    review = Review.objects.get()
    assert (review.reviewer, review.final_diagnosis, review.notes) == (world.derm, "melanoma", NOTES)
    assert AuditEvent.objects.filter(action="claim", actor=world.derm, object_id=str(world.case_a.pk)).exists()
    case = Case.objects.get(pk=world.case_a.pk)
    assert case.claimed_by is None and case.status == Case.Status.REVIEWED


def test_claim_and_save_is_refused_in_words_when_a_colleague_took_the_case(world, client, opened):
    page, _ = opened
    url = f"/cases/{world.case_a.pk}/review/"
    queue.release_case(case=world.case_a, reviewer=world.derm)
    queue.claim_case(case=world.case_a, reviewer=world.derm2)
    refused = client.post(url, _answers(world.lesion_a, _seen(page, world.lesion_a)) | {"claim": "1"})
    html = refused.content.decode()
    assert refused.status_code == 409 and not Review.objects.exists()
    assert "This case was already claimed by Derm2" in html
    assert NOTES.replace("'", "&#x27;") in html and "Claim and save" not in html
    assert Case.objects.get(pk=world.case_a.pk).claimed_by == world.derm2


def test_claim_and_save_still_checks_what_was_seen(world, model_version, client, opened):
    page, _ = opened
    url = f"/cases/{world.case_a.pk}/review/"
    seen = _seen(page, world.lesion_a)
    queue.release_case(case=world.case_a, reviewer=world.derm)
    make_image(world, sha="b" * 64)  # a new image meanwhile
    refused = client.post(url, _answers(world.lesion_a, seen) | {"claim": "1"})
    assert refused.status_code == 409 and not Review.objects.exists()
    assert "has a new image since you opened this page" in refused.content.decode()
    assert Case.objects.get(pk=world.case_a.pk).claimed_by == world.derm  # claimed: the next save is a plain one


# --- 4. The prediction set; links open in a new tab -------------------------------------------------

def test_the_review_page_lists_the_set_and_opens_its_links_in_a_new_tab(world, client, opened):
    page, first = opened
    summary = page[page.index('class="small prediction-set"'):]
    summary = summary[:summary.index("</p>")]
    assert "Diagnoses the model cannot rule out" in summary
    assert '<span class="tag">Melanoma</span>' in summary and '<span class="tag">Nevus</span>' in summary
    form = page[page.index('<form method="post" novalidate>'):]
    form = form[:form.index("</form>")]
    links = re.findall(r"<a\b[^>]*>", form)
    assert links, "the form has links"
    assert all('target="_blank"' in link and 'rel="noopener"' in link for link in links), links
    assert form.count("(opens in a new tab)") == len(links)
    # the case page's summary (the shared partial) is unchanged
    case_page = client.get(f"/cases/{world.case_a.pk}/").content.decode()
    assert "prediction-set" not in case_page and f'<a href="/images/{first.pk}/">View result</a>' in case_page


# --- 5. The error summary ---------------------------------------------------------------------------

def test_an_incomplete_review_comes_back_with_an_error_summary_linking_to_each_field(world, client, opened):
    page, _ = opened
    prefix = f"lesion-{world.lesion_a.pk}"
    refused = client.post(f"/cases/{world.case_a.pk}/review/", {f"{prefix}-seen": _seen(page, world.lesion_a),
                                                                f"{prefix}-notes": ""})
    assert refused.status_code == 400
    html = refused.content.decode()
    summary = html[html.index('id="review-errors"') - 30:]
    summary = summary[:summary.index("</div>")]
    assert 'role="alert"' in summary and 'tabindex="-1"' in summary
    assert "3 answers need correcting" in summary
    targets = re.findall(r'<a href="#([^"]+)">', summary)
    assert targets == [f"id_{prefix}-agreement_0", f"id_{prefix}-final_diagnosis", f"id_{prefix}-management_0"]
    assert all(f'id="{target}"' in html for target in targets)
    assert "/static/js/review-page.js" in html
    assert 'id="review-errors"' not in page  # only after a refusal


# --- 8. Age unknown and the visit date ----------------------------------------------------------

def test_the_queue_says_age_unknown_and_gives_the_visit_date(world, model_version, client, monkeypatch):
    Case.objects.filter(pk=world.case_a.pk).update(visit_date=date(2025, 3, 14))
    _score(make_image(world), model_version)
    _queue(world.lesion_a)
    client.force_login(world.derm)
    row = client.get("/queue/").content.decode()
    assert "visit 2025-03-14" in row and "55 y, female" in row
    monkeypatch.setattr("cases.views.age_at_visit", lambda case: None)
    row = client.get("/queue/").content.decode()
    assert "age unknown, female" in row and "None y" not in row
    _claim(world.case_a, world.derm)
    review = client.get(f"/cases/{world.case_a.pk}/review/").content.decode()
    assert "<dt>Visit date</dt><dd>2025-03-14</dd>" in review


# --- 7. A cleared flag sorts after the cases still flagged ----------------------------------------

def test_a_case_whose_flag_was_cleared_comes_after_the_cases_still_flagged(world, model_version):
    cleared = make_image(world)
    _score(cleared, model_version, melanoma=0.9, minutes_ago=60)
    _score(cleared, model_version, melanoma=0.45, flagged=False, revision=1, reason="site corrected")
    # still flagged (by its malignancy score) with a lower melanoma probability than the cleared case
    _score(make_image(world, sha="b" * 64, lesion=world.lesion_b), model_version, melanoma=0.3)
    _queue(world.lesion_a, world.lesion_b)
    rows = list(queue.review_queue())
    assert [(row.pk, row.flag_cleared) for row in rows] == [(world.case_b.pk, False), (world.case_a.pk, True)]
    assert [row.queue_rank for row in rows] == [pytest.approx(0.3), pytest.approx(0.45)]  # the scores are unchanged
