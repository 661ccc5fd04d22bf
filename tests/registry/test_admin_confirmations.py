"""The version page's buttons lead to a confirmation page (as the roll-back's) and only its POST acts;
an activation needs a reason, kept in its audit event. The progress and plot endpoints need the
view permission. The re-score list does not call a job whose predictions were only sent "Done". A
finished run's gate compares with the version active at its end. A run failed because the broker
was down is audited. A retried fine-tuning run says which model it continues, and its audit event
names the run it retries."""
from __future__ import annotations

import pytest
from django.utils import timezone

from audit.models import AuditEvent
from classifier import fine_tuning, lifecycle, registry, retraining
from classifier.models import ModelVersion, RescoreJob
from tests.support.gate_helpers import fake_sha, stand_in_artifact, stored_gate
from tests.support.training_runs import data_here, sent  # noqa: F401 (fixtures)

BASE = "/admin/classifier/modelversion"
PASSWORD = "x-very-long-pass-1"


def _version(root, name: str, *, status: str = "ready", **fields) -> ModelVersion:
    fields = {"artifact_path": stand_in_artifact(root, name), "sha256": fake_sha(name)} | fields
    return ModelVersion.objects.create(version=name, status=status, **fields)


@pytest.fixture
def candidate(db, tmp_path) -> tuple[ModelVersion, ModelVersion]:
    """(shipped, better): ``shipped`` active, ``better`` ready and passing its gate against it."""
    shipped = registry.activate(_version(tmp_path, "shipped"))
    better = _version(tmp_path, "better", target_sensitivity=0.9,
                      metrics={"gate": stored_gate(allowed=True, active="shipped", candidate="better")})
    return shipped, better


def _active() -> ModelVersion:
    return ModelVersion.objects.get(status=ModelVersion.Status.ACTIVE)


# --- 1. confirmation pages ----------------------------------------------------------------------------

@pytest.mark.django_db
def test_activate_shows_a_confirmation_page_and_changes_nothing_until_confirmed_with_a_reason(
        client, admin_user, candidate):
    shipped, better = candidate
    client.force_login(admin_user)
    page = client.get(f"{BASE}/{better.pk}/change/").content.decode()
    assert f'href="{BASE}/{better.pk}/activate/"' in page and "Activate this version" in page

    response = client.get(f"{BASE}/{better.pk}/activate/")
    text = response.content.decode()
    assert response.status_code == 200
    assert "Are you sure you want to activate better?" in text and 'id="confirm-current"' in text
    assert "Yes, activate better" in text and 'name="reason"' in text
    assert _active() == shipped and not AuditEvent.objects.filter(action="activate").exists()

    for posted in ({}, {"reason": ""}, {"reason": "   "}):  # no reason: refused in words, nothing changed
        response = client.post(f"{BASE}/{better.pk}/activate/", posted)
        assert response.status_code == 200
        assert "Say why you activate this version" in response.content.decode()
        assert _active() == shipped and not AuditEvent.objects.filter(action="activate").exists()

    response = client.post(f"{BASE}/{better.pk}/activate/", {"reason": "  Better on the benchmark, ticket 42 "},
                           REMOTE_ADDR="198.51.100.23", follow=True)
    assert "Better is now active" in response.content.decode()
    assert _active() == better
    event = AuditEvent.objects.get(action="activate")
    assert (event.actor, event.ip_address, event.old_values) == (admin_user, "198.51.100.23", {"active": "shipped"})
    assert event.new_values["reason"] == "Better on the benchmark, ticket 42" and event.new_values["active"] == "better"


