"""The cases list's filter, clicked: only the awaiting-review case remains."""
from __future__ import annotations

import pytest

from cases.models import Case, Clinic, Lesion, Patient
from cases.roles import CLINICIAN
from tests.support.browser_helpers import log_in, make_user

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_filter_cases_by_state(live_server, browser_page, artifacts_dir):
    from playwright.sync_api import expect

    page, base = browser_page, live_server.url
    clinic = Clinic.objects.create(name="List clinic")
    user = make_user("lisa", "Lisa List", CLINICIAN, clinic)
    patient = Patient.objects.create(clinic=clinic, identifier="LI-1", birth_year=1990, created_by=user)
    waiting = Case.objects.create(patient=patient, referring_clinician=user, clinical_question="Flagged one")
    Case.objects.create(patient=patient, referring_clinician=user, clinical_question="Quiet one")
    Lesion.objects.create(case=waiting, anatomic_site="head/neck", flagged=True, awaiting_review=True)
    log_in(page, base, "lisa")
    page.get_by_role("link", name="Cases", exact=True).click()
    expect(page.locator("table tbody tr")).to_have_count(2)
    page.get_by_label("State").select_option("awaiting")
    page.get_by_role("button", name="Filter").click()
    expect(page.locator("table tbody tr")).to_have_count(1)
    expect(page.locator("table tbody")).to_contain_text("Flagged one")
    page.screenshot(path=str(artifacts_dir / "80-cases-filtered.png"), full_page=True)
