"""The actions no other browser test clicked, clicked in a real browser: "Claim for review" and
"Release" on the case page, "Retry" on a failed score, correcting a histopathology result, the
admin's "Re-score with the active model" action on chosen images, and the admin's links to a
stored image and its Grad-CAM heatmap (both audited downloads)."""
from __future__ import annotations

import pytest
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.utils import timezone

from audit.models import AuditEvent
from cases.models import Case, Clinic, Lesion, Outcome, Patient, Prediction
from cases.roles import CLINICIAN, DERMATOLOGIST
from classifier.models import ModelVersion, RescoreJob
from classifier.registry import activate
from tests.support.browser_helpers import admin_log_in, fill_histopathology, log_in, make_user
from tests.support.case_helpers import World, make_image
from tests.support.imagegen import png

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def _clinic_case(question: str = "Changing mole?"):
    clinic = Clinic.objects.create(name="Riverside Dermatology")
    clinician = make_user("cora", "Cora Clinician", CLINICIAN, clinic)
    patient = Patient.objects.create(clinic=clinic, identifier="RIV-0042", birth_year=1966, created_by=clinician)
    case = Case.objects.create(patient=patient, referring_clinician=clinician, clinical_question=question)
    lesion = Lesion.objects.create(case=case, anatomic_site="posterior torso")
    return clinician, case, lesion


def _stored_image(lesion, clinician, *, name: str, sha_char: str):
    """A stored PNG on ``lesion``."""
    stored = default_storage.save(f"lesion-images/{name}", ContentFile(png()))
    return lesion.images.create(file=stored, sha256=sha_char * 64, size_bytes=10, width=96, height=64,
                                uploaded_by=clinician)


def test_claim_and_release_from_the_case_page(live_server, browser_page):
    from playwright.sync_api import expect

    page, base = browser_page, live_server.url
    _, case, lesion = _clinic_case()
    Lesion.objects.filter(pk=lesion.pk).update(flagged=True, awaiting_review=True, flagged_at=timezone.now())
    make_user("dora", "Dora Derm", DERMATOLOGIST)
    log_in(page, base, "dora")
    page.goto(f"{base}/cases/{case.pk}/")
    page.get_by_role("button", name="Claim for review").click()
    expect(page.locator(".messages")).to_contain_text("Case claimed.")
    assert Case.objects.get(pk=case.pk).claimed_by.username == "dora"

    page.goto(f"{base}/cases/{case.pk}/")
    page.get_by_role("button", name="Release").click()
    expect(page.locator(".messages")).to_contain_text("Case released back to the queue.")
    case.refresh_from_db()
    assert case.claimed_by is None and Lesion.objects.get(pk=lesion.pk).awaiting_review


def test_retry_a_failed_score_by_clicking(live_server, browser_page, monkeypatch):
    from playwright.sync_api import expect

    sent = []
    monkeypatch.setattr("cases.scoring.dispatch_prediction", lambda pk, **kwargs: sent.append(pk) or True)
    page, base = browser_page, live_server.url
    clinician, case, lesion = _clinic_case()
    version = ModelVersion.objects.create(version="browser-retry-v1", status=ModelVersion.Status.ACTIVE)
    image = _stored_image(lesion, clinician, name="retry.png", sha_char="c")
    failed = Prediction.objects.create(image=image, model_version=version, status="failed",
                                       error="Model could not be loaded", finished_at=timezone.now())
    log_in(page, base, "cora")
    page.goto(f"{base}/cases/{case.pk}/")
    expect(page.locator("p.status-failed")).to_contain_text("Scoring failed.")
    page.get_by_role("button", name="Retry").click()
    expect(page.locator(".messages")).to_contain_text("Scoring was restarted for this image.")
    failed.refresh_from_db()
    assert failed.status == "pending" and failed.error == "" and sent == [failed.pk]


