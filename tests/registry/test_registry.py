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

    from cases.models import AuditEvent

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
