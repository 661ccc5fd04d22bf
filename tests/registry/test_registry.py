"""Registry services: default registration, exactly one active version, activation, rollback."""
import pytest
from django.db import IntegrityError, transaction

from classifier import lifecycle, registry
from classifier.models import ModelVersion


def _gate_metrics(auc: float, sensitivity: float, active: str) -> dict:
    return {"gate": {"candidate": {"melanoma_auc": auc, "melanoma_sensitivity": sensitivity},
                     "active": {"version": active, "melanoma_auc": 0.85}}}


@pytest.mark.django_db
def test_default_model_is_registered_once_and_active(use_tiny_model):
    first = registry.ensure_default_registered()
    again = registry.ensure_default_registered()
    assert first.pk == again.pk and first.status == ModelVersion.Status.ACTIVE
    assert first.sha256 and len(first.sha256) == 64
    assert first.melanoma_threshold is not None and first.malignancy_threshold is not None
    assert registry.active_model_status() == {"ok": True, "version": first.version}


@pytest.mark.django_db
def test_database_allows_only_one_active_version():
    ModelVersion.objects.create(version="a", status="active")
    with pytest.raises(IntegrityError), transaction.atomic():
        ModelVersion.objects.create(version="b", status="active")


@pytest.mark.django_db
def test_activation_goes_through_the_gate_and_rollback_restores(use_tiny_model, django_user_model):
    admin = django_user_model.objects.create_superuser("root", password="x-very-long-pass-1")
    shipped = registry.ensure_default_registered()
    worse = ModelVersion.objects.create(version="worse", status="ready", target_sensitivity=0.9,
                                        metrics=_gate_metrics(0.80, 0.95, shipped.version))
    better = ModelVersion.objects.create(version="better", status="ready", target_sensitivity=0.9,
                                         metrics=_gate_metrics(0.88, 0.93, shipped.version))
    with pytest.raises(lifecycle.LifecycleError, match="gate refused"):
        lifecycle.activate_version(version=worse, user=admin)
    lifecycle.activate_version(version=better, user=admin)
    assert ModelVersion.objects.get(status="active").version == "better"
    assert lifecycle.rollback(user=admin).version == shipped.version
    assert ModelVersion.objects.get(status="active").version == shipped.version

    from audit.models import AuditEvent

    actions = list(AuditEvent.objects.order_by("pk").values_list("action", flat=True))
    assert actions[-2:] == ["activate", "rollback"]


@pytest.mark.django_db
@pytest.mark.parametrize("kwargs, message", [
    ({"sources": []}, "at least one"),
    ({"sources": ["reviews"]}, "too few"),
    ({"sources": ["nope"]}, "Unknown"),
    ({"epochs": 0}, "Epochs"),
    ({"target_sensitivity": 1.0}, "Target sensitivity"),
])
def test_training_request_is_validated(kwargs, message):
    request = {"sources": ["ham10000"], "epochs": 5, "seed": 1, "target_sensitivity": 0.9} | kwargs
    with pytest.raises(lifecycle.LifecycleError, match=message):
        lifecycle.start_training(**request)
    assert not ModelVersion.objects.exists()


@pytest.mark.django_db
def test_a_dataset_missing_on_this_server_is_refused_up_front(settings, tmp_path):
    (tmp_path / "ham10000").mkdir()
    settings.SECONDLOOK_DATA_DIR = tmp_path
    with pytest.raises(lifecycle.LifecycleError, match=r"Not on this server: ISIC 9-class set .*isic-9class"):
        lifecycle.start_training(sources=["isic-9class", "ham10000", "reviews"], epochs=5, seed=1, target_sensitivity=0.9)
    assert not ModelVersion.objects.exists()


@pytest.mark.django_db
def test_registry_actions_need_the_change_permission(client, django_user_model, use_tiny_model):
    from django.contrib.auth.models import Permission

    shipped = registry.ensure_default_registered()
    candidate = ModelVersion.objects.create(version="cand", status="ready", target_sensitivity=0.9,
                                            metrics=_gate_metrics(0.99, 0.99, shipped.version))
    staff = django_user_model.objects.create_user("viewer", password="x-very-long-pass-2", is_staff=True)
    staff.user_permissions.add(Permission.objects.get(codename="view_modelversion"))
    client.force_login(staff)
    assert client.get(f"/admin/classifier/modelversion/{candidate.pk}/change/").status_code == 200
    assert client.post(f"/admin/classifier/modelversion/{candidate.pk}/activate/").status_code == 403
    assert client.post("/admin/classifier/modelversion/rollback/").status_code == 403
    assert client.get("/admin/classifier/modelversion/train/").status_code == 403
    assert ModelVersion.objects.get(status="active").pk == shipped.pk


