"""Warming a newly active version on an inference worker (classifier.warmup): activation and
rollback ask for it after commit, the warm-up loads the model through the upload path, and
nothing about it can fail an activation."""
import pytest

from classifier import lifecycle, registry, warmup
from classifier.models import ModelVersion
from tests.support.gate_helpers import fake_sha, stand_in_artifact, stored_gate


@pytest.fixture
def sent(monkeypatch):
    """The warm-up tasks published (by version pk), instead of a broker."""
    calls = []

    class FakeConnection:
        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def ensure_connection(self, max_retries=None):
            return self

    monkeypatch.setattr("classifier.dispatch.broker_connection", FakeConnection)
    monkeypatch.setattr("classifier.dispatch.current_app.send_task",
                        lambda name, args, **kw: calls.append((name, args[0])))
    return calls


@pytest.mark.django_db
def test_activation_and_rollback_ask_a_worker_to_warm_the_new_version_after_commit(
        settings, tiny_assessed_model_dir, django_user_model, django_capture_on_commit_callbacks, sent, tmp_path):
    settings.SECONDLOOK_MODEL_DIR = tiny_assessed_model_dir  # a roll-back target needs its image checks
    admin = django_user_model.objects.create_superuser("root", password="x-very-long-pass-1")
    shipped = registry.ensure_default_registered()
    better = ModelVersion.objects.create(version="better", status="ready", target_sensitivity=0.9, sha256=fake_sha("better"),
                                         artifact_path=stand_in_artifact(tmp_path, "better"),
                                         metrics={"gate": stored_gate(allowed=True, active=shipped.version,
                                                                      active_sha256=shipped.sha256, candidate="better")})
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        lifecycle.activate_version(version=better, user=admin)
    assert sent == []  # nothing is published before the activation commits
    for callback in callbacks:
        callback()
    assert sent == [(warmup.WARM_TASK, better.pk)]
    with django_capture_on_commit_callbacks(execute=True):
        lifecycle.rollback(user=admin, expected_active_pk=better.pk, target_pk=shipped.pk, reason="warm-up test")
    assert sent[-1] == (warmup.WARM_TASK, shipped.pk)


@pytest.mark.django_db
def test_a_broker_that_is_down_does_not_fail_the_activation(use_tiny_assessed_model, django_user_model,
                                                          django_capture_on_commit_callbacks, monkeypatch, caplog,
                                                          tmp_path):
    def down():
        raise ConnectionRefusedError("Redis is down")

    monkeypatch.setattr("classifier.dispatch.broker_connection", down)
    admin = django_user_model.objects.create_superuser("root", password="x-very-long-pass-1")
    shipped = registry.ensure_default_registered()
    better = ModelVersion.objects.create(version="better", status="ready", target_sensitivity=0.9, sha256=fake_sha("better"),
                                         artifact_path=stand_in_artifact(tmp_path, "better"),
                                         metrics={"gate": stored_gate(allowed=True, active=shipped.version,
                                                                      active_sha256=shipped.sha256, candidate="better")})
    with django_capture_on_commit_callbacks(execute=True):
        lifecycle.activate_version(version=better, user=admin)
    assert ModelVersion.objects.get(status="active").version == "better"
    assert "could not ask a worker to warm better" in caplog.text


@pytest.mark.django_db
def test_warm_up_loads_the_active_model_through_the_upload_path(use_tiny_assessed_model, inference_options, tmp_path):
    from mlcore.model_store import _CACHE, clear_cache

    inference_options(cache_dir=tmp_path / "model-cache")
    clear_cache()
    shipped = registry.ensure_default_registered()
    assert warmup.warm_version(version_id=shipped.pk) == f"warmed {shipped.version}"
    (model,) = _CACHE.values()
    assert model.version == shipped.version and model._runner is not None  # the runner is built
    assert warmup.warm_version(version_id=shipped.pk) == f"warmed {shipped.version}"  # idempotent
    assert len(_CACHE) == 1


@pytest.mark.django_db
def test_warm_up_skips_what_it_should_not_or_cannot_load(use_tiny_assessed_model, tmp_path, settings):
    import shutil

    settings.VAR_DIR = tmp_path / "var"  # where registering the bundled model keeps its copy
    shipped = registry.ensure_default_registered()
    ready = ModelVersion.objects.create(version="ready-one", status="ready")
    assert warmup.warm_version(version_id=ready.pk) == "not warmed: ready-one is ready, not active"
    assert warmup.warm_version(version_id=10**9) == f"not warmed: no model version {10**9}"
    ModelVersion.objects.filter(pk=shipped.pk).update(artifact_path=str(tmp_path / "gone"))
    shutil.rmtree(settings.VAR_DIR / "model-store")
    result = warmup.warm_version(version_id=shipped.pk)
    assert result.startswith("not warmed: ") and "gone" in result
