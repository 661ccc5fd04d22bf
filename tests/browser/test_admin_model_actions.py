"""The admin's model-version buttons work when clicked in a real browser (they sit inside the
admin's change form, where a nested <form> would be dropped and the click would save the change
form instead)."""
from __future__ import annotations

import shutil

import pytest
from tests.support.browser_helpers import PASSWORD
from django.contrib.auth import get_user_model
from django.utils import timezone

from classifier.models import ModelVersion
from classifier.registry import register_artifact

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def admin_log_in(page, base):
    get_user_model().objects.create_superuser("root", "root@example.org", PASSWORD)
    page.goto(f"{base}/admin/login/")
    page.get_by_label("Username").fill("root")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()


def test_activate_and_cancel_buttons_do_what_they_say(live_server, tiny_assessed_model_dir, browser_page,
                                                      artifacts_dir, tmp_path):
    from playwright.sync_api import expect

    from classifier.promotion import BOOTSTRAP_RESAMPLES, paired_gate
    from tests.support.gate_helpers import scored, synthetic_set
    from training.benchmark import CURRENT_VERSION
    from training.benchmark.plots import plot_paired_roc

    page, base = browser_page, live_server.url
    # the paired ROC goes into its plots/; activation asks for the card's fitted image checks
    shutil.copytree(tiny_assessed_model_dir, tmp_path / "ready")
    ready = register_artifact(tmp_path / "ready")
    ready.status = ModelVersion.Status.READY
    # the first version (nothing active): a comparison on the frozen benchmark's version, synthetic scores
    images, probs = synthetic_set(1500, name=CURRENT_VERSION)
    candidate = scored(images, probs, version=ready.version, sha256=ready.sha256)  # its registered model file
    plot_paired_roc(candidate, None, tmp_path / "ready" / "plots" / "benchmark_roc.png")
    ready.metrics = dict(ready.metrics, gate=paired_gate(candidate, None, target_sensitivity=0.5,
                                                         n_resamples=BOOTSTRAP_RESAMPLES, plot="benchmark_roc").to_dict())
    ready.save()
    running = ModelVersion.objects.create(version="run-in-progress", status=ModelVersion.Status.TRAINING,
                                         started_at=timezone.now())  # a worker has it
    admin_log_in(page, base)

    page.goto(f"{base}/admin/classifier/modelversion/{ready.pk}/change/")
    # the gate's comparison table and the paired ROC on the frozen benchmark
    expect(page.locator("#gate-table")).to_be_visible()
    expect(page.locator("#gate-table")).to_contain_text("Melanoma sensitivity at its own threshold")
    expect(page.locator("#gate-table")).to_contain_text("Calibration error")
    expect(page.locator("#promotion-gate h2")).to_contain_text(CURRENT_VERSION)
    roc = page.locator("#gate-roc")
    expect(roc).to_be_visible()
    assert roc.evaluate("img => img.complete && img.naturalWidth > 0"), "the paired ROC image did not load"
    page.screenshot(path=str(artifacts_dir / "29-admin-gate.png"), full_page=True)
    page.get_by_role("link", name="Activate this version").click()  # its confirmation page, asking why
    page.get_by_label("Reason").fill("Passes the gate on the frozen benchmark")
    page.get_by_role("button", name=f"Yes, activate {ready.version}").click()
    expect(page.locator(".messagelist")).to_contain_text("is now active")
    ready.refresh_from_db()
    assert ready.status == ModelVersion.Status.ACTIVE
    page.screenshot(path=str(artifacts_dir / "30-admin-activated.png"), full_page=True)
    # the version page's abstention panel links to that version's predictions, headed by the rates
    expect(page.locator("#abstentions")).to_contain_text("No image scored by this version")
    page.get_by_role("link", name="Predictions of this version").click()
    expect(page.locator("#assessment-rates")).to_contain_text("Images the model could not assess")
    assert f"model_version__id__exact={ready.pk}" in page.url

    page.goto(f"{base}/admin/classifier/modelversion/{running.pk}/change/")
    expect(page.locator("#training-progress")).not_to_contain_text("{#")  # no template comment shown as text
    page.get_by_role("link", name="Cancel this run").click()
    page.get_by_role("button", name="Yes, cancel run-in-progress").click()
    expect(page.locator(".messagelist")).to_contain_text("Cancellation of run-in-progress requested")
    running.refresh_from_db()
    assert running.cancel_requested and running.status == ModelVersion.Status.TRAINING


