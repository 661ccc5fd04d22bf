"""The patients list's and the queue's filters, clicked: each new control and Filter narrow the
rows; "Next" with a filter on keeps the filter."""
from __future__ import annotations

from datetime import date

import pytest
from django.utils import timezone

from cases.models import Case, Clinic, Lesion, Patient, Review
from cases.roles import CLINICIAN, DERMATOLOGIST
from tests.support.browser_helpers import log_in, make_user

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

OLD, RECENT = date(2024, 3, 1), date(2025, 6, 1)


def _visit(patient, clinician, visit: date, *, flagged=False, awaiting=False, question="A visit") -> Lesion:
    case = Case.objects.create(patient=patient, referring_clinician=clinician, clinical_question=question,
                               visit_date=visit)
    return Lesion.objects.create(case=case, anatomic_site="head/neck", flagged=flagged or awaiting,
                                 awaiting_review=awaiting, flagged_at=timezone.now() if flagged or awaiting else None)


def _review(lesion: Lesion, reviewer) -> None:
    Review.objects.create(lesion=lesion, reviewer=reviewer, agreement="agree", final_diagnosis="nevus",
                          management="reassure")


def _rows(page):
    return page.locator("table tbody tr")


def test_filter_the_patients_list(live_server, browser_page, artifacts_dir, settings):
    from playwright.sync_api import expect

    page, base = browser_page, live_server.url
    clinic, other = Clinic.objects.create(name="Filter clinic"), Clinic.objects.create(name="Other clinic")
    fiona = make_user("fiona", "Fiona Filter", CLINICIAN, clinic)
    olga = make_user("olga", "Olga Other", CLINICIAN, other)
    dora = make_user("dora", "Dora Derm", DERMATOLOGIST)
    make_user("dan", "Dan Derm", DERMATOLOGIST)

    def patient(identifier, where=clinic, who=fiona):
        return Patient.objects.create(clinic=where, identifier=identifier, birth_year=1980, sex="female",
                                      created_by=who)

    _visit(patient("FP-1"), fiona, RECENT, awaiting=True)
    _review(_visit(patient("FP-2"), fiona, OLD, flagged=True), dora)
    _visit(patient("FP-3"), fiona, timezone.localdate())
    # another clinic's patient matching every filter below: never shown to Fiona
    stranger = _visit(patient("FX-1", other, olga), olga, RECENT, awaiting=True)
    _review(stranger, dora)

    log_in(page, base, "fiona")
    page.get_by_role("link", name="Patients", exact=True).click()
    expect(_rows(page)).to_have_count(3)

    page.get_by_label("Lesions").select_option("awaiting")
    page.get_by_role("button", name="Filter").click()
    expect(_rows(page)).to_have_count(1)
    expect(page.locator("table tbody")).to_contain_text("FP-1")
    page.get_by_role("link", name="Clear").click()
    expect(_rows(page)).to_have_count(3)

    page.get_by_label("Reviewer").select_option(label="Dora Derm")
    page.get_by_role("button", name="Filter").click()
    expect(_rows(page)).to_have_count(1)
    expect(page.locator("table tbody")).to_contain_text("FP-2")
    page.get_by_role("link", name="Clear").click()

    page.get_by_label("Last visit from").fill("2025-01-01")
    page.get_by_label("Last visit to").fill("2025-12-31")
    page.get_by_role("button", name="Filter").click()
    expect(_rows(page)).to_have_count(1)
    expect(page.locator("table tbody")).to_contain_text("FP-1")
    expect(page.locator("table tbody")).not_to_contain_text("FX-1")

    page.get_by_label("Last visit from").fill("2025-12-31")
    page.get_by_label("Last visit to").fill("2025-01-01")
    page.get_by_role("button", name="Filter").click()
    expect(page.get_by_role("alert")).to_contain_text("“Last visit from” is after “Last visit to”.")
    expect(_rows(page)).to_have_count(3)  # the unfiltered list
    page.get_by_role("link", name="Clear").click()

    settings.LIST_PAGE_SIZE = 1
    page.get_by_label("Lesions").select_option("flagged")
    page.get_by_role("button", name="Filter").click()
    expect(page.get_by_text("Page 1 of 2 (2 in all)")).to_be_visible()
    expect(page.locator("table tbody")).to_contain_text("FP-1")
    page.get_by_role("link", name="Next").click()
    expect(page.get_by_text("Page 2 of 2 (2 in all)")).to_be_visible()
    expect(_rows(page)).to_have_count(1)
    expect(page.locator("table tbody")).to_contain_text("FP-2")
    expect(page.get_by_label("Lesions")).to_have_value("flagged")
    assert "status=flagged" in page.url and "page=2" in page.url
    page.screenshot(path=str(artifacts_dir / "81-patients-filtered.png"), full_page=True)


