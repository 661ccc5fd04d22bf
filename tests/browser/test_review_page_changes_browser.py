"""A new image lands behind an open review page: Save is refused with the lesion named, what was
typed stays in the form, the new image is shown, and the next Save goes through."""
from __future__ import annotations

import pytest
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.utils import timezone

from audit.models import AuditEvent
from cases.models import Case, Clinic, Lesion, LesionImage, Patient, Prediction, Review
from cases.roles import CLINICIAN, DERMATOLOGIST
from classifier.models import ModelVersion
from tests.support.browser_helpers import log_in, make_user
from tests.support.imagegen import png

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

NOTES = "Asymmetric blue-white veil; excise."


def _image(lesion: Lesion, clinician, sha: str) -> LesionImage:
    name = default_storage.save("lesion-images/review.png", ContentFile(png()))
    return LesionImage.objects.create(lesion=lesion, file=name, sha256=sha, size_bytes=10, width=96, height=64,
                                      uploaded_by=clinician)


def test_a_save_after_a_new_image_is_refused_keeps_the_typed_review_and_then_goes_through(
        live_server, browser_page, artifacts_dir):
    from playwright.sync_api import expect

    page, base = browser_page, live_server.url
    clinic = Clinic.objects.create(name="Behind the page clinic")
    clinician = make_user("cleo", "Cleo Clinician", CLINICIAN, clinic)
    dina = make_user("dina", "Dina Derm", DERMATOLOGIST)
    patient = Patient.objects.create(clinic=clinic, identifier="BP-7", birth_year=1965, created_by=clinician)
    case = Case.objects.create(patient=patient, referring_clinician=clinician, clinical_question="Melanoma?")
    lesion = Lesion.objects.create(case=case, anatomic_site="posterior torso")
    version = ModelVersion.objects.create(version="browser-v1", status=ModelVersion.Status.ACTIVE,
                                          artifact_path="/nonexistent", melanoma_threshold=0.5,
                                          malignancy_threshold=0.6)
    first = _image(lesion, clinician, "a" * 64)
    Prediction.objects.create(image=first, model_version=version, status="done", melanoma_probability=0.8,
                              malignancy_score=0.8, flagged=True, finished_at=timezone.now())
    Lesion.objects.filter(pk=lesion.pk).update(flagged=True, awaiting_review=True, flagged_at=timezone.now())
    Case.objects.filter(pk=case.pk).update(claimed_by=dina, claimed_at=timezone.now(), status=Case.Status.IN_REVIEW)

    log_in(page, base, "dina")
    page.goto(f"{base}/cases/{case.pk}/review/")
    expect(page.locator("#claim-expiry")).to_contain_text("Your claim on this case expires at")
    expect(page.locator(".image-card")).to_have_count(1)
    page.get_by_role("radio", name="Agree with the AI flag", exact=True).check()
    page.get_by_label("Final diagnosis").select_option("melanoma")
    page.get_by_role("radio", name="Excision", exact=True).check()
    page.get_by_label("Notes").fill(NOTES)

    second = _image(lesion, clinician, "b" * 64)  # the clinician uploads image 2 while the page is open
    page.get_by_role("button", name="Save review").click()

    refusal = page.locator("#review-refused")
    expect(refusal).to_contain_text(f"Lesion L{lesion.tracked.number} (Posterior torso) has a new image since you "
                                    "opened this page: check it and save again.")
    assert not Review.objects.exists() and Lesion.objects.get(pk=lesion.pk).awaiting_review
    expect(page.locator(".image-card")).to_have_count(2)
    expect(page.locator(f'img[src="/images/{second.pk}/file/"]')).to_be_visible()
    expect(page.locator(".image-card").nth(1)).to_contain_text("Waiting for a model to score this image.")
    # what was typed is still there
    expect(page.get_by_label("Notes")).to_have_value(NOTES)
    expect(page.get_by_label("Final diagnosis")).to_have_value("melanoma")
    expect(page.get_by_role("radio", name="Agree with the AI flag", exact=True)).to_be_checked()
    expect(page.get_by_role("radio", name="Excision", exact=True)).to_be_checked()
    page.screenshot(path=str(artifacts_dir / "90-review-refused-new-image.png"), full_page=True)

    page.get_by_role("button", name="Save review").click()
    expect(page.locator(".messages")).to_contain_text("Review saved. The case has left the queue.")
    review = Review.objects.get()
    assert (review.final_diagnosis, review.management, review.notes) == ("melanoma", "excision", NOTES)
    event = AuditEvent.objects.get(action="review", object_id=str(review.pk))
    assert event.new_values["seen_images"] == [first.pk, second.pk]
