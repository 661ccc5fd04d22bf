"""The daily pages: methods, expired claims on the queue and case page, what a queue row and the
review page show, paging, the age at the visit, and the styled error pages."""
from __future__ import annotations

from datetime import date, timedelta

import pytest
from django.test import Client
from django.utils import timezone

from cases.models import Case, Lesion, Patient, Prediction
from tests.support.case_helpers import make_image

pytestmark = pytest.mark.django_db


def _flag(world, lesion: Lesion, *, melanoma: float = 0.7, sha: str = "f" * 64, waited: timedelta = timedelta(0)):
    """A scored, flagged lesion waiting for review (flagged ``waited`` ago)."""
    image = make_image(world, sha=sha, lesion=lesion)
    Prediction.objects.create(image=image, model_version=world_version(), status="done", melanoma_probability=melanoma,
                              malignancy_score=melanoma, flagged=True, finished_at=timezone.now())
    Lesion.objects.filter(pk=lesion.pk).update(flagged=True, awaiting_review=True, flagged_at=timezone.now() - waited)
    return image


def world_version():
    from classifier.models import ModelVersion

    return ModelVersion.objects.get(status=ModelVersion.Status.ACTIVE)


def test_patient_list_answers_get_and_refuses_post_with_405(client, world):
    client.force_login(world.clin_a)
    assert client.get("/patients/").status_code == 200
    assert client.post("/patients/", {"q": "PA"}).status_code == 405  # was a 500: the decorator sat on a helper


# --- Expired claims ------------------------------------------------------------------------------

def _claim(case: Case, reviewer, hours_ago: float) -> None:
    Case.objects.filter(pk=case.pk).update(claimed_by=reviewer, claimed_at=timezone.now() - timedelta(hours=hours_ago),
                                           status=Case.Status.IN_REVIEW)


def test_an_expired_claim_offers_take_over_on_the_queue_and_the_case_page(client, world, settings):
    settings.CLAIM_EXPIRY_HOURS = 4
    _flag(world, world.lesion_a)
    _claim(world.case_a, world.derm2, hours_ago=5)
    client.force_login(world.derm)
    html = client.get("/queue/").content.decode()
    assert "Claims expire after 4 h" in html
    assert "Claim expired (claimed by Derm2 at" in html and f'aria-label="Take over case {world.case_a.pk}"' in html
    page = client.get(f"/cases/{world.case_a.pk}/").content.decode()
    assert "Claim expired (claimed by Derm2 at" in page and "Take over" in page and "Claims expire after 4 h" in page
    # the unclaimed filter counts a lapsed claim as none
    assert [c.pk for c in client.get("/queue/", {"claim": "unclaimed"}).context["cases"]] == [world.case_a.pk]
    taken = client.post(f"/cases/{world.case_a.pk}/claim/", follow=True)
    assert Case.objects.get(pk=world.case_a.pk).claimed_by == world.derm
    assert "You took it over from Derm2" in taken.content.decode()


def test_a_live_claim_says_when_it_expires_and_offers_no_button(client, world, settings):
    settings.CLAIM_EXPIRY_HOURS = 4
    _flag(world, world.lesion_a)
    _claim(world.case_a, world.derm2, hours_ago=1)
    client.force_login(world.derm)
    for url in ("/queue/", f"/cases/{world.case_a.pk}/"):
        html = client.get(url).content.decode()
        assert "Claimed by Derm2 at" in html and "the claim expires at" in html, url
        assert "Take over" not in html and "Claim expired" not in html, url
    assert list(client.get("/queue/", {"claim": "unclaimed"}).context["cases"]) == []


# --- What a queue row and the review page show --------------------------------------------------

def test_a_queue_row_shows_question_age_site_thumbnail_and_waiting_time(client, world):
    Case.objects.filter(pk=world.case_a.pk).update(visit_date=date(2020, 6, 1))
    image = _flag(world, world.lesion_a, waited=timedelta(hours=3, minutes=5))
    client.force_login(world.derm)
    response = client.get("/queue/")
    html = response.content.decode()
    row = html[html.index("<tbody>"):html.index("</tbody>")]
    assert "Changing mole?" in row  # the clinical question
    assert "50 y, female" in row  # age at the 2020 visit, not today
    assert "Posterior torso" in row
    assert f'<img class="queue-thumb" src="/images/{image.pk}/file/"' in row
    assert "3\xa0hours" in row  # how long it has waited since it was flagged