@pytest.mark.django_db
def test_admin_pages_show_metrics_plots_and_the_gate(admin_client, use_tiny_model):
    shipped = registry.ensure_default_registered()
    candidate = ModelVersion.objects.create(version="cand", status="ready", target_sensitivity=0.9,
                                            metrics=_gate_metrics(0.99, 0.99, shipped.version))
    listing = admin_client.get("/admin/classifier/modelversion/").content.decode()
    assert shipped.version in listing and "Train a new version" in listing
    page = admin_client.get(f"/admin/classifier/modelversion/{candidate.pk}/change/").content.decode()
    assert "Promotion gate" in page and "Activate this version" in page
    detail = admin_client.get(f"/admin/classifier/modelversion/{shipped.pk}/change/").content.decode()
    assert "Model card" in detail
    response = admin_client.post(f"/admin/classifier/modelversion/{candidate.pk}/activate/")
    assert response.status_code == 302
    assert ModelVersion.objects.get(status="active").pk == candidate.pk


# --- runs that never hang -------------------------------------------------------------------------

@pytest.fixture
def data_here(settings, tmp_path):
    (tmp_path / "ham10000").mkdir()
    settings.SECONDLOOK_DATA_DIR = tmp_path
    return tmp_path


@pytest.mark.django_db(transaction=True)
def test_the_database_allows_one_training_run_at_a_time(data_here, monkeypatch):
    monkeypatch.setattr("classifier.lifecycle.current_app.send_task", lambda *a, **k: None)
    ModelVersion.objects.create(version="run-1", status="training")
    with pytest.raises(IntegrityError), transaction.atomic():
        ModelVersion.objects.create(version="run-2", status="training")
    with pytest.raises(lifecycle.LifecycleError, match="already in progress"):
        lifecycle.start_training(sources=["ham10000"], epochs=1, seed=0, target_sensitivity=0.9)
    assert ModelVersion.objects.filter(status="training").count() == 1


@pytest.mark.django_db
def test_stale_and_never_started_runs_end_failed_with_their_reason(settings):
    from datetime import timedelta

    from django.utils import timezone

    from classifier.retraining import sweep_stale_runs

    now = timezone.now()
    ModelVersion.objects.create(version="killed", status="training", started_at=now - timedelta(hours=1),
                                progress={"updated_at": (now - timedelta(minutes=16)).isoformat()})
    assert sweep_stale_runs(now=now) == ["killed"]
    ModelVersion.objects.create(version="alive", status="training", started_at=now - timedelta(minutes=30),
                                progress={"updated_at": (now - timedelta(minutes=2)).isoformat()})
    assert sweep_stale_runs(now=now) == []
    ModelVersion.objects.filter(version="alive").update(started_at=now - timedelta(seconds=settings.TRAINING_TIME_LIMIT + 1))
    assert sweep_stale_runs(now=now) == ["alive"]
    ModelVersion.objects.filter(created_at__isnull=False).update(created_at=now - timedelta(minutes=20))
    queued = ModelVersion.objects.create(version="queued", status="training")
    ModelVersion.objects.filter(pk=queued.pk).update(created_at=now - timedelta(minutes=20))
    assert sweep_stale_runs(now=now) == ["queued"]
    errors = dict(ModelVersion.objects.values_list("version", "error"))
    assert "no progress for 15 minutes" in errors["killed"] and "time limit" in errors["alive"]
    assert "No training worker picked the run up" in errors["queued"]
    assert set(ModelVersion.objects.values_list("status", flat=True)) == {"failed"}


@pytest.mark.django_db
def test_a_run_whose_registration_fails_ends_failed_not_training(monkeypatch, data_here, settings, tmp_path):
    from classifier import retraining

    settings.SECONDLOOK_MODELS_ROOT = tmp_path / "models"
    version = ModelVersion.objects.create(version="reg-fails", status="training", data_sources=["ham10000"],
                                          training_config={"epochs": 1})
    monkeypatch.setattr(retraining, "train", lambda *a, **k: None)
    monkeypatch.setattr(retraining, "register_artifact", lambda path: (_ for _ in ()).throw(
        ValueError("CHECK constraint failed: JSON_VALID(\"metrics\")")))
    assert retraining.run_training(version_id=version.pk) == "failed"
    version.refresh_from_db()
    assert version.status == "failed" and "could not be registered" in version.error and "JSON_VALID" in version.error


@pytest.mark.django_db(transaction=True)
def test_a_failed_run_can_be_retried_with_its_settings_or_deleted(data_here, monkeypatch, django_user_model):
    sent = []
    monkeypatch.setattr("classifier.lifecycle.current_app.send_task", lambda name, args: sent.append((name, args)))
    admin = django_user_model.objects.create_superuser("root", "r@example.org", "pw-123456-long")
    failed = ModelVersion.objects.create(version="train-failed", status="failed", data_sources=["ham10000"],
                                         target_sensitivity=0.92, error="boom",
                                         training_config={"epochs": 3, "seed": 7, "target_sensitivity": 0.92,
                                                          "overrides": {"batch_size": 16}})
    run = lifecycle.retry_training(version=failed, user=admin)
    assert run.status == "training" and run.training_config == failed.training_config
    assert run.data_sources == ["ham10000"] and sent == [("classifier.tasks.train_model", [run.pk])]
    with pytest.raises(lifecycle.LifecycleError, match="only a failed run"):
        lifecycle.delete_failed(version=run, user=admin)
    lifecycle.delete_failed(version=failed, user=admin)
    assert not ModelVersion.objects.filter(pk=failed.pk).exists()
