"""In a real browser: a re-score left unscored because its model version was rolled back is passed
over (it would only fail again); the image's own failed score shows in its place, and its Retry,
clicked, sends that score again."""
from __future__ import annotations

import pytest
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.utils import timezone

from cases.models import Case, Clinic, Lesion, Patient, Prediction
from cases.roles import CLINICIAN
from cases.scoring import stale_rescore_reason
from classifier.models import ModelVersion
from tests.support.browser_helpers import log_in, make_user
from tests.support.imagegen import png

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def _image(lesion, clinician, sha_char: str):
    stored = default_storage.save(f"lesion-images/{sha_char}.png", ContentFile(png()))
    return lesion.images.create(file=stored, sha256=sha_char * 64, size_bytes=10, width=96, height=64,
                                uploaded_by=clinician)


def test_a_re_score_of_a_rolled_back_version_gives_way_to_the_retry_of_the_upload_score(
        live_server, browser_page, monkeypatch):
    from playwright.sync_api import expect

    sent = []
    monkeypatch.setattr("cases.scoring.dispatch_prediction", lambda pk, **kwargs: sent.append(pk) or True)
    page, base = browser_page, live_server.url
    clinic = Clinic.objects.create(name="Riverside Dermatology")
    clinician = make_user("cora", "Cora Clinician", CLINICIAN, clinic)
    patient = Patient.objects.create(clinic=clinic, identifier="RIV-0042", birth_year=1966, created_by=clinician)
    case = Case.objects.create(patient=patient, referring_clinician=clinician, clinical_question="Changing mole?")
    lesion = Lesion.objects.create(case=case, anatomic_site="posterior torso")
    active = ModelVersion.objects.create(version="browser-v1", status=ModelVersion.Status.ACTIVE)
    rolled_back = ModelVersion.objects.create(version="browser-v2", status=ModelVersion.Status.READY)
    now = timezone.now()
    image = _image(lesion, clinician, "d")
    upload = Prediction.objects.create(image=image, model_version=active, status="failed", error="worker lost",
                                       finished_at=now)
    Prediction.objects.create(image=image, model_version=rolled_back, status="failed", finished_at=now,
                              error=stale_rescore_reason("browser-v2"))

    log_in(page, base, "cora")
    page.goto(f"{base}/cases/{case.pk}/")
    card = page.locator(f"#image-{image.pk}")
    expect(card.locator("p.status-failed")).to_contain_text("worker lost")
    expect(card).not_to_contain_text("browser-v2")
    card.get_by_role("button", name="Retry").click()
    expect(page.locator(".messages")).to_contain_text("Scoring was restarted for this image.")
    upload.refresh_from_db()
    assert upload.status == "pending" and sent == [upload.pk]
