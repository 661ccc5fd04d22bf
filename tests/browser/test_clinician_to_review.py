"""The whole journey in a real browser: a clinician uploads, the score appears live, a
dermatologist claims and reviews the flagged case. Screenshots go to test-artifacts/."""
from __future__ import annotations

import io
import re

import numpy as np
import pytest
from tests.support.browser_helpers import log_in, make_user
from PIL import Image

from cases.models import Case, Clinic, Review
from cases.roles import CLINICIAN, DERMATOLOGIST
from classifier.registry import activate, register_artifact

pytestmark = [pytest.mark.browser, pytest.mark.integration, pytest.mark.django_db(transaction=True)]


def lesion_jpeg(path):
    """A brownish blob on skin tone: looks like a lesion in screenshots."""
    yy, xx = np.mgrid[0:256, 0:256]
    blob = ((xx - 128) ** 2 + (yy - 120) ** 2) < 70 ** 2
    pixels = np.zeros((256, 256, 3), dtype=np.uint8)
    pixels[:] = (224, 180, 160)
    pixels[blob] = (110, 70, 50)
    noise = np.random.default_rng(0).integers(-12, 12, size=pixels.shape)
    pixels = np.clip(pixels.astype(int) + noise, 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", quality=92)
    path.write_bytes(buffer.getvalue())
    return path


def test_clinician_upload_to_dermatologist_review(live_server, use_tiny_model, celery_worker_process, browser_page,
                                                  artifacts_dir, tmp_path):
    from playwright.sync_api import expect

    version = activate(register_artifact(use_tiny_model))
    version.melanoma_threshold = version.malignancy_threshold = 0.0  # the tiny model flags everything
    version.save()
    clinic = Clinic.objects.create(name="Riverside Dermatology")
    make_user("clara", "Clara Clinician", CLINICIAN, clinic)
    make_user("derek", "Derek Dermatologist", DERMATOLOGIST)
    page, base = browser_page, live_server.url

    # Clinician: patient → case → lesion → upload.
    log_in(page, base, "clara")
    page.screenshot(path=str(artifacts_dir / "01-home-clinician.png"), full_page=True)
    page.get_by_role("link", name="Add a patient").first.click()
    page.get_by_label("Pseudonymous identifier").fill("RIV-0042")
    page.get_by_label("Birth year").fill("1968")
    page.get_by_label("Sex").select_option("female")
    page.get_by_label("Fitzpatrick skin type").select_option("2")
    page.screenshot(path=str(artifacts_dir / "02-patient-form.png"), full_page=True)
    page.get_by_role("button", name="Add patient").click()
    expect(page.get_by_role("heading", name="Patient RIV-0042")).to_be_visible()
    page.get_by_role("link", name="Open a case").click()
    page.get_by_label("Clinical question").fill("Changing pigmented lesion on the back; melanoma?")
    page.get_by_role("button", name="Open case").click()
    expect(page.get_by_role("heading", name=re.compile(r"^Case \d+"))).to_be_visible()
    page.get_by_label("Anatomic site").select_option("posterior torso")
    page.get_by_label("Description").fill("6 mm, irregular border, grew over 3 months")
    page.get_by_role("button", name="Add lesion").click()
    page.get_by_label("Images of this lesion").set_input_files(str(lesion_jpeg(tmp_path / "back-lesion.jpg")))
    expect(page.locator("[data-chosen] li")).to_contain_text("back-lesion.jpg")
    page.get_by_role("button", name="Upload").click()
    expect(page.locator(".messages")).to_contain_text("1 image(s) uploaded")
    # The score appears without a reload (the page polls the status endpoint).
    url_before = page.url
    expect(page.locator(".prediction").first).to_contain_text("Melanoma", timeout=90_000)
    expect(page.locator(".prediction").first).to_contain_text("Flagged")
    assert page.url == url_before
    expect(page.locator("[data-lesion-flag]").first).to_be_visible()
    page.screenshot(path=str(artifacts_dir / "03-case-scored.png"), full_page=True)
    page.get_by_role("link", name="View result").click()
    expect(page.get_by_text("Intended use:")).to_be_visible()
    expect(page.get_by_text(version.version).first).to_be_visible()
    expect(page.locator("table.bars tbody tr")).to_have_count(9)
    page.screenshot(path=str(artifacts_dir / "04-result.png"), full_page=True)
    toggle = page.get_by_role("button", name="Show heatmap")
    toggle.click()
    expect(toggle).to_have_attribute("aria-pressed", "true")  # one label; the pressed state tells
    expect(page.locator("#result-img")).to_have_attribute("src", re.compile(r"/predictions/\d+/heatmap/"))
    page.wait_for_function("document.getElementById('result-img').complete")
    page.screenshot(path=str(artifacts_dir / "05-result-heatmap.png"), full_page=True)
    page.get_by_role("button", name="Log out").click()

    # Dermatologist: the flagged case is in the queue; claim and review it.
    log_in(page, base, "derek")
    expect(page.locator("nav .badge")).to_have_text("1")
    page.get_by_role("link", name=re.compile("Review queue")).first.click()
    expect(page.get_by_role("cell", name="RIV-0042")).to_be_visible()
    page.screenshot(path=str(artifacts_dir / "06-queue.png"), full_page=True)
    page.get_by_role("button", name=re.compile(r"Claim case \d+")).click()
    expect(page.get_by_role("heading", name=re.compile("Review case"))).to_be_visible()
    # the reviewer sees who the patient is (age, sex), the question and the case notes
    expect(page.locator("#review-context")).to_contain_text("RIV-0042")
    expect(page.locator("#review-context")).to_contain_text("years")
    expect(page.locator("#review-context")).to_contain_text("Clinical question")
    page.get_by_label("Agree with the AI flag", exact=True).check()
    page.get_by_label("Final diagnosis").select_option("melanoma")
    page.get_by_label("Excision", exact=True).check()
    page.get_by_label("Notes").fill("Atypical pigment network; excise with 2 mm margins.")
    page.screenshot(path=str(artifacts_dir / "07-review-form.png"), full_page=True)
    page.get_by_role("button", name="Save review").click()
    expect(page.locator(".messages")).to_contain_text("Review saved")
    expect(page.get_by_text("The queue is empty.")).to_be_visible()
    expect(page.locator("nav .badge")).to_have_text("0")
    page.screenshot(path=str(artifacts_dir / "08-queue-empty.png"), full_page=True)

    review = Review.objects.get()
    assert (review.final_diagnosis, review.management, review.reviewer.username) == ("melanoma", "excision", "derek")
    assert Case.objects.get().status == "reviewed"


def test_the_patient_list_pages_through_many_patients(live_server, browser_page, settings):
    """Clicked: Next and Previous walk a clinic's patients page by page; nothing is cut off."""
    from playwright.sync_api import expect

    from cases.models import Patient

    settings.LIST_PAGE_SIZE = 10
    page, base = browser_page, live_server.url
    clinic = Clinic.objects.create(name="Busy clinic")
    user = make_user("busy", "Busy Clinician", CLINICIAN, clinic)
    Patient.objects.bulk_create([Patient(clinic=clinic, identifier=f"P-{i:03d}", birth_year=1970, created_by=user)
                                 for i in range(25)])
    log_in(page, base, "busy")
    page.goto(f"{base}/patients/")
    expect(page.locator(".pagination")).to_contain_text("Page 1 of 3 (25 in all)")
    expect(page.get_by_role("link", name="P-000")).to_be_visible()
    page.get_by_role("link", name="Next").click()
    page.get_by_role("link", name="Next").click()
    expect(page.locator(".pagination")).to_contain_text("Page 3 of 3")
    expect(page.get_by_role("link", name="P-024")).to_be_visible()
    expect(page.get_by_role("link", name="P-000")).to_have_count(0)
    page.get_by_role("link", name="Previous").click()
    expect(page.locator(".pagination")).to_contain_text("Page 2 of 3")


def _phone_record(clinic, clinician, dermatologist):
    """A patient with a lesion placed on the body map, a scored and flagged image, the case claimed
    by the dermatologist: every page of the app has something to show."""
    from django.core.files.base import ContentFile
    from django.core.files.storage import default_storage
    from django.utils import timezone

    from cases.models import Lesion, LesionImage, Patient, PatientLesion, Prediction
    from classifier.models import ModelVersion
    from tests.support.imagegen import png

    version = ModelVersion.objects.create(version="phone-v1", status=ModelVersion.Status.ACTIVE,
                                          artifact_path="/nonexistent", melanoma_threshold=0.3,
                                          malignancy_threshold=0.5)
    patient = Patient.objects.create(clinic=clinic, identifier="PHONE-1", birth_year=1980, sex="female",
                                     created_by=clinician)
    case = Case.objects.create(patient=patient, referring_clinician=clinician,
                               clinical_question="Itchy mole on the back?", notes="Grew over the summer.")
    lesion = Lesion.objects.create(case=case, anatomic_site="posterior torso", flagged=True, awaiting_review=True,
                                   flagged_at=timezone.now())
    PatientLesion.objects.filter(pk=lesion.tracked_id).update(map_view="back", map_x=0.5, map_y=0.35, side="midline")
    name = default_storage.save("lesion-images/phone.png", ContentFile(png(size=(640, 480))))
    image = LesionImage.objects.create(lesion=lesion, file=name, sha256="9" * 64, size_bytes=10, width=640, height=480,
                                       uploaded_by=clinician)
    Prediction.objects.create(image=image, model_version=version, status="done", melanoma_probability=0.62,
                              malignancy_score=0.7, flagged=True, flag_reasons=["Melanoma probability above 30%"],
                              class_probabilities={"melanoma": 0.62, "nevus": 0.38}, finished_at=timezone.now())
    Case.objects.filter(pk=case.pk).update(claimed_by=dermatologist, claimed_at=timezone.now(), status="in_review")
    return patient, case, image


def _fits_a_phone(page, url: str) -> None:
    """No sideways scroll, and Log out on screen."""
    page.goto(url)
    overflow = page.evaluate("document.documentElement.scrollWidth - document.documentElement.clientWidth")
    assert overflow <= 0, (url, overflow, page.evaluate(WIDER_THAN_THE_SCREEN))
    box = page.get_by_role("button", name="Log out").bounding_box()
    assert box and box["x"] >= 0 and box["x"] + box["width"] <= 390, (url, box)


# the elements that reach past the right edge, to say what widened the page
WIDER_THAN_THE_SCREEN = """[...document.querySelectorAll('body *')]
  .filter((el) => el.getBoundingClientRect().right > document.documentElement.clientWidth + 1)
  .slice(0, 8).map((el) => `${el.tagName.toLowerCase()}.${el.className}`)"""


def test_every_page_fits_a_phone_screen_and_log_out_stays_reachable(live_server, browser_page, artifacts_dir):
    """At 390 px wide the header wraps, no page scrolls sideways, and Log out is on screen and works:
    the clinician's pages (lists, forms, the patient's body map, the timeline, the result) and the
    dermatologist's (queue, review)."""
    from playwright.sync_api import expect

    page, base = browser_page, live_server.url
    clinic = Clinic.objects.create(name="Phone clinic")
    clinician = make_user("phone", "Phone Clinician", CLINICIAN, clinic)
    derm = make_user("phoned", "Phone Dermatologist", DERMATOLOGIST)
    patient, case, image = _phone_record(clinic, clinician, derm)
    page.set_viewport_size({"width": 390, "height": 844})
    log_in(page, base, "phone")
    for path in ("/", "/patients/", "/patients/new/", f"/patients/{patient.pk}/", f"/patients/{patient.pk}/cases/new/",
                 "/cases/", f"/cases/{case.pk}/", f"/images/{image.pk}/", f"/patients/{patient.pk}/lesions/1/",
                 "/no-such-page/"):
        _fits_a_phone(page, f"{base}{path}")
    page.goto(f"{base}/patients/{patient.pk}/")
    expect(page.locator(".body-map .marker")).to_have_count(1)
    page.screenshot(path=str(artifacts_dir / "21-patient-map-phone.png"), full_page=True)
    page.goto(f"{base}/patients/{patient.pk}/lesions/1/")
    expect(page.locator(".score-plot circle")).to_have_count(1)
    page.screenshot(path=str(artifacts_dir / "22-lesion-timeline-phone.png"), full_page=True)
    page.goto(f"{base}/cases/{case.pk}/")
    page.screenshot(path=str(artifacts_dir / "20-case-phone.png"), full_page=True)
    page.emulate_media(media="print")  # printed, the page keeps the record and drops the controls
    expect(page.get_by_role("button", name="Log out")).to_be_hidden()
    expect(page.get_by_text("Itchy mole on the back?")).to_be_visible()
    page.emulate_media(media="screen")
    page.get_by_role("button", name="Log out").click()
    expect(page.get_by_role("button", name="Log in")).to_be_visible()

    log_in(page, base, "phoned")
    for path in ("/queue/", f"/cases/{case.pk}/review/", f"/images/{image.pk}/"):
        _fits_a_phone(page, f"{base}{path}")
    expect(page.get_by_text("Melanoma probability").first).to_be_visible()
    page.goto(f"{base}/cases/{case.pk}/review/")
    expect(page.locator("#review-context")).to_contain_text("Grew over the summer.")
    page.screenshot(path=str(artifacts_dir / "23-review-phone.png"), full_page=True)
