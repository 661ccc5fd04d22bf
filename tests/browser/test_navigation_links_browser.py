"""The navigation links no other browser test clicked, clicked in a real browser: "Find a patient"
on the start page, "Cancel" on the new-patient, correction and body-map forms (nothing is saved),
the breadcrumbs "Back" and "Back to the timeline", "Back to the case" on a lesion page, and the
dermatologist's "Continue review" (queue) and "Review flagged lesions" (case page), and the review
page's link to the timeline of a lesion seen at an earlier visit."""
from __future__ import annotations

import re
from datetime import timedelta

import pytest
from django.utils import timezone

from audit.models import AuditEvent
from cases.models import Case, Clinic, Lesion, Patient, PatientLesion
from cases.roles import CLINICIAN, DERMATOLOGIST
from tests.support.browser_helpers import log_in, make_user

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def _clinic_case():
    clinic = Clinic.objects.create(name="Harbour Skin Clinic")
    clinician = make_user("cora", "Cora Clinician", CLINICIAN, clinic)
    patient = Patient.objects.create(clinic=clinic, identifier="HSC-0007", birth_year=1971, created_by=clinician)
    case = Case.objects.create(patient=patient, referring_clinician=clinician, clinical_question="New dark spot")
    lesion = Lesion.objects.create(case=case, anatomic_site="lower extremity")
    return patient, case, lesion


def test_find_a_patient_and_cancel_adding_one(live_server, browser_page):
    from playwright.sync_api import expect

    page, base = browser_page, live_server.url
    _clinic_case()
    log_in(page, base, "cora")
    page.get_by_role("link", name="Find a patient").click()
    expect(page).to_have_url(f"{base}/patients/")
    expect(page.locator("main")).to_contain_text("HSC-0007")

    page.goto(f"{base}/patients/new/")
    page.locator("#id_identifier").fill("HSC-0099")
    page.get_by_role("link", name="Cancel").click()
    expect(page).to_have_url(f"{base}/patients/")
    assert not Patient.objects.filter(identifier="HSC-0099").exists()


def test_cancel_and_back_leave_a_correction_unsaved(live_server, browser_page):
    from playwright.sync_api import expect

    page, base = browser_page, live_server.url
    _, case, lesion = _clinic_case()
    log_in(page, base, "cora")
    case_url = f"{base}/cases/{case.pk}/"
    for leave in ("Cancel", "Back"):
        page.goto(case_url)
        page.get_by_role("link", name="Correct the site").click()
        page.get_by_label("Anatomic site").select_option("upper extremity")
        page.get_by_label("Reason for the correction").fill("changed my mind")
        page.get_by_role("link", name=leave, exact=True).click()
        expect(page).to_have_url(re.compile(re.escape(case_url) + f"#lesion-{lesion.pk}$"))
    lesion.refresh_from_db()
    assert lesion.anatomic_site == "lower extremity"
    assert not AuditEvent.objects.filter(action="update").exists()  # a saved correction is audited as one


def test_cancel_and_back_leave_the_body_map_unchanged(live_server, browser_page):
    from playwright.sync_api import expect

    page, base = browser_page, live_server.url
    patient, _, lesion = _clinic_case()
    timeline = f"{base}/patients/{patient.pk}/lesions/{lesion.tracked.number}/"
    log_in(page, base, "cora")
    for leave in ("Cancel", "Back to the timeline"):
        page.goto(timeline)
        page.get_by_role("link", name="Place on the body map").click()
        page.locator('.body-map.is-interactive rect[data-view="front"][data-site="lower extremity"]').last.click()
        page.get_by_role("link", name=leave, exact=True).click()
        expect(page).to_have_url(timeline)
    assert not PatientLesion.objects.get(pk=lesion.tracked_id).map_view
    assert not AuditEvent.objects.filter(action="update").exists()
    expect(page.locator("main")).to_contain_text("Not placed on the body map yet.")


def test_a_dermatologist_goes_from_the_queue_to_the_review_and_back(live_server, browser_page):
    from playwright.sync_api import expect

    page, base = browser_page, live_server.url
    _, case, lesion = _clinic_case()
    dora = make_user("dora", "Dora Derm", DERMATOLOGIST)
    Lesion.objects.filter(pk=lesion.pk).update(flagged=True, awaiting_review=True, flagged_at=timezone.now())
    Case.objects.filter(pk=case.pk).update(claimed_by=dora, claimed_at=timezone.now())
    review_url = f"{base}/cases/{case.pk}/review/"
    log_in(page, base, "dora")
    page.goto(f"{base}/queue/")
    page.get_by_role("link", name="Continue review").click()
    expect(page).to_have_url(review_url)

    page.goto(f"{base}/cases/{case.pk}/")
    page.get_by_role("link", name="Review flagged lesions").click()
    expect(page).to_have_url(review_url)

    page.goto(f"{base}/lesions/{lesion.pk}/")
    page.get_by_role("link", name="Back to the case").click()
    expect(page).to_have_url(f"{base}/cases/{case.pk}/")


def test_the_review_page_opens_the_timeline_of_the_earlier_visits(live_server, browser_page):
    from playwright.sync_api import expect

    page, base = browser_page, live_server.url
    patient, first, lesion = _clinic_case()
    Case.objects.filter(pk=first.pk).update(visit_date=timezone.localdate() - timedelta(days=90))
    later = Case.objects.create(patient=patient, referring_clinician=first.referring_clinician,
                                clinical_question="Has it changed?")
    again = Lesion.objects.create(case=later, tracked=lesion.tracked, anatomic_site="lower extremity",
                                  flagged=True, awaiting_review=True, flagged_at=timezone.now())
    dora = make_user("dora", "Dora Derm", DERMATOLOGIST)
    Case.objects.filter(pk=later.pk).update(claimed_by=dora, claimed_at=timezone.now())
    review_url = f"{base}/cases/{later.pk}/review/"
    log_in(page, base, "dora")
    page.goto(review_url)
    expect(page.get_by_text("Changed since the earlier visit?")).to_be_visible()
    page.get_by_role("radio", name="Agree with the AI flag", exact=True).check()  # what is filled in stays: the timeline opens in a new tab
    with page.context.expect_page() as opened:
        page.get_by_role("link", name="Timeline of L1: compare with its earlier visit").click()
    timeline = opened.value
    timeline.wait_for_load_state()
    expect(timeline).to_have_url(f"{base}/patients/{patient.pk}/lesions/{lesion.tracked.number}/")
    expect(timeline.get_by_role("heading", name="Lesion L1 · Lower extremity")).to_be_visible()
    expect(timeline.locator(f"#visit-{lesion.pk}")).to_contain_text(f"case {first.pk}")
    expect(timeline.locator(f"#visit-{again.pk}")).to_contain_text("Flagged — awaiting review")
    expect(page).to_have_url(review_url)
    expect(page.get_by_role("radio", name="Agree with the AI flag", exact=True)).to_be_checked()