def test_the_review_page_shows_age_at_the_visit_sex_and_the_case_notes(client, world):
    Case.objects.filter(pk=world.case_a.pk).update(visit_date=date(2020, 6, 1),
                                                   notes="On anticoagulants; excised mole 2019.")
    _flag(world, world.lesion_a)
    _claim(world.case_a, world.derm, hours_ago=0)
    client.force_login(world.derm)
    html = client.get(f"/cases/{world.case_a.pk}/review/").content.decode()
    context = html[html.index('id="review-context"'):html.index("</dl>")]
    assert "PA-1 · 50 years · Female" in context  # 2020 − 1970, whatever year it is now
    assert "Case notes" in context and "On anticoagulants; excised mole 2019." in context
    assert "Changing mole?" in context


# --- Paging --------------------------------------------------------------------------------------

def _more_cases(world, n: int) -> list[Case]:
    return [Case.objects.create(patient=world.patient_a, referring_clinician=world.clin_a,
                                clinical_question=f"Extra question {i}") for i in range(n)]


def test_the_cases_list_pages(client, world, settings):
    settings.LIST_PAGE_SIZE = 2
    _more_cases(world, 4)  # 5 cases of clinic A in all
    client.force_login(world.clin_a)
    first, last = client.get("/cases/"), client.get("/cases/", {"page": 3})
    assert len(first.context["cases"]) == 2 and len(last.context["cases"]) == 1
    assert "Page 3 of 3 (5 in all)" in last.content.decode()
    seen = {c.pk for p in (1, 2, 3) for c in client.get("/cases/", {"page": p}).context["cases"]}
    assert seen == set(Case.objects.filter(patient=world.patient_a).values_list("pk", flat=True))
    assert client.get("/cases/", {"page": "junk"}).context["page_obj"].number == 1


def test_the_queue_pages(client, world, settings):
    settings.LIST_PAGE_SIZE = 2
    cases = _more_cases(world, 2) + [world.case_a]
    for i, case in enumerate(cases):
        _flag(world, Lesion.objects.create(case=case, anatomic_site="head/neck"), melanoma=0.9 - i / 10,
              sha=f"{i:064d}")
    client.force_login(world.derm)
    first, second = client.get("/queue/"), client.get("/queue/", {"page": 2})
    assert [c.pk for c in first.context["cases"]] == [cases[0].pk, cases[1].pk]  # most suspicious first
    assert [c.pk for c in second.context["cases"]] == [cases[2].pk]
    assert "Page 2 of 2 (3 in all)" in second.content.decode()


# --- Age at the visit: one rule -------------------------------------------------------------------

def test_age_at_the_visit_is_one_rule_for_the_pages_and_the_report(world):
    from cases import report
    from cases.presentation import age_at_visit

    case = Case.objects.get(pk=world.case_a.pk)
    case.visit_date = date(2001, 12, 31)
    assert age_at_visit(case) == 31 == report.age_at(case)
    assert age_at_visit(Case(patient=Patient(birth_year=None), visit_date=date(2001, 1, 1))) is None


# --- Styled error pages with DEBUG off --------------------------------------------------------------

def test_403_404_and_500_are_the_styled_pages_not_the_debug_page(world, settings, monkeypatch):
    settings.DEBUG = False
    client = Client(raise_request_exception=False)
    client.force_login(world.clin_a)
    refused = client.get("/queue/")  # the queue is for dermatologists
    missing = client.get("/no-such-page/")

    def boom(user):
        raise RuntimeError("a bug")

    monkeypatch.setattr("cases.access.visible_cases", boom)
    broken = client.get("/")
    for response, status, heading in ((refused, 403, "Not allowed"), (missing, 404, "Not found"),
                                      (broken, 500, "Something went wrong")):
        html = response.content.decode()
        assert response.status_code == status
        assert '<section class="panel error-page">' in html and f"<h1>{heading}</h1>" in html, status
        assert "/static/css/app.css" in html  # styled
        assert "Traceback" not in html and "a bug" not in html and "technical_500" not in html, status
    assert "The review queue is for dermatologists." in refused.content.decode()


def test_the_patient_list_counts_only_the_visits_the_user_may_open(client, world):
    """A dermatologist sees a patient through a case in the queue: the visit count must not reveal
    the patient's other visits (as the last-visit column does not)."""
    Case.objects.create(patient=world.patient_a, referring_clinician=world.clin_a, clinical_question="Routine check")
    _flag(world, world.lesion_a)
    client.force_login(world.derm)
    (row,) = client.get("/patients/").context["patients"]
    assert row == world.patient_a and row.case_count == 1
    client.force_login(world.clin_a)
    assert [p.case_count for p in client.get("/patients/").context["patients"]] == [2]
