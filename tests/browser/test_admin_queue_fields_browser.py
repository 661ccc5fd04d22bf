"""An admin opens a waiting lesion and its claimed case in the admin: the queue's fields (flagged,
awaiting review, the claim, the status) are shown read-only, and saving the page keeps the lesion
in the queue and the claim in place."""
from __future__ import annotations

import pytest
from django.contrib.auth import get_user_model
from django.utils import timezone

from tests.support.browser_helpers import PASSWORD, admin_log_in

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_an_admin_sees_the_queue_fields_read_only_and_cannot_unqueue_a_lesion(live_server, browser_page,
                                                                              artifacts_dir):
    from playwright.sync_api import expect

    from cases.models import Case, Clinic, Lesion, Patient

    page, base = browser_page, live_server.url
    root = admin_log_in(page, base)
    derm = get_user_model().objects.create_user("dr_queue", password=PASSWORD)
    clinic = Clinic.objects.create(name="Clinic A")
    patient = Patient.objects.create(clinic=clinic, identifier="QUEUE-1", birth_year=1960, created_by=root)
    claimed_at = timezone.now()
    case = Case.objects.create(patient=patient, referring_clinician=root, clinical_question="Changing mole?",
                               claimed_by=derm, claimed_at=claimed_at, status=Case.Status.IN_REVIEW)
    since = timezone.now()
    lesion = Lesion.objects.create(case=case, anatomic_site="posterior torso", flagged=True, awaiting_review=True,
                                   flagged_at=since)

    page.goto(f"{base}/admin/cases/lesion/{lesion.pk}/change/")
    for name in ("flagged", "awaiting_review", "flagged_at"):
        expect(page.locator(f".field-{name} .readonly")).to_be_visible()
        expect(page.locator(f'input[name^="{name}"]')).to_have_count(0)
    page.get_by_label("Description").fill("checked in the admin")
    page.screenshot(path=str(artifacts_dir / "admin-lesion-queue-fields.png"), full_page=True)
    page.get_by_role("button", name="Save", exact=True).click()
    expect(page.locator(".messagelist")).to_contain_text("was changed successfully")
    lesion.refresh_from_db()
    assert lesion.description == "checked in the admin"
    assert (lesion.flagged, lesion.awaiting_review, lesion.flagged_at) == (True, True, since)

    page.goto(f"{base}/admin/cases/case/{case.pk}/change/")
    expect(page.locator(".field-claimed_by .readonly")).to_contain_text("dr_queue")
    expect(page.locator(".field-status .readonly")).to_contain_text("In review")
    for name in ("status", "claimed_by", "claimed_at_0", "closed_at_0", "closed_by",
                 "lesions-0-flagged", "lesions-0-awaiting_review"):
        expect(page.locator(f'[name="{name}"]')).to_have_count(0)
    expect(page.locator("#lesions-0 td.field-awaiting_review")).to_have_count(1)  # the inline shows it, read-only
    page.get_by_role("button", name="Save", exact=True).click()
    expect(page.locator(".messagelist")).to_contain_text("was changed successfully")
    case.refresh_from_db()
    assert (case.claimed_by, case.claimed_at, case.status) == (derm, claimed_at, Case.Status.IN_REVIEW)
    assert Lesion.objects.get(pk=lesion.pk).awaiting_review