@pytest.mark.django_db
def test_the_activation_page_says_when_the_gate_refuses_and_a_version_not_ready_is_not_offered(
        client, admin_user, candidate, tmp_path):
    shipped, _ = candidate
    worse = _version(tmp_path, "worse", target_sensitivity=0.9,
                     metrics={"gate": stored_gate(allowed=False, active="shipped", candidate="worse")})
    client.force_login(admin_user)
    assert f'href="{BASE}/{worse.pk}/activate/"' not in client.get(f"{BASE}/{worse.pk}/change/").content.decode()
    text = client.get(f"{BASE}/{worse.pk}/activate/").content.decode()
    assert 'id="confirm-refusal"' in text and "The promotion gate refuses worse" in text
    response = client.post(f"{BASE}/{worse.pk}/activate/", {"reason": "try anyway"}, follow=True)
    assert "Promotion gate refused" in response.content.decode() and _active() == shipped

    response = client.get(f"{BASE}/{shipped.pk}/activate/", follow=True)  # already active
    assert "there is nothing to confirm" in response.content.decode()


@pytest.mark.django_db
def test_cancel_shows_a_confirmation_page_and_only_its_post_cancels(client, admin_user):
    queued = ModelVersion.objects.create(version="train-queued", status="training", progress={"phase": "queued"})
    client.force_login(admin_user)
    page = client.get(f"{BASE}/{queued.pk}/change/").content.decode()
    assert f'href="{BASE}/{queued.pk}/cancel/"' in page

    text = client.get(f"{BASE}/{queued.pk}/cancel/").content.decode()
    assert "Are you sure you want to cancel the training run train-queued?" in text
    assert "Yes, cancel train-queued" in text
    queued.refresh_from_db()
    assert queued.status == "training" and not queued.cancel_requested
    assert not AuditEvent.objects.filter(action="cancel").exists()

    response = client.post(f"{BASE}/{queued.pk}/cancel/", follow=True)
    assert "The run train-queued was cancelled before it started" in response.content.decode()
    queued.refresh_from_db()
    assert queued.status == "failed" and AuditEvent.objects.filter(action="cancel").count() == 1


@pytest.mark.django_db
def test_delete_shows_a_confirmation_page_naming_the_folder_and_only_its_post_deletes(
        client, admin_user, settings, tmp_path, django_capture_on_commit_callbacks):
    root = settings.SECONDLOOK_MODELS_ROOT = tmp_path / "models"
    (root / "train-doomed" / "checkpoints").mkdir(parents=True)
    doomed = ModelVersion.objects.create(version="train-doomed", status="failed", error="Out of memory")
    client.force_login(admin_user)
    page = client.get(f"{BASE}/{doomed.pk}/change/").content.decode()
    assert f'href="{BASE}/{doomed.pk}/delete-failed/"' in page

    text = client.get(f"{BASE}/{doomed.pk}/delete-failed/").content.decode()
    assert "Are you sure you want to delete the failed run train-doomed?" in text
    assert str(root / "train-doomed") in text and "Yes, delete train-doomed" in text
    assert ModelVersion.objects.filter(pk=doomed.pk).exists() and (root / "train-doomed").is_dir()

    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(f"{BASE}/{doomed.pk}/delete-failed/", follow=True)
    assert "The failed run train-doomed was deleted" in response.content.decode()
    assert not ModelVersion.objects.filter(pk=doomed.pk).exists() and not (root / "train-doomed").exists()


@pytest.mark.django_db
def test_the_confirmation_pages_need_the_change_permission(client, django_user_model, candidate):
    from django.contrib.auth.models import Permission

    _, better = candidate
    failed = ModelVersion.objects.create(version="train-failed", status="failed", error="boom")
    running = ModelVersion.objects.create(version="train-running", status="training")
    viewer = django_user_model.objects.create_user("viewer", password=PASSWORD, is_staff=True)
    viewer.user_permissions.add(Permission.objects.get(codename="view_modelversion"))
    client.force_login(viewer)
    for url in (f"{BASE}/{better.pk}/activate/", f"{BASE}/{running.pk}/cancel/", f"{BASE}/{failed.pk}/delete-failed/"):
        assert client.get(url).status_code == 403, url
        assert client.post(url, {"reason": "x"}).status_code == 403, url
    assert ModelVersion.objects.filter(pk=failed.pk).exists() and _active().version == "shipped"


