"""In a real browser, with a real worker: an image the model cannot judge (a document photo) is not
shown as a score. The case page and the result page say so and why, and the dermatologist's queue
lists the case as "Model could not assess"."""
from __future__ import annotations

import re

import pytest
from tests.support.browser_helpers import log_in, make_user
from PIL import Image, ImageDraw

from cases.models import Case, Clinic, Lesion, Patient, Prediction
from cases.roles import CLINICIAN, DERMATOLOGIST
from classifier.registry import activate, register_artifact

pytestmark = [pytest.mark.browser, pytest.mark.integration, pytest.mark.django_db(transaction=True)]


def document_photo(path):
    im = Image.new("RGB", (320, 240), (250, 250, 250))
    draw = ImageDraw.Draw(im)
    for line in range(10):
        draw.text((10, 10 + line * 22), "Referral letter: please see this patient soon", fill=(10, 10, 10))
    im.save(path, "JPEG", quality=92)
    return path


def test_unassessable_upload_shows_the_warning_and_reaches_the_queue(
        live_server, settings, tiny_assessed_model_dir, celery_worker_process, browser_page, artifacts_dir, tmp_path):
    from playwright.sync_api import expect

    settings.SECONDLOOK_MODEL_DIR = tiny_assessed_model_dir
    activate(register_artifact(tiny_assessed_model_dir))
    clinic = Clinic.objects.create(name="Harbour Skin Clinic")
    clara = make_user("clara", "Clara Clinician", CLINICIAN, clinic)
    make_user("derek", "Derek Dermatologist", DERMATOLOGIST)
    patient = Patient.objects.create(clinic=clinic, identifier="HSC-7", birth_year=1975, sex="male", created_by=clara)
    case = Case.objects.create(patient=patient, referring_clinician=clara, clinical_question="New lesion on the arm?")
    Lesion.objects.create(case=case, anatomic_site="upper extremity")
    page, base = browser_page, live_server.url

    log_in(page, base, "clara")
    page.goto(f"{base}/cases/{case.pk}/")
    page.get_by_label("Images of this lesion").set_input_files(str(document_photo(tmp_path / "letter.jpg")))
    page.get_by_role("button", name="Upload").click()
    expect(page.locator(".messages")).to_contain_text("1 image(s) uploaded")
    expect(page.locator(".prediction").first).to_contain_text("Model could not assess", timeout=90_000)
    expect(page.locator(".prediction").first).not_to_contain_text("Melanoma probability")
    page.screenshot(path=str(artifacts_dir / "20-case-cannot-assess.png"), full_page=True)
    page.get_by_role("link", name="View details").click()
    expect(page.locator(".cannot-assess-box")).to_contain_text("scores are not reliable")
    expect(page.locator(".assessment-notes li").first).to_be_visible()
    expect(page.locator("table.bars")).to_have_count(0)
    page.screenshot(path=str(artifacts_dir / "21-result-cannot-assess.png"), full_page=True)
    page.get_by_role("button", name="Log out").click()

    log_in(page, base, "derek")
    page.get_by_role("link", name=re.compile("Review queue")).first.click()
    row = page.get_by_role("row", name=re.compile("HSC-7"))
    expect(row).to_contain_text("Model could not assess")
    page.screenshot(path=str(artifacts_dir / "22-queue-cannot-assess.png"), full_page=True)
    prediction = Prediction.objects.get()
    assert not prediction.assessable and prediction.model_version.version.endswith("-assessed")