def test_correcting_a_patient_in_the_admin_is_audited_and_an_ai_output_is_read_only(live_server, browser_page):
    """Clicked: the admin corrects a patient identifier and saves; the trail shows old and new.
    A prediction's page opens (no 500 from its stored files) with no Save button."""
    from playwright.sync_api import expect

    from audit.models import AuditEvent
    from cases.models import Case, Clinic, Lesion, LesionImage, Patient, Prediction
    from classifier.models import ModelVersion

    page, base = browser_page, live_server.url
    admin_log_in(page, base)
    root = get_user_model().objects.get(username="root")
    clinic = Clinic.objects.create(name="Clinic A")
    patient = Patient.objects.create(clinic=clinic, identifier="TYPO-1", birth_year=1970, created_by=root)
    lesion = Lesion.objects.create(case=Case.objects.create(patient=patient, referring_clinician=root,
                                                            clinical_question="Changing mole?"),
                                   anatomic_site="posterior torso")
    image = LesionImage.objects.create(lesion=lesion, file="lesion-images/x.png", sha256="e" * 64, size_bytes=10,
                                       width=64, height=64, uploaded_by=root)
    version = ModelVersion.objects.create(version="v-browser", status=ModelVersion.Status.ACTIVE)
    prediction = Prediction.objects.create(image=image, model_version=version)

    page.goto(f"{base}/admin/cases/patient/{patient.pk}/change/")
    page.get_by_label("Pseudonymous identifier").fill("FIXED-1")
    page.get_by_role("button", name="Save", exact=True).click()
    expect(page.locator(".messagelist")).to_contain_text("was changed successfully")
    event = AuditEvent.objects.get(action="update", object_type="patient", object_id=str(patient.pk))
    assert (event.old_values, event.new_values) == ({"identifier": "TYPO-1"}, {"identifier": "FIXED-1"})

    page.goto(f"{base}/admin/cases/prediction/{prediction.pk}/change/")
    expect(page.locator("#content h1")).to_contain_text("View prediction")
    expect(page.get_by_role("link", name="lesion-images/x.png")).to_have_count(0)
    assert page.get_by_role("button", name="Save", exact=True).count() == 0
    page.goto(f"{base}/admin/cases/lesionimage/{image.pk}/change/")
    expect(page.get_by_role("link", name="lesion-images/x.png")).to_have_attribute("href", f"/images/{image.pk}/file/")


def test_a_failed_run_is_retried_and_another_deleted_by_clicking(live_server, browser_page, settings, tmp_path,
                                                                 monkeypatch):
    from playwright.sync_api import expect

    monkeypatch.setattr("classifier.lifecycle.enqueue_training", lambda *a, **k: None)  # no training here
    (tmp_path / "ham10000").mkdir()
    settings.SECONDLOOK_DATA_DIR = tmp_path
    page, base = browser_page, live_server.url
    admin_log_in(page, base)
    asked = {"epochs": 2, "seed": 3, "target_sensitivity": 0.9, "overrides": {}}
    failed = ModelVersion.objects.create(version="train-crashed", status=ModelVersion.Status.FAILED,
                                         data_sources=["ham10000"], error="Worker lost", training_config=asked)
    doomed = ModelVersion.objects.create(version="train-doomed", status=ModelVersion.Status.FAILED,
                                         data_sources=["ham10000"], error="Out of memory", training_config=asked)

    page.goto(f"{base}/admin/classifier/modelversion/{failed.pk}/change/")
    expect(page.locator("pre", has_text="Worker lost")).to_be_visible()
    page.get_by_role("button", name="Retry this run").click()
    expect(page.locator(".messagelist")).to_contain_text("queued with the settings of the failed run train-crashed")
    retry = ModelVersion.objects.get(status=ModelVersion.Status.TRAINING)
    assert retry.training_config == asked | {"sources": ["ham10000"]} and retry.data_sources == ["ham10000"]

    page.goto(f"{base}/admin/classifier/modelversion/{doomed.pk}/change/")
    page.get_by_role("link", name="Delete this failed run").click()
    page.get_by_role("button", name="Yes, delete train-doomed").click()
    expect(page.locator(".messagelist")).to_contain_text("The failed run train-doomed was deleted")
    assert not ModelVersion.objects.filter(pk=doomed.pk).exists()


def test_an_admin_releases_a_reviewers_claim_from_the_case_list(live_server, browser_page):
    from playwright.sync_api import expect

    from cases.models import Case, Clinic, Lesion, Patient

    page, base = browser_page, live_server.url
    admin_log_in(page, base)
    root = get_user_model().objects.get(username="root")
    away = get_user_model().objects.create_user("away", password=PASSWORD)
    clinic = Clinic.objects.create(name="Clinic A")
    patient = Patient.objects.create(clinic=clinic, identifier="CLAIMED-1", birth_year=1960, created_by=root)
    case = Case.objects.create(patient=patient, referring_clinician=root, clinical_question="New lesion?",
                               claimed_by=away, claimed_at=timezone.now(), status=Case.Status.IN_REVIEW)
    Lesion.objects.create(case=case, anatomic_site="posterior torso", flagged=True, awaiting_review=True)

    page.goto(f"{base}/admin/cases/case/")
    page.locator(f'input[name="_selected_action"][value="{case.pk}"]').check()
    page.get_by_role("combobox", name="Action").select_option(label="Release the reviewer's claim (the case goes back to the queue)")
    page.get_by_role("button", name="Go").click()
    expect(page.locator(".messagelist")).to_contain_text("Released 1 claim(s)")
    case.refresh_from_db()
    assert case.claimed_by is None and case.status == Case.Status.OPEN