def test_retry_a_failed_re_score_by_clicking_beside_the_result_in_force(live_server, browser_page, monkeypatch):
    from playwright.sync_api import expect

    sent = []
    monkeypatch.setattr("cases.scoring.dispatch_prediction", lambda pk, **kwargs: sent.append(pk) or True)
    page, base = browser_page, live_server.url
    clinician, case, lesion = _clinic_case()
    old = ModelVersion.objects.create(version="browser-old-v1", status=ModelVersion.Status.RETIRED)
    new = ModelVersion.objects.create(version="browser-new-v2", status=ModelVersion.Status.ACTIVE)
    image = _stored_image(lesion, clinician, name="rescore.png", sha_char="e")
    Prediction.objects.create(image=image, model_version=old, status="done", melanoma_probability=0.42,
                              malignancy_score=0.5, finished_at=timezone.now())
    failed = Prediction.objects.create(image=image, model_version=new, status="failed", error="worker lost",
                                       finished_at=timezone.now())
    log_in(page, base, "cora")
    page.goto(f"{base}/cases/{case.pk}/")
    expect(page.locator(".prediction-summary").first).to_contain_text("42.0%")  # the result in force stays
    expect(page.locator(".rescore-note")).to_contain_text("Re-scoring with model browser-new-v2: failed")
    page.get_by_role("button", name="Retry the re-score").click()
    expect(page.locator(".messages")).to_contain_text("Scoring was restarted for this image.")
    failed.refresh_from_db()
    assert failed.status == "pending" and sent == [failed.pk]


def test_correct_a_histopathology_result_by_clicking(live_server, browser_page):
    from playwright.sync_api import expect

    page, base = browser_page, live_server.url
    clinician, case, lesion = _clinic_case("Excised: melanoma?")
    first = Outcome.objects.create(lesion=lesion, diagnosis="melanoma", diagnosis_date=timezone.localdate(),
                                   report_reference="PATH-2026-0001", entered_by=clinician)
    log_in(page, base, "cora")
    page.goto(f"{base}/cases/{case.pk}/")
    page.get_by_text("Correct the histopathology result").click()
    fill_histopathology(page, diagnosis="nevus", reference="PATH-2026-0001-A", reason="the lab issued an amended report")
    page.get_by_role("button", name="Save correction").click()
    expect(page.locator(f"#outcome-{lesion.pk}")).to_contain_text("PATH-2026-0001-A")
    current = Outcome.objects.exclude(pk=first.pk).get()
    assert (current.diagnosis, current.supersedes_id, current.reason) == (
        "nevus", first.pk, "the lab issued an amended report")


def test_admin_rescores_chosen_images_and_opens_their_files(live_server, browser_page, monkeypatch):
    from playwright.sync_api import expect

    sent = []
    monkeypatch.setattr("cases.rescoring.enqueue", sent.append)  # no broker: the job's task is recorded
    page, base = browser_page, live_server.url
    world = World()
    version = activate(ModelVersion.objects.create(version="browser-rescore-v2", status="ready", artifact_path="/x"))
    chosen, other = make_image(world, sha="d" * 64), make_image(world, sha="e" * 64)
    heatmap = default_storage.save("heatmaps/chosen.png", ContentFile(png()))
    scored = Prediction.objects.create(image=chosen, model_version=version, status="done", melanoma_probability=0.3,
                                       malignancy_score=0.3, finished_at=timezone.now(), heatmap=heatmap)
    admin_log_in(page, base)

    page.goto(f"{base}/admin/cases/lesionimage/")
    page.locator(f'#result_list input[name="_selected_action"][value="{chosen.pk}"]').check()
    page.locator('select[name="action"]').select_option("rescore_with_active_model")
    page.get_by_role("button", name="Go").click()
    expect(page.locator(".messagelist")).to_contain_text("Re-scoring 1 image(s) with browser-rescore-v2")
    job = RescoreJob.objects.get()
    assert job.image_ids == [chosen.pk] and sent == [job.pk] and other.pk not in job.image_ids

    page.goto(f"{base}/admin/cases/lesionimage/{chosen.pk}/change/")
    with page.expect_response(lambda r: r.url.endswith(f"/images/{chosen.pk}/file/")) as stored:
        page.locator(f'a[href="/images/{chosen.pk}/file/"]').click()
    assert stored.value.status == 200 and stored.value.headers["content-type"] == "image/png"
    page.goto(f"{base}/admin/cases/prediction/{scored.pk}/change/")
    with page.expect_response(lambda r: r.url.endswith(f"/predictions/{scored.pk}/heatmap/")) as overlay:
        page.get_by_role("link", name="heatmap", exact=True).click()
    assert overlay.value.status == 200
    downloads = set(AuditEvent.objects.filter(action="download").values_list("object_type", flat=True))
    assert {"lesionimage", "prediction"} <= downloads
