"""An expired claim, clicked in a real browser: another dermatologist takes the case over from the
queue and from the case page."""
from __future__ import annotations

import re
from datetime import timedelta

import pytest
from django.utils import timezone

from cases.models import Case, Clinic, Lesion, Patient
from cases.roles import CLINICIAN, DERMATOLOGIST
from tests.support.browser_helpers import log_in, make_user

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def _claimed_case(patient, clinician, claimer, question: str, hours_ago: float) -> Case:
    case = Case.objects.create(patient=patient, referring_clinician=clinician, clinical_question=question)
    Lesion.objects.create(case=case, anatomic_site="posterior torso", flagged=True, awaiting_review=True,
                          flagged_at=timezone.now() - timedelta(hours=hours_ago + 1))
    Case.objects.filter(pk=case.pk).update(claimed_by=claimer, claimed_at=timezone.now() - timedelta(hours=hours_ago),
                                           status=Case.Status.IN_REVIEW)
    return case


def test_an_expired_claim_is_taken_over_by_clicking(live_server, browser_page, artifacts_dir, settings):
    from playwright.sync_api import expect

    settings.CLAIM_EXPIRY_HOURS = 4
    page, base = browser_page, live_server.url
    clinic = Clinic.objects.create(name="Claims clinic")
    clinician = make_user("cleo", "Cleo Clinician", CLINICIAN, clinic)
    away = make_user("otto", "Otto Away", DERMATOLOGIST)
    make_user("dina", "Dina Derm", DERMATOLOGIST)
    patient = Patient.objects.create(clinic=clinic, identifier="CL-1", birth_year=1970, created_by=clinician)
    from_queue = _claimed_case(patient, clinician, away, "Left behind on Friday", hours_ago=5)
    from_page = _claimed_case(patient, clinician, away, "Also left behind", hours_ago=6)
    held = _claimed_case(patient, clinician, away, "Still being read", hours_ago=1)

    log_in(page, base, "dina")
    page.goto(f"{base}/queue/")
    expect(page.get_by_text("Claims expire after 4 h")).to_be_visible()
    expect(page.locator(".claim-state.is-expired")).to_have_count(2)
    expect(page.locator(".claim-state.is-expired").first).to_contain_text("Claim expired (claimed by Otto Away at")
    expect(page.get_by_role("button", name=f"Take over case {held.pk}")).to_have_count(0)
    expect(page.get_by_text(re.compile("Claimed by Otto Away at .*the claim expires at"))).to_be_visible()
    page.screenshot(path=str(artifacts_dir / "80-queue-expired-claim.png"), full_page=True)
    page.get_by_role("button", name=f"Take over case {from_queue.pk}").click()
    expect(page.get_by_role("heading", name=f"Review case {from_queue.pk}")).to_be_visible()
    expect(page.locator(".messages")).to_contain_text("You took it over from Otto Away")
    assert Case.objects.get(pk=from_queue.pk).claimed_by.username == "dina"

    page.goto(f"{base}/cases/{from_page.pk}/")
    expect(page.get_by_text("Claim expired (claimed by Otto Away at")).to_be_visible()
    page.get_by_role("button", name=f"Take over case {from_page.pk}").click()
    expect(page.get_by_role("heading", name=f"Review case {from_page.pk}")).to_be_visible()
    assert Case.objects.get(pk=from_page.pk).claimed_by.username == "dina"
    assert Case.objects.get(pk=held.pk).claimed_by.username == "otto"