# --- 4. progress and plots need the view permission -----------------------------------------------------

@pytest.mark.django_db
def test_progress_and_plots_need_the_view_permission(client, django_user_model, admin_user, tmp_path):
    from pathlib import Path

    from django.contrib.auth.models import Permission

    version = _version(tmp_path, "plotted")
    (Path(version.artifact_path) / "plots").mkdir()
    (Path(version.artifact_path) / "plots" / "roc.png").write_bytes(b"\x89PNG stand-in")
    urls = (f"{BASE}/{version.pk}/progress/", f"{BASE}/{version.pk}/plot/roc.png")

    staff = django_user_model.objects.create_user("staff", password=PASSWORD, is_staff=True)
    client.force_login(staff)
    for url in urls:
        assert client.get(url).status_code == 403, url

    staff.user_permissions.add(Permission.objects.get(codename="view_modelversion"))
    staff = django_user_model.objects.get(pk=staff.pk)  # the permission cache
    client.force_login(staff)
    assert [client.get(url).status_code for url in urls] == [200, 200]

    client.force_login(admin_user)
    responses = [client.get(url) for url in urls]
    assert [r.status_code for r in responses] == [200, 200]
    assert responses[0].json()["status"] == "ready"


# --- 6. the re-score list ---------------------------------------------------------------------------------

@pytest.mark.django_db
def test_a_job_whose_predictions_were_only_sent_shows_queued_for_scoring_not_done(client, admin_user, tmp_path,
                                                                                 monkeypatch):
    from classifier.admin import ModelVersionAdmin
    from tests.support.case_helpers import World, make_image, score_image

    version = registry.activate(_version(tmp_path, "v-active"))
    world = World()
    images = [make_image(world, sha=c * 64) for c in "abc"]
    RescoreJob.objects.create(model_version=version, status="done", total=3, queued=3,
                              image_ids=[i.pk for i in images])
    score_image(images[0], version)
    score_image(images[1], version, status="pending")
    client.force_login(admin_user)
    text = client.get(f"{BASE}/").content.decode()
    table = text[text.index("Recent re-scoring jobs"):]
    table = table[:table.index("</table>")]
    # the app's admin counts the job's finished scores: one of the three queued
    assert "Queued for scoring" in table and ">Done<" not in table
    assert '<progress max="3" value="1"></progress> 1 / 3 scored (3 queued)' in table

    # the registry's own admin knows no predictions: it shows what was queued
    request = type("R", (), {"user": admin_user})()
    assert ModelVersionAdmin(ModelVersion, None).rescore_scored(request, RescoreJob.objects.get()) is None


# --- 7. the gate compares with the version active at the end of the run -----------------------------------

@pytest.mark.django_db
def test_a_finished_run_is_compared_with_the_version_active_when_it_ends(data_here, settings, tmp_path, monkeypatch):
    from tests.reliability.test_training_run_robustness import new_run, trains_an_artifact

    settings.SECONDLOOK_MODELS_IN_STORAGE = False
    registry.activate(_version(tmp_path, "v-before"))
    later = _version(tmp_path, "v-later")
    run = new_run()

    def train_while_another_is_activated(*args, **kwargs):
        registry.activate(later)  # an administrator activates another version during the run
        trains_an_artifact(*args, **kwargs)

    measured = []
    monkeypatch.setattr(retraining, "train", train_while_another_is_activated)
    monkeypatch.setattr(retraining, "measure_gate",
                        lambda out_dir, active, **kwargs: measured.append(getattr(active, "version", None)) or {})
    assert retraining.run_training(version_id=run.pk) == "run-x"
    assert measured == ["v-later"]


# --- 9. a run the broker could not take is audited --------------------------------------------------------

