"""In a real browser: a double click on "Open case" or "Add lesion" creates one record; the case
page's poll turns a reviewed lesion's badge into "awaiting review" when a new image flags it
again, in a live region; the heatmap toggle keeps its one label and says its state by
aria-pressed."""
from __future__ import annotations

import time

import pytest
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.utils import timezone

from cases.models import Case, Clinic, Lesion, LesionImage, Patient, Prediction
from cases.roles import CLINICIAN
from classifier.models import ModelVersion
from tests.support.browser_helpers import log_in, make_user
from tests.support.imagegen import png

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def _clinic_patient():
    clinic = Clinic.objects.create(name="Flag clinic")
    user = make_user("fred", "Fred Flag", CLINICIAN, clinic)
    patient = Patient.objects.create(clinic=clinic, identifier="FS-1", birth_year=1970, created_by=user)
    return user, patient


def _image(lesion: Lesion, seed: int = 1) -> LesionImage:
    name = default_storage.save("lesion-images/flag.png", ContentFile(png(size=(160, 120), seed=seed)))
    return LesionImage.objects.create(lesion=lesion, file=name, sha256=f"{seed:064d}", size_bytes=10, width=160,
                                      height=120, uploaded_by=lesion.case.referring_clinician)


def _version() -> ModelVersion:
    return ModelVersion.objects.create(version="browser-flag-v1", status=ModelVersion.Status.ACTIVE,
                                       artifact_path="/nonexistent", melanoma_threshold=0.3, malignancy_threshold=0.5)


def _slow(monkeypatch, name: str) -> None:
    """The live server (a thread of this process) takes a moment to save: the second click of a
    double click lands while the first submit is still on its way, as on a busy server."""
    from cases import services

    real = getattr(services, name)

    def slow(*args, **kwargs):
        time.sleep(0.4)
        return real(*args, **kwargs)

    monkeypatch.setattr(services, name, slow)


def _double_click(page, name: str) -> None:
    """Two clicks 100 ms apart, as a hand double-clicks (Playwright's dblclick is quicker than any
    request: the browser merges its two submits before one is sent)."""
    box = page.get_by_role("button", name=name).bounding_box()
    x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    page.mouse.click(x, y)
    page.wait_for_timeout(100)
    page.mouse.click(x, y)


def test_a_double_click_opens_one_case_and_adds_one_lesion(live_server, browser_page, artifacts_dir, monkeypatch):
    from playwright.sync_api import expect

    page, base = browser_page, live_server.url
    user, patient = _clinic_patient()
    _slow(monkeypatch, "create_case")
    _slow(monkeypatch, "add_lesion")
    log_in(page, base, "fred")
    page.goto(f"{base}/patients/{patient.pk}/cases/new/")
    page.get_by_label("Clinical question").fill("New mole on the back")
    _double_click(page, "Open case")
    expect(page.get_by_role("heading", name="Add a lesion")).to_be_visible()
    page.wait_for_timeout(1000)  # a second request, had one gone out, would be saved by now
    assert Case.objects.filter(patient=patient).count() == 1
    case = Case.objects.get(patient=patient)

    page.get_by_label("Anatomic site").select_option("posterior torso")
    _double_click(page, "Add lesion")
    expect(page.get_by_role("heading", name="Lesion L1 · Posterior torso")).to_be_visible()
    page.wait_for_timeout(1000)
    assert Lesion.objects.filter(case=case).count() == 1
    expect(page.locator("section.lesion")).to_have_count(1)
    page.screenshot(path=str(artifacts_dir / "95-double-click-one-lesion.png"), full_page=True)

    # the form works again for the next lesion (nothing stays blocked after the page that answered)
    page.get_by_label("Anatomic site").select_option("head/neck")
    page.get_by_role("button", name="Add lesion").click()
    expect(page.locator("section.lesion")).to_have_count(2)
    assert Lesion.objects.filter(case=case).count() == 2


def test_the_poll_turns_a_reviewed_badge_into_awaiting_review(live_server, browser_page, artifacts_dir):
    from playwright.sync_api import expect

    page, base = browser_page, live_server.url
    user, patient = _clinic_patient()
    version = _version()
    case = Case.objects.create(patient=patient, referring_clinician=user, clinical_question="Reviewed mole")
    lesion = Lesion.objects.create(case=case, anatomic_site="posterior torso", flagged=True, awaiting_review=False,
                                   flagged_at=timezone.now())
    _image(lesion, seed=1)
    waiting = Prediction.objects.create(image=_image(lesion, seed=2), model_version=version, status="pending")
    log_in(page, base, "fred")
    page.goto(f"{base}/cases/{case.pk}/")
    flag = page.locator(f'[data-lesion-flag="{lesion.pk}"]')
    expect(flag).to_have_attribute("aria-live", "polite")
    expect(flag.locator(".flag-badge")).to_have_text("Flagged — reviewed")

    # the new image is scored and flags the lesion again, while the page is open
    Prediction.objects.filter(pk=waiting.pk).update(status="done", melanoma_probability=0.7, malignancy_score=0.7,
                                                    flagged=True, finished_at=timezone.now())
    Lesion.objects.filter(pk=lesion.pk).update(awaiting_review=True)
    expect(flag.locator(".flag-badge")).to_have_text("Flagged — awaiting dermatologist review", timeout=15_000)
    expect(page.locator(f"#lesion-{lesion.pk}")).to_have_class("card lesion is-flagged")
    page.screenshot(path=str(artifacts_dir / "96-poll-flag-awaiting.png"), full_page=True)


