"""Form input guards clicked in a real browser: a visit before the birth year is refused (new case,
case correction, patient correction) with what was typed kept; a visit moved to another year says
the images are scored again; a refused histopathology entry reopens with what was typed; a refused
upload keeps "Clinical" chosen."""
from __future__ import annotations

from datetime import date, timedelta

import pytest
from django.utils import timezone

from cases.models import Case, Clinic, Lesion, LesionImage, Outcome, Patient, Prediction
from cases.roles import CLINICIAN
from classifier.models import ModelVersion
from tests.support.browser_helpers import log_in, make_user
from tests.support.imagegen import png

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def _clinic_case(visit: date | None = None):
    clinic = Clinic.objects.create(name="Guard clinic")
    cora = make_user("cora", "Cora Careful", CLINICIAN, clinic)
    patient = Patient.objects.create(clinic=clinic, identifier="GU-1", birth_year=1960, created_by=cora)
    case = Case.objects.create(patient=patient, referring_clinician=cora, clinical_question="Dark spot, shoulder",
                               visit_date=visit or timezone.localdate())
    lesion = Lesion.objects.create(case=case, anatomic_site="upper extremity")
    return cora, patient, case, lesion


def test_visit_dates_are_checked_against_the_birth_year(live_server, browser_page, artifacts_dir, monkeypatch):
    from django.core.files.base import ContentFile
    from django.core.files.storage import default_storage
    from playwright.sync_api import expect

    monkeypatch.setattr("cases.scoring.dispatch_prediction", lambda pk, **kwargs: True)
    page, base = browser_page, live_server.url
    version = ModelVersion.objects.create(version="guard-v1", status=ModelVersion.Status.ACTIVE,
                                          artifact_path="/nonexistent", melanoma_threshold=0.3, malignancy_threshold=0.5)
    cora, patient, case, lesion = _clinic_case(date(2019, 5, 2))
    name = default_storage.save("lesion-images/g.png", ContentFile(png(size=(120, 90))))
    image = LesionImage.objects.create(lesion=lesion, file=name, sha256="g" * 64, size_bytes=10, width=120, height=90,
                                       uploaded_by=cora)
    Prediction.objects.create(image=image, model_version=version, status="done", melanoma_probability=0.1,
                              malignancy_score=0.1, finished_at=timezone.now())
    log_in(page, base, "cora")

    # a new case dated before the birth year: refused, the question kept
    page.goto(f"{base}/patients/{patient.pk}/")
    page.get_by_role("link", name="Open a case").click()
    page.get_by_label("Visit date").fill("1955-04-01")
    page.get_by_label("Clinical question").fill("New nodule on the scalp")
    page.get_by_role("button", name="Open case").click()
    expect(page.locator("main")).to_contain_text("The visit date 1955-04-01 is before the patient's birth year (1960)")
    expect(page.get_by_label("Clinical question")).to_have_value("New nodule on the scalp")
    assert Case.objects.filter(patient=patient).count() == 1

    # the case correction: same rule, the reason kept; then a move to another year re-scores and says so
    page.goto(f"{base}/cases/{case.pk}/")
    page.get_by_role("link", name="Correct case details").click()
    expect(page.locator("p.notice[role=note]")).to_contain_text(
        "Moving the visit to another year changes the age the model reads")
    page.get_by_label("Visit date").fill("1959-12-31")
    page.get_by_label("Reason for the correction").fill("visit was a year later")
    page.get_by_role("button", name="Save correction").click()
    expect(page.locator("main")).to_contain_text("before the patient's birth year (1960)")
    expect(page.get_by_label("Reason for the correction")).to_have_value("visit was a year later")
    page.get_by_label("Visit date").fill("2020-05-02")
    page.get_by_role("button", name="Save correction").click()
    messages = page.locator(".messages")
    expect(messages).to_contain_text("Case corrected.")
    expect(messages).to_contain_text("1 image(s) are being scored again with the corrected details")
    page.screenshot(path=str(artifacts_dir / "80-visit-moved-rescored.png"), full_page=True)
    assert Case.objects.get(pk=case.pk).visit_date == date(2020, 5, 2)
    assert Prediction.objects.filter(image=image).count() == 2

    # the patient correction: a birth year after the earliest visit is refused
    page.goto(f"{base}/patients/{patient.pk}/")
    page.get_by_role("link", name="Correct patient details").click()
    page.get_by_label("Birth year").fill("2021")
    page.get_by_label("Reason for the correction").fill("registry says 2021")
    page.get_by_role("button", name="Save correction").click()
    expect(page.locator("main")).to_contain_text(
        "The patient has a visit on 2020-05-02: the birth year can't be later than 2020.")
    expect(page.get_by_label("Reason for the correction")).to_have_value("registry says 2021")
    assert Patient.objects.get(pk=patient.pk).birth_year == 1960


def test_a_refused_histopathology_entry_keeps_what_was_typed(live_server, browser_page, artifacts_dir):
    from playwright.sync_api import expect

    page, base = browser_page, live_server.url
    _cora, _patient, case, lesion = _clinic_case()
    tomorrow = (timezone.localdate() + timedelta(days=1)).isoformat()
    log_in(page, base, "cora")
    page.goto(f"{base}/cases/{case.pk}/")
    page.get_by_text("Enter the histopathology result").click()
    page.get_by_label("Histopathological diagnosis").select_option("basal cell carcinoma")
    page.get_by_label("Report date").fill(tomorrow)
    page.get_by_label("Report reference").fill("PATH-2026-0777")
    page.get_by_role("button", name="Save histopathology result").click()

    panel = page.locator(f"#outcome-{lesion.pk}")
    expect(panel.locator("details.outcome-entry")).to_have_attribute("open", "")
    expect(panel.get_by_role("alert")).to_contain_text("Histopathology result not saved")
    expect(panel).to_contain_text("The report date can't be in the future.")
    expect(page.get_by_label("Histopathological diagnosis")).to_have_value("basal cell carcinoma")
    expect(page.get_by_label("Report reference")).to_have_value("PATH-2026-0777")
    page.screenshot(path=str(artifacts_dir / "81-histopathology-refused-kept.png"), full_page=True)
    assert not Outcome.objects.exists()

    # only the date needs changing: the rest is still there
    page.get_by_label("Report date").fill(timezone.localdate().isoformat())
    page.get_by_role("button", name="Save histopathology result").click()
    expect(page.locator(".messages")).to_contain_text(
        "Histopathology result saved: Basal cell carcinoma, report PATH-2026-0777")
    assert Outcome.objects.get().diagnosis == "basal cell carcinoma"


def test_a_refused_upload_keeps_clinical_chosen(live_server, browser_page, tmp_path):
    from playwright.sync_api import expect

    page, base = browser_page, live_server.url
    _cora, _patient, case, lesion = _clinic_case()
    bad = tmp_path / "photo.jpg"
    bad.write_bytes(b"this is not an image")
    log_in(page, base, "cora")
    page.goto(f"{base}/cases/{case.pk}/")
    page.get_by_label("Image type").select_option("clinical")
    with page.expect_file_chooser() as chooser:
        page.get_by_label("Images of this lesion").click()
    chooser.value.set_files(str(bad))
    page.get_by_role("button", name="Upload").click()
    expect(page.locator(".messages")).to_contain_text("“photo.jpg” was rejected")
    expect(page.get_by_label("Image type")).to_have_value("clinical")
    assert page.url.rstrip("/").endswith(f"/lesions/{lesion.pk}")
    assert not LesionImage.objects.exists()
