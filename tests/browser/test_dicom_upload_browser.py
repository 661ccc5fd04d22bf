"""In a real browser: a clinician picks a dermoscopic DICOM file (and a CT file by mistake) with the
lesion page's file picker, uploads them, and sees the DICOM accepted, the CT refused with its own
message, the lesion's unknown site filled in from the file, and the image page saying where the
image came from. Screenshots go to test-artifacts/."""
from __future__ import annotations

import re

import numpy as np
import pytest
from pydicom.uid import CTImageStorage
from tests.support.browser_helpers import log_in, make_user
from tests.support.dicomgen import PATIENT_ID, PATIENT_NAME, code, dicom_file, region, rgb_pixels

from cases.models import Case, Clinic, Lesion, LesionImage, Patient
from cases.roles import CLINICIAN
from classifier.models import ModelVersion

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_dicom_upload_through_the_lesion_page(live_server, browser_page, artifacts_dir, tmp_path):
    from playwright.sync_api import expect

    # an active version without an artifact: the upload creates a pending prediction; nothing scores it here
    ModelVersion.objects.create(version="browser-dicom-v1", status=ModelVersion.Status.ACTIVE,
                                artifact_path="/nonexistent/model", melanoma_threshold=0.5, malignancy_threshold=0.6)
    clinic = Clinic.objects.create(name="Lakeside Dermatology")
    clara = make_user("clara", "Clara Clinician", CLINICIAN, clinic)
    patient = Patient.objects.create(clinic=clinic, identifier="LAK-3", birth_year=1962, sex="female", created_by=clara)
    case = Case.objects.create(patient=patient, referring_clinician=clara, clinical_question="Changing naevus?")
    lesion = Lesion.objects.create(case=case, anatomic_site="unknown")
    dermoscopy = tmp_path / "forearm.dcm"
    dermoscopy.write_bytes(dicom_file(rgb_pixels((256, 192)), AcquisitionDate="20240305",
                                      AnatomicRegionSequence=region("14975008", "Forearm", code("7771000", "Left"))))
    ct = tmp_path / "scan.dcm"
    ct.write_bytes(dicom_file(np.zeros((64, 64), dtype=np.uint16), sop_class=CTImageStorage))
    page, base = browser_page, live_server.url

    log_in(page, base, "clara")
    page.goto(f"{base}/lesions/{lesion.pk}/")
    expect(page.get_by_text("JPEG, PNG, TIFF or DICOM (.dcm)")).to_be_visible()
    with page.expect_file_chooser() as chooser:
        page.get_by_label("Images of this lesion").click()
    chooser.value.set_files([str(dermoscopy), str(ct)])
    expect(page.locator("[data-chosen] li")).to_have_count(2)
    expect(page.locator("[data-chosen]")).to_contain_text("forearm.dcm")
    page.get_by_role("button", name="Upload").click()

    messages = page.locator(".messages")
    expect(messages).to_contain_text("1 image(s) uploaded")
    expect(messages).to_contain_text("“scan.dcm” was rejected: This DICOM file is a CT Image Storage object")
    expect(page.get_by_role("heading", name=re.compile(r"Lesion L1 · Upper extremity"))).to_be_visible()
    page.screenshot(path=str(artifacts_dir / "30-dicom-uploaded.png"), full_page=True)

    page.get_by_role("img", name=re.compile("image 1 of lesion at upper extremity")).click()
    caption = page.locator("figcaption")
    expect(caption).to_contain_text("taken 2024-03-05")
    expect(caption).to_contain_text("Imported from a DICOM file that gave the body site as upper extremity")
    expect(page.locator("body")).not_to_contain_text(PATIENT_ID)
    page.screenshot(path=str(artifacts_dir / "31-dicom-image-page.png"), full_page=True)

    image = LesionImage.objects.get()
    assert (image.original_name, image.original_format, image.source_body_site) == ("forearm.dcm", "DICOM",
                                                                                   "upper extremity")
    with image.file.open("rb") as handle:
        assert PATIENT_NAME.encode() not in handle.read()
