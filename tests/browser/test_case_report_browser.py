"""In a real browser: a clinician opens a scored case and clicks "Download report (PDF)"; the file
that arrives is the case's PDF report. Screenshots and the downloaded PDF's first page go to
test-artifacts/."""
from __future__ import annotations

import pypdfium2 as pdfium
import pytest
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.utils import timezone
from tests.support.browser_helpers import log_in, make_user
from tests.support.imagegen import png

from audit.models import AuditEvent
from cases.models import Case, Clinic, Lesion, LesionImage, Patient, Prediction
from cases.roles import CLINICIAN
from classifier.models import ModelVersion

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def scored_case(clinician) -> Case:
    """A case with one lesion and one scored, flagged image (no worker needed)."""
    version = ModelVersion.objects.create(version="browser-report-v1", status=ModelVersion.Status.ACTIVE,
                                          melanoma_threshold=0.3, malignancy_threshold=0.4, target_sensitivity=0.9)
    patient = Patient.objects.create(clinic=clinician.clinic_membership.clinic, identifier="RPT-0107",
                                     birth_year=1961, sex="male", created_by=clinician)
    case = Case.objects.create(patient=patient, referring_clinician=clinician,
                               clinical_question="New dark lesion on the shin; melanoma?")
    lesion = Lesion.objects.create(case=case, anatomic_site="lower extremity", flagged=True, awaiting_review=True)
    name = default_storage.save("lesion-images/browser-report.png", ContentFile(png(size=(160, 120), seed=7)))
    image = LesionImage.objects.create(lesion=lesion, file=name, sha256="7" * 64, size_bytes=1000, width=160,
                                       height=120, uploaded_by=clinician)
    heatmap = default_storage.save("heatmaps/browser-report.png", ContentFile(png(size=(160, 120), seed=8)))
    Prediction.objects.create(image=image, model_version=version, status="done", melanoma_probability=0.612,
                              malignancy_score=0.705, flagged=True, finished_at=timezone.now(), heatmap=heatmap,
                              flag_reasons=["melanoma probability 0.61 \u2265 threshold 0.30"])
    return case


def test_clinician_downloads_the_case_report(live_server, browser_page, artifacts_dir, tmp_path):
    from playwright.sync_api import expect

    clinic = Clinic.objects.create(name="Hillside Dermatology")
    clara = make_user("clara", "Clara Clinician", CLINICIAN, clinic)
    case = scored_case(clara)
    page, base = browser_page, live_server.url

    log_in(page, base, "clara")
    page.goto(f"{base}/cases/{case.pk}/")
    link = page.get_by_role("link", name="Download report (PDF)")
    expect(link).to_be_visible()
    page.screenshot(path=str(artifacts_dir / "50-case-report-link.png"), full_page=True)
    with page.expect_download() as info:
        link.click()
    download = info.value
    assert download.suggested_filename == f"secondlook-case-{case.pk}.pdf"
    path = tmp_path / download.suggested_filename
    download.save_as(str(path))

    data = path.read_bytes()
    assert data.startswith(b"%PDF")
    pdf = pdfium.PdfDocument(data)
    try:
        text = " ".join(" ".join(pdf[i].get_textpage().get_text_range().split()) for i in range(len(pdf)))
        assert "RPT-0107" in text and "New dark lesion on the shin; melanoma?" in text and "61.2%" in text
        pdf[0].render(scale=1.5).to_pil().save(artifacts_dir / "51-case-report-downloaded-page1.png")
    finally:
        pdf.close()
    assert AuditEvent.objects.filter(action="download", object_type="case", object_id=str(case.pk),
                                     actor_username="clara").count() == 1
