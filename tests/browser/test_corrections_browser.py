"""Corrections clicked in a real browser: the clinician corrects a lesion's site (re-scored, the old
score kept) and closes the case; a dermatologist amends a signed review."""
from __future__ import annotations

import pytest
from django.utils import timezone

from cases.models import Case, Clinic, Lesion, LesionImage, Patient, Prediction, Review
from cases.roles import CLINICIAN, DERMATOLOGIST
from classifier.models import ModelVersion
from tests.support.browser_helpers import log_in, make_user
from tests.support.imagegen import png

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_correct_close_and_amend(live_server, browser_page, artifacts_dir, monkeypatch):
    from django.core.files.base import ContentFile
    from django.core.files.storage import default_storage
    from playwright.sync_api import expect

    monkeypatch.setattr("cases.scoring.dispatch_prediction", lambda pk, **kwargs: True)
    page, base = browser_page, live_server.url
    version = ModelVersion.objects.create(version="browser-v1", status=ModelVersion.Status.ACTIVE,
                                          artifact_path="/nonexistent", melanoma_threshold=0.3, malignancy_threshold=0.5)
    clinic = Clinic.objects.create(name="Correction clinic")
    clinician = make_user("cora", "Cora Correct", CLINICIAN, clinic)
    dermatologist = make_user("dana", "Dana Derm", DERMATOLOGIST)
    patient = Patient.objects.create(clinic=clinic, identifier="CO-1", birth_year=1960, created_by=clinician)
    case = Case.objects.create(patient=patient, referring_clinician=clinician, clinical_question="Check this one")
    lesion = Lesion.objects.create(case=case, anatomic_site="lower extremity")
    name = default_storage.save("lesion-images/c.png", ContentFile(png(size=(120, 90))))
    image = LesionImage.objects.create(lesion=lesion, file=name, sha256="c" * 64, size_bytes=10, width=120, height=90,
                                       uploaded_by=clinician)
    Prediction.objects.create(image=image, model_version=version, status="done", melanoma_probability=0.1,
                              malignancy_score=0.1, finished_at=timezone.now())
    signed = Review.objects.create(lesion=lesion, reviewer=dermatologist, agreement="agree", final_diagnosis="nevus",
                                   management="reassure")

    log_in(page, base, "cora")
    page.goto(f"{base}/cases/{case.pk}/")
    page.get_by_role("link", name="Correct the site").click()
    page.get_by_label("Anatomic site").select_option("upper extremity")
    page.get_by_label("Reason for the correction").fill("arm, not leg: dictation error")
    page.get_by_role("button", name="Save correction").click()
    expect(page.locator(".messagelist, .messages").first).to_contain_text("Lesion site corrected")
    expect(page.locator(".rescore-reason").first).to_contain_text(
        "site corrected from lower extremity to upper extremity by Cora Correct")  # who, next to the reason
    assert Prediction.objects.filter(image=image).count() == 2
    page.screenshot(path=str(artifacts_dir / "70-site-corrected.png"), full_page=True)

    # closing waits for the re-score (here finished by hand: no worker runs in this test)
    page.once("dialog", lambda dialog: dialog.accept())
    page.get_by_role("button", name="Close case").click()
    expect(page.locator(".messages")).to_contain_text("still being scored")
    Prediction.objects.filter(image=image, context_revision=1).update(
        status="done", melanoma_probability=0.12, malignancy_score=0.1, finished_at=timezone.now())
    page.once("dialog", lambda dialog: dialog.accept())
    page.get_by_role("button", name="Close case").click()
    expect(page.locator("p.notice[role=status]")).to_contain_text("This case was closed")
    assert Case.objects.get(pk=case.pk).status == "closed"
    expect(page.get_by_role("button", name="Upload")).to_have_count(0)

    page.get_by_role("button", name="Log out").click()
    log_in(page, base, "dana")
    page.goto(f"{base}/cases/{case.pk}/")
    page.get_by_role("link", name="Amend this review").click()
    page.get_by_label("Final diagnosis").select_option("melanoma")
    page.get_by_label("Excision").check()
    page.get_by_label("Reason for the amendment").fill("histopathology: melanoma in situ")
    page.get_by_role("button", name="Save correction").click()
    expect(page.get_by_role("heading", name="Amended dermatologist review")).to_be_visible()
    expect(page.locator(f"#review-{signed.pk}")).to_contain_text("amended on")
    page.screenshot(path=str(artifacts_dir / "71-review-amended.png"), full_page=True)
    amendment = Review.objects.get(amends=signed)
    assert amendment.final_diagnosis == "melanoma" and Review.objects.get(pk=signed.pk).final_diagnosis == "nevus"