def test_filter_the_queue_by_visit_dates_and_claim_holder(live_server, browser_page, artifacts_dir, settings):
    from playwright.sync_api import expect

    page, base = browser_page, live_server.url
    clinic = Clinic.objects.create(name="Queue clinic")
    quinn = make_user("quinn", "Quinn Queue", CLINICIAN, clinic)
    make_user("dora", "Dora Derm", DERMATOLOGIST)
    dan = make_user("dan", "Dan Derm", DERMATOLOGIST)
    patient = Patient.objects.create(clinic=clinic, identifier="QP-1", birth_year=1965, sex="male", created_by=quinn)
    old = _visit(patient, quinn, OLD, awaiting=True, question="Old visit").case
    recent = _visit(patient, quinn, RECENT, awaiting=True, question="Recent visit").case
    _visit(patient, quinn, timezone.localdate(), awaiting=True, question="Today's visit")
    Case.objects.filter(pk__in=[old.pk, recent.pk]).update(claimed_by=dan, claimed_at=timezone.now(),
                                                           status=Case.Status.IN_REVIEW)

    log_in(page, base, "dora")
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Review queue").click()
    rows = page.locator("table.queue tbody tr")
    expect(rows).to_have_count(3)

    page.get_by_label("Claim held by").select_option(label="Dan Derm")
    page.get_by_role("button", name="Filter").click()
    expect(rows).to_have_count(2)
    expect(page.locator("table.queue tbody")).not_to_contain_text("Today's visit")

    page.get_by_label("Visit from").fill("2025-01-01")
    page.get_by_label("Visit to").fill("2025-12-31")
    page.get_by_role("button", name="Filter").click()
    expect(rows).to_have_count(1)
    expect(page.locator("table.queue tbody")).to_contain_text("Recent visit")
    page.get_by_role("link", name="Clear").click()
    expect(rows).to_have_count(3)

    page.get_by_label("Visit to").fill("2024-12-31")
    page.get_by_role("button", name="Filter").click()
    expect(rows).to_have_count(1)
    expect(page.locator("table.queue tbody")).to_contain_text("Old visit")
    page.get_by_role("link", name="Clear").click()

    settings.LIST_PAGE_SIZE = 1
    page.get_by_label("Claim held by").select_option(label="Dan Derm")
    page.get_by_role("button", name="Filter").click()
    expect(page.get_by_text("Page 1 of 2 (2 in all)")).to_be_visible()
    first = page.locator("table.queue tbody").inner_text()
    page.get_by_role("link", name="Next").click()
    expect(page.get_by_text("Page 2 of 2 (2 in all)")).to_be_visible()
    expect(rows).to_have_count(1)
    expect(page.locator("table.queue tbody")).not_to_contain_text("Today's visit")
    assert page.locator("table.queue tbody").inner_text() != first
    expect(page.get_by_label("Claim held by")).to_have_value(str(dan.pk))
    assert f"claimed_by={dan.pk}" in page.url
    page.screenshot(path=str(artifacts_dir / "82-queue-filtered.png"), full_page=True)
