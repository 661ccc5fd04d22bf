"""Sequential dermoscopy in a real browser: the clinician places a lesion on the body map by
clicking (and by keyboard), records the same lesion at a later visit, and walks its timeline;
the patient page shows the lesions on the map. Screenshots at desktop and phone width."""
from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from cases.models import Case, Clinic, Lesion, LesionImage, Patient, PatientLesion, Prediction
from cases.roles import CLINICIAN
from classifier.models import ModelVersion
from tests.support.browser_helpers import log_in, make_user
from tests.support.imagegen import png

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def _scored_image(lesion: Lesion, version: ModelVersion, melanoma: float, seed: int) -> None:
    from django.core.files.base import ContentFile
    from django.core.files.storage import default_storage

    name = default_storage.save("lesion-images/visit.png", ContentFile(png(size=(160, 120), seed=seed)))
    image = LesionImage.objects.create(lesion=lesion, file=name, sha256=f"{seed:064d}", size_bytes=10, width=160,
                                       height=120, uploaded_by=lesion.case.referring_clinician)
    Prediction.objects.create(image=image, model_version=version, status="done", melanoma_probability=melanoma,
                              malignancy_score=melanoma, finished_at=timezone.now())


def test_body_map_visits_and_timeline(live_server, browser_page, artifacts_dir):
    from playwright.sync_api import expect

    page, base = browser_page, live_server.url
    version = ModelVersion.objects.create(version="browser-v1", status=ModelVersion.Status.ACTIVE,
                                          artifact_path="/nonexistent", melanoma_threshold=0.3,
                                          malignancy_threshold=0.5)
    clinic = Clinic.objects.create(name="Follow-up clinic")
    user = make_user("fiona", "Fiona Follow", CLINICIAN, clinic)
    patient = Patient.objects.create(clinic=clinic, identifier="FU-1", birth_year=1975, created_by=user)
    first = Case.objects.create(patient=patient, referring_clinician=user, clinical_question="Baseline mole map",
                                visit_date=timezone.localdate() - timedelta(days=120))
    log_in(page, base, "fiona")

    # Visit 1: a click on the front figure's left-hand arm (the patient's right arm) sets site and side.
    page.goto(f"{base}/cases/{first.pk}/")
    page.locator('.body-map.is-interactive rect[data-view="front"][data-site="upper extremity"]').first.click()
    expect(page.get_by_label("Anatomic site")).to_have_value("upper extremity")
    expect(page.get_by_label("Left/right")).to_have_value("right")
    expect(page.locator("#body-map-choice")).to_contain_text("right arm")
    page.screenshot(path=str(artifacts_dir / "60-body-map-click.png"), full_page=True)
    page.get_by_role("button", name="Add lesion").click()
    expect(page.get_by_role("heading", name="Lesion L1 · Upper extremity (right)")).to_be_visible()
    tracked = PatientLesion.objects.get(patient=patient, number=1)
    assert tracked.map_view == "front" and 0 < tracked.map_x < 0.3 and tracked.side == "right"

    # The keyboard alone: tab to the back figure's torso and press Enter.
    region = page.locator('.body-map.is-interactive rect[data-view="back"][data-site="posterior torso"]')
    region.focus()
    page.keyboard.press("Enter")
    expect(page.get_by_label("Anatomic site")).to_have_value("posterior torso")
    page.get_by_label("Description").fill("flat brown macule")
    page.get_by_role("button", name="Add lesion").click()
    expect(page.get_by_role("heading", name="Lesion L2 · Posterior torso (midline)")).to_be_visible()
    _scored_image(Lesion.objects.get(case=first, tracked=tracked), version, 0.12, seed=1)

    # Visit 2: opened today; the same lesion is chosen from "Seen before?"; its site comes along.
    page.goto(f"{base}/patients/{patient.pk}/")
    page.get_by_role("link", name="Open a case").click()
    page.get_by_label("Clinical question").fill("Has L1 changed?")
    page.get_by_role("button", name="Open case").click()
    page.get_by_label("Seen before?").select_option(label=f"L1: Upper extremity, right, last seen "
                                                          f"{first.visit_date:%Y-%m-%d}")
    page.get_by_role("button", name="Add lesion").click()
    expect(page.get_by_role("heading", name="Lesion L1 · Upper extremity (right)")).to_be_visible()
    second = Case.objects.exclude(pk=first.pk).get(patient=patient)
    _scored_image(Lesion.objects.get(case=second, tracked=tracked), version, 0.48, seed=2)
    page.reload()
    page.get_by_role("link", name="Timeline: seen at 2 visits").click()

    # The timeline: both visits, the rise marked "Changed", the plot, and the comparison.
    expect(page.get_by_role("heading", name="Lesion L1 · Upper extremity (right)")).to_be_visible()
    expect(page.locator(".visit.is-changed")).to_have_count(1)
    expect(page.locator(".change-reasons")).to_contain_text("Melanoma probability rose from 12.0% to 48.0% (+36.0 points")
    expect(page.locator(".score-plot circle")).to_have_count(2)
    expect(page.locator(".compare-pair img")).to_have_count(2)
    page.get_by_label("First visit").select_option(index=1)
    page.get_by_role("button", name="Compare").click()
    expect(page.locator(".compare-pair figcaption").first).to_contain_text(f"{timezone.localdate():%Y-%m-%d}")
    page.screenshot(path=str(artifacts_dir / "61-lesion-timeline.png"), full_page=True)
    page.set_viewport_size({"width": 390, "height": 844})
    assert page.evaluate("document.documentElement.scrollWidth - document.documentElement.clientWidth") <= 0
    page.screenshot(path=str(artifacts_dir / "62-lesion-timeline-phone.png"), full_page=True)
    page.set_viewport_size({"width": 1280, "height": 900})

    # The patient page: both lesions on the map (coloured by status) and in the list; a marker opens the timeline.
    page.goto(f"{base}/patients/{patient.pk}/")
    expect(page.locator(".body-map .marker")).to_have_count(2)
    expect(page.locator(".lesion-list")).to_contain_text("Not scored yet")
    page.screenshot(path=str(artifacts_dir / "63-patient-body-map.png"), full_page=True)
    page.locator(".body-map .marker").first.click()
    expect(page).to_have_url(f"{base}/patients/{patient.pk}/lesions/1/")

    # Moving a lesion on the map: a click on the back figure and a reason; audited, not re-scored.
    page.get_by_role("link", name="Move on the body map").click()
    page.locator('.body-map.is-interactive rect[data-view="back"][data-site="upper extremity"]').last.click()
    page.get_by_label("Reason for the correction").fill("it is on the back of the arm")
    page.get_by_role("button", name="Save place").click()
    expect(page.locator(".messages")).to_contain_text("L1 placed on the body map")
    tracked.refresh_from_db()
    assert tracked.map_view == "back" and tracked.side == "right"