def test_the_heatmap_toggle_keeps_its_label_and_says_its_state(live_server, browser_page):
    from playwright.sync_api import expect

    page, base = browser_page, live_server.url
    user, patient = _clinic_patient()
    case = Case.objects.create(patient=patient, referring_clinician=user, clinical_question="Heatmap")
    lesion = Lesion.objects.create(case=case, anatomic_site="posterior torso")
    image = _image(lesion)
    heatmap = default_storage.save("heatmaps/flag.png", ContentFile(png(size=(160, 120), seed=9)))
    Prediction.objects.create(image=image, model_version=_version(), status="done", melanoma_probability=0.1,
                              malignancy_score=0.1, finished_at=timezone.now(), heatmap=heatmap,
                              class_probabilities={"melanoma": 0.1, "nevus": 0.9})
    log_in(page, base, "fred")
    page.goto(f"{base}/images/{image.pk}/")
    toggle = page.get_by_role("button", name="Show heatmap")
    expect(toggle).to_have_attribute("aria-pressed", "false")
    toggle.click()
    expect(toggle).to_have_attribute("aria-pressed", "true")
    expect(toggle).to_have_text("Show heatmap")
    expect(page.locator("#result-img")).to_have_attribute("src", f"/predictions/{image.predictions.get().pk}/heatmap/")
    toggle.click()
    expect(toggle).to_have_attribute("aria-pressed", "false")
    expect(page.locator("#result-img")).to_have_attribute("src", f"/images/{image.pk}/file/")


def test_a_failed_visit_on_the_timeline_links_to_its_case_page(live_server, browser_page, artifacts_dir):
    from playwright.sync_api import expect

    page, base = browser_page, live_server.url
    user, patient = _clinic_patient()
    version = _version()
    case = Case.objects.create(patient=patient, referring_clinician=user, clinical_question="Failed scoring")
    lesion = Lesion.objects.create(case=case, anatomic_site="posterior torso")
    Prediction.objects.create(image=_image(lesion, seed=3), model_version=version, status="failed",
                              error="worker lost", finished_at=timezone.now())
    lesion.refresh_from_db()
    log_in(page, base, "fred")
    page.goto(f"{base}/patients/{patient.pk}/lesions/{lesion.tracked.number}/")
    failed = page.locator(f"#visit-{lesion.pk}-failed")
    expect(failed).to_contain_text("Scoring failed")
    failed.get_by_role("link", name="retry from the case page").click()
    expect(page).to_have_url(f"{base}/cases/{case.pk}/#lesion-{lesion.pk}")
    expect(page.locator(f"#lesion-{lesion.pk}")).to_be_visible()
    page.screenshot(path=str(artifacts_dir / "97-timeline-failed-link.png"), full_page=True)


def test_a_dermatologist_claims_a_closed_case_flagged_again_and_it_stays_closed(live_server, browser_page):
    from playwright.sync_api import expect

    from cases.roles import DERMATOLOGIST

    page, base = browser_page, live_server.url
    user, patient = _clinic_patient()
    derm = make_user("dora", "Dora Derm", DERMATOLOGIST, patient.clinic)
    case = Case.objects.create(patient=patient, referring_clinician=user, clinical_question="Closed, then flagged",
                               status=Case.Status.CLOSED, closed_at=timezone.now(), closed_by=user)
    lesion = Lesion.objects.create(case=case, anatomic_site="posterior torso", flagged=True, awaiting_review=True,
                                   flagged_at=timezone.now())
    Prediction.objects.create(image=_image(lesion, seed=4), model_version=_version(), status="done",
                              melanoma_probability=0.7, malignancy_score=0.7, flagged=True, finished_at=timezone.now())
    log_in(page, base, "dora")
    page.goto(f"{base}/cases/{case.pk}/")
    expect(page.locator("main")).to_contain_text("A lesion was flagged after it was closed")
    page.get_by_role("button", name="Claim for review").click()
    expect(page.locator(".messages")).to_contain_text("claimed")
    case.refresh_from_db()
    assert case.claimed_by == derm and case.status == Case.Status.CLOSED
