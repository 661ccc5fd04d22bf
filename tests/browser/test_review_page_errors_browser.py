"""The review page in the browser: a save with nothing filled in comes back with an error summary
that takes the focus and links to each field; a case released while the review was typed is
claimed and saved in one click ("Claim and save"), with what was typed."""
from __future__ import annotations

import pytest
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.utils import timezone

from cases import queue
from cases.models import Case, Clinic, Lesion, LesionImage, Patient, Prediction, Review
from cases.roles import CLINICIAN, DERMATOLOGIST
from classifier.models import ModelVersion
from tests.support.browser_helpers import log_in, make_user
from tests.support.imagegen import png

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

NOTES = "Regression structures centrally; excise to be sure."


def _claimed_case():
    """A case with one flagged lesion (one scored image), claimed by Dina Derm."""
    clinic = Clinic.objects.create(name="Error summary clinic")
    clinician = make_user("cleo", "Cleo Clinician", CLINICIAN, clinic)
    dina = make_user("dina", "Dina Derm", DERMATOLOGIST)
    patient = Patient.objects.create(clinic=clinic, identifier="ES-3", birth_year=1958, created_by=clinician)
    case = Case.objects.create(patient=patient, referring_clinician=clinician, clinical_question="Melanoma?")
    lesion = Lesion.objects.create(case=case, anatomic_site="posterior torso")
    version = ModelVersion.objects.create(version="browser-v1", status=ModelVersion.Status.ACTIVE,
                                          artifact_path="/nonexistent", melanoma_threshold=0.5,
                                          malignancy_threshold=0.6)
    name = default_storage.save("lesion-images/review.png", ContentFile(png()))
    image = LesionImage.objects.create(lesion=lesion, file=name, sha256="a" * 64, size_bytes=10, width=96, height=64,
                                       uploaded_by=clinician)
    Prediction.objects.create(image=image, model_version=version, status="done", melanoma_probability=0.8,
                              malignancy_score=0.8, flagged=True, finished_at=timezone.now(),
                              prediction_set=["melanoma", "nevus"])
    Lesion.objects.filter(pk=lesion.pk).update(flagged=True, awaiting_review=True, flagged_at=timezone.now())
    Case.objects.filter(pk=case.pk).update(claimed_by=dina, claimed_at=timezone.now(), status=Case.Status.IN_REVIEW)
    return case, lesion, dina


def test_an_empty_save_focuses_the_error_summary_whose_links_move_to_the_fields(live_server, browser_page,
                                                                                artifacts_dir):
    from playwright.sync_api import expect

    page, base = browser_page, live_server.url
    case, lesion, _ = _claimed_case()
    log_in(page, base, "dina")
    page.goto(f"{base}/cases/{case.pk}/review/")
    expect(page.locator("#review-errors")).to_have_count(0)
    page.get_by_role("button", name="Save review").click()

    summary = page.locator("#review-errors")
    expect(summary).to_be_visible()
    expect(summary).to_have_attribute("role", "alert")
    expect(summary).to_be_focused()
    expect(summary).to_contain_text("The review was not saved: 3 answers need correcting")
    assert not Review.objects.exists()
    page.screenshot(path=str(artifacts_dir / "92-review-error-summary.png"), full_page=True)

    summary.get_by_role("link").first.click()
    first = page.locator(f"#id_lesion-{lesion.pk}-agreement_0")
    expect(first).to_be_focused()
    summary.get_by_role("link").nth(1).click()
    expect(page.get_by_label("Final diagnosis")).to_be_focused()


def test_a_released_case_is_claimed_and_saved_with_what_was_typed(live_server, browser_page, artifacts_dir):
    from playwright.sync_api import expect

    page, base = browser_page, live_server.url
    case, lesion, dina = _claimed_case()
    log_in(page, base, "dina")
    page.goto(f"{base}/cases/{case.pk}/review/")
    page.get_by_role("radio", name="Agree with the AI flag", exact=True).check()
    page.get_by_label("Final diagnosis").select_option("melanoma")
    page.get_by_role("radio", name="Excision", exact=True).check()
    page.get_by_label("Notes").fill(NOTES)

    queue.release_case(case=case, reviewer=dina)  # released while the review was typed (another tab, an admin)
    page.get_by_role("button", name="Save review").click()
    expect(page.locator("#review-refused")).to_contain_text("Claim the case before reviewing it")
    expect(page.locator("#claim-expiry")).to_contain_text("Nobody holds the claim on this case now")
    expect(page.get_by_label("Notes")).to_have_value(NOTES)
    assert not Review.objects.exists()
    page.screenshot(path=str(artifacts_dir / "93-review-claim-and-save.png"), full_page=True)

    page.get_by_role("button", name="Claim and save").click()
    expect(page.locator(".messages")).to_contain_text("Review saved. The case has left the queue.")
    review = Review.objects.get()
    assert (review.lesion_id, review.reviewer, review.agreement, review.final_diagnosis, review.management,
            review.notes) == (lesion.pk, dina, "agree", "melanoma", "excision", NOTES)
    assert Case.objects.get(pk=case.pk).status == Case.Status.REVIEWED


def test_the_review_pages_links_open_in_a_new_tab_and_the_typed_review_stays(live_server, browser_page):
    from playwright.sync_api import expect

    page, base = browser_page, live_server.url
    case, lesion, _dina = _claimed_case()
    log_in(page, base, "dina")
    page.goto(f"{base}/cases/{case.pk}/review/")
    page.get_by_label("Notes").first.fill(NOTES)
    for link in (page.get_by_role("link", name="View result"),
                 page.get_by_role("link", name="image 1 of this lesion")):
        with page.context.expect_page() as opened:
            link.first.click()
        result = opened.value
        result.wait_for_load_state()
        expect(result.get_by_role("heading").first).to_be_visible()
        assert f"/images/{lesion.images.get().pk}/" in result.url
        result.close()
    expect(page.get_by_label("Notes").first).to_have_value(NOTES)  # the form was never left
    assert page.url.endswith(f"/cases/{case.pk}/review/")
