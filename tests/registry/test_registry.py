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