@pytest.mark.django_db
def test_a_run_failed_because_the_broker_is_down_is_audited(data_here, monkeypatch, django_capture_on_commit_callbacks):
    def broker_down(*args, **kwargs):
        raise ConnectionError("Redis refused")

    monkeypatch.setattr(lifecycle, "enqueue_training", broker_down)
    with django_capture_on_commit_callbacks(execute=True):
        run = lifecycle.start_training(sources=["ham10000"], epochs=1, seed=0, target_sensitivity=0.9)
    run.refresh_from_db()
    assert run.status == "failed" and "could not be queued" in run.error
    event = AuditEvent.objects.get(action="update", object_type="modelversion", object_id=str(run.pk))
    assert event.actor is None and event.old_values == {"status": "training"}
    assert event.new_values["status"] == "failed" and "could not be queued" in event.new_values["error"]
    assert event.new_values["by"].startswith("the training queue")

    # a run that had already failed keeps its reason, and no second outcome is recorded
    assert lifecycle.fail_run(run.pk, "later", keep_earlier_failure=True) is False
    assert AuditEvent.objects.filter(action="update", object_id=str(run.pk)).count() == 1


# --- 10. a retry says what it continues and whose retry it is ----------------------------------------------

@pytest.mark.django_db
def test_retrying_a_fine_tuning_run_names_the_model_it_continues_and_audits_the_retry(
        client, admin_user, data_here, sent, tiny_model_dir):
    active = registry.activate(registry.register_artifact(tiny_model_dir))
    failed = ModelVersion.objects.create(
        version="tune-failed", status="failed", error="boom", data_sources=["ham10000"],
        training_config={"sources": ["ham10000"], "epochs": 2, "seed": 1, "target_sensitivity": 0.9,
                         "overrides": {}, fine_tuning.START_KEY: {"version": "v-replaced", "sha256": "0" * 64}})
    client.force_login(admin_user)
    response = client.post(f"{BASE}/{failed.pk}/retry/", follow=True)
    text = response.content.decode()
    retry = ModelVersion.objects.get(status="training")
    assert (f"Training {retry.version} queued with the settings of the failed run tune-failed, fine-tuning the "
            f"active model {active.version} (the failed run fine-tuned v-replaced).") in text
    assert retry.training_config[fine_tuning.START_KEY]["version"] == active.version
    event = AuditEvent.objects.get(action="train")
    assert event.new_values["retry_of"] == "tune-failed" and event.new_values["start_from"] == active.version


@pytest.mark.django_db
def test_a_plain_retry_names_the_failed_run_and_a_new_run_has_no_retry_of(client, admin_user, data_here, sent):
    failed = ModelVersion.objects.create(version="train-crashed", status="failed", error="Worker lost",
                                         data_sources=["ham10000"], training_config={"epochs": 2, "seed": 3})
    client.force_login(admin_user)
    text = client.post(f"{BASE}/{failed.pk}/retry/", follow=True).content.decode()
    assert "queued with the settings of the failed run train-crashed." in text
    assert AuditEvent.objects.get(action="train").new_values["retry_of"] == "train-crashed"
    ModelVersion.objects.filter(status="training").update(status="failed", finished_at=timezone.now())
    lifecycle.start_training(sources=["ham10000"], epochs=1, seed=0, target_sensitivity=0.9)
    assert "retry_of" not in AuditEvent.objects.filter(action="train").order_by("pk").last().new_values


# --- the version list's figures carry their CI and say what they are -----------------------------------

@pytest.mark.django_db
def test_the_version_list_shows_each_figure_with_its_ci_and_says_they_are_not_comparable(client, admin_user,
                                                                                       tmp_path):
    _version(tmp_path, "v-ci", metrics={"melanoma_auc": 0.905, "melanoma_auc_ci95": [0.882, 0.927],
                                        "malignancy_auc": 0.915})
    client.force_login(admin_user)
    text = client.get(f"{BASE}/").content.decode()
    assert "0.905 [0.882, 0.927]" in text and "Melanoma AUC [95 % CI]" in text
    assert "0.915<" in text  # a figure recorded without its CI is shown alone
    assert "not comparable across versions" in text
