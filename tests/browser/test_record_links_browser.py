"""The remaining record links and buttons, clicked: correcting a patient and a case, the lesion
list's link, Cancel on a correction, clearing the cases filter, the queue's filters, and the
admin's monitoring link on the Predictions list."""
from __future__ import annotations

import pytest
from django.contrib.auth import get_user_model
from django.utils import timezone

from cases.models import Case, Clinic, Lesion, LesionImage, Patient, Prediction
from cases.roles import CLINICIAN, DERMATOLOGIST
from classifier.models import ModelVersion
from tests.support.browser_helpers import PASSWORD, log_in, make_user
from tests.support.imagegen import png

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def record(monkeypatch):
    from django.core.files.base import ContentFile
    from django.core.files.storage import default_storage

    monkeypatch.setattr("cases.scoring.dispatch_prediction", lambda pk, **kwargs: True)
    version = ModelVersion.objects.create(version="links-v1", status=ModelVersion.Status.ACTIVE,
                                          artifact_path="/nonexistent", melanoma_threshold=0.3, malignancy_threshold=0.5)
    clinic = Clinic.objects.create(name="Links clinic")
    user = make_user("lena", "Lena Links", CLINICIAN, clinic)
    make_user("dora", "Dora Derm", DERMATOLOGIST)
    patient = Patient.objects.create(clinic=clinic, identifier="LK-1", birth_year=1971, sex="female", created_by=user)
    case = Case.objects.create(patient=patient, referring_clinician=user, clinical_question="Mole on the shin")
    lesion = Lesion.objects.create(case=case, anatomic_site="lower extremity", flagged=True, awaiting_review=True,
                                   flagged_at=timezone.now())
    name = default_storage.save("lesion-images/l.png", ContentFile(png(size=(120, 90))))
    image = LesionImage.objects.create(lesion=lesion, file=name, sha256="d" * 64, size_bytes=10, width=120, height=90,
                                       uploaded_by=user)
    Prediction.objects.create(image=image, model_version=version, status="done", melanoma_probability=0.6,
                              malignancy_score=0.6, flagged=True, finished_at=timezone.now())
    return patient, case, image


def test_correct_patient_and_case_and_the_list_links(live_server, browser_page, artifacts_dir, record):
    from playwright.sync_api import expect

    patient, case, image = record
    page, base = browser_page, live_server.url
    log_in(page, base, "lena")

    page.goto(f"{base}/patients/{patient.pk}/")
    page.get_by_role("link", name="Correct patient details").click()
    page.get_by_label("Birth year").fill("1972")
    page.get_by_label("Reason for the correction").fill("registry says 1972")
    page.get_by_role("button", name="Save correction").click()
    expect(page.locator(".messages")).to_contain_text("Patient LK-1 corrected")
    expect(page.locator(".messages")).to_contain_text("scored again")
    assert Patient.objects.get(pk=patient.pk).birth_year == 1972
    assert Prediction.objects.filter(image=image, context_revision=1).exists()

    page.get_by_role("link", name="L1", exact=True).click()
    expect(page).to_have_url(f"{base}/patients/{patient.pk}/lesions/1/")
    page.get_by_role("link", name="Place on the body map").click()
    page.get_by_role("link", name="Cancel").click()
    expect(page).to_have_url(f"{base}/patients/{patient.pk}/lesions/1/")

    page.goto(f"{base}/cases/{case.pk}/")
    page.get_by_role("link", name="Correct case details").click()
    page.get_by_label("Clinical question").fill("Mole on the left shin, bleeding once")
    page.get_by_label("Reason for the correction").fill("question completed")
    page.get_by_role("button", name="Save correction").click()
    expect(page.locator(".messages")).to_contain_text("Case corrected")
    assert Case.objects.get(pk=case.pk).clinical_question == "Mole on the left shin, bleeding once"

    page.get_by_role("link", name="Cases", exact=True).click()
    page.get_by_label("State").select_option("closed")
    page.get_by_role("button", name="Filter").click()
    expect(page.get_by_text("No cases match these filters.")).to_be_visible()
    page.get_by_role("link", name="Clear").click()
    expect(page.locator("table tbody tr")).to_have_count(1)
    page.screenshot(path=str(artifacts_dir / "90-cases-cleared.png"), full_page=True)


def test_queue_filters_and_the_admin_monitoring_link(live_server, browser_page, record):
    from playwright.sync_api import expect

    page, base = browser_page, live_server.url
    log_in(page, base, "dora")
    page.goto(f"{base}/queue/")
    expect(page.locator("table.queue tbody tr")).to_have_count(1)
    page.get_by_label("Seen at earlier visits").check()
    page.get_by_role("button", name="Filter").click()
    expect(page.get_by_text("No queued case matches these filters.")).to_be_visible()
    page.get_by_label("Seen at earlier visits").uncheck()
    page.get_by_label("Search").fill("LK-1")
    page.get_by_label("Claimed").select_option("unclaimed")
    page.get_by_role("button", name="Filter").click()
    expect(page.locator("table.queue tbody tr")).to_have_count(1)

    page.get_by_role("button", name="Log out").click()
    get_user_model().objects.create_superuser("root", "root@example.org", PASSWORD)
    page.goto(f"{base}/admin/login/")
    page.get_by_label("Username").fill("root")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()
    page.goto(f"{base}/admin/cases/prediction/")
    page.locator("#monitoring-link a").click()
    expect(page).to_have_url(f"{base}/admin/cases/prediction/monitoring/")
