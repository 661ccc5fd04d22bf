"""The body map and the site the model reads, clicked in a real browser: a point that contradicts
the chosen site is refused with the reason, "Clear the point" takes it off the form, and a move into
another site is sent to "Correct the site" first."""
from __future__ import annotations

import pytest

from cases.models import Case, Clinic, Lesion, Patient, PatientLesion
from cases.roles import CLINICIAN
from classifier.models import ModelVersion
from tests.support.browser_helpers import log_in, make_user

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

FRONT_ARM = '.body-map.is-interactive rect[data-view="front"][data-site="upper extremity"]'


def test_the_point_and_the_site_never_disagree(live_server, browser_page, artifacts_dir, monkeypatch):
    from playwright.sync_api import expect

    monkeypatch.setattr("cases.scoring.dispatch_prediction", lambda pk, **kwargs: True)
    ModelVersion.objects.create(version="browser-v1", status=ModelVersion.Status.ACTIVE, artifact_path="/nonexistent",
                                melanoma_threshold=0.3, malignancy_threshold=0.5)
    page, base = browser_page, live_server.url
    clinic = Clinic.objects.create(name="Map clinic")
    user = make_user("mara", "Mara Map", CLINICIAN, clinic)
    patient = Patient.objects.create(clinic=clinic, identifier="MAP-1", birth_year=1966, created_by=user)
    case = Case.objects.create(patient=patient, referring_clinician=user, clinical_question="Two moles")
    first = Lesion.objects.create(case=case, anatomic_site="posterior torso")
    PatientLesion.objects.filter(pk=first.tracked_id).update(map_view="back", map_x=0.5, map_y=0.35, side="midline")
    log_in(page, base, "mara")

    # A click on the arm, then another site from the list: the server refuses and says why.
    page.goto(f"{base}/cases/{case.pk}/")
    page.locator(FRONT_ARM).first.click()
    page.get_by_label("Anatomic site").select_option("head/neck")
    page.get_by_role("button", name="Add lesion").click()
    expect(page.locator(".errorlist").first).to_contain_text(
        "The point on the body map is on the front view, right arm (site “upper extremity”)")
    assert Lesion.objects.filter(case=case).count() == 1
    page.screenshot(path=str(artifacts_dir / "90-map-site-refused.png"), full_page=True)

    # "Clear the point": the lesion is recorded from the lists alone.
    page.get_by_role("button", name="Clear the point").click()
    expect(page.locator("#body-map-choice")).to_contain_text("No point on the map")
    expect(page.get_by_role("button", name="Clear the point")).to_be_hidden()
    page.get_by_role("button", name="Add lesion").click()
    expect(page.get_by_role("heading", name="Lesion L2 · Head/neck")).to_be_visible()
    assert PatientLesion.objects.get(patient=patient, number=2).map_view == ""

    # Moving L1 onto the arm would contradict its site: refused, with the way to correct the site.
    page.goto(f"{base}/patients/{patient.pk}/lesions/1/")
    page.get_by_role("link", name="Move on the body map").click()
    page.locator(FRONT_ARM).first.click()
    page.get_by_label("Reason for the correction").fill("it is on the arm")
    page.get_by_role("button", name="Save place").click()
    expect(page.locator(".errorlist").first).to_contain_text("use “Correct the site” first")
    assert PatientLesion.objects.get(pk=first.tracked_id).map_view == "back"
    page.get_by_role("link", name="correct the site").click()
    page.get_by_label("Anatomic site").select_option("upper extremity")
    page.get_by_label("Reason for the correction").fill("arm, not back")
    page.get_by_role("button", name="Save correction").click()
    expect(page.locator(".messages")).to_contain_text("taken off the map")
    assert PatientLesion.objects.get(pk=first.tracked_id).map_view == ""

    # Placed again, in the corrected site.
    page.goto(f"{base}/patients/{patient.pk}/lesions/1/")
    page.get_by_role("link", name="Place on the body map").click()
    page.locator(FRONT_ARM).first.click()
    page.get_by_label("Reason for the correction").fill("site corrected to the arm")
    page.get_by_role("button", name="Save place").click()
    expect(page.locator(".messages")).to_contain_text("L1 placed on the body map")
    tracked = PatientLesion.objects.get(pk=first.tracked_id)
    assert (tracked.map_view, tracked.side) == ("front", "right")
