"""/health/ reports database, Redis, a live worker per queue and the active model version."""
import pytest
from django.urls import reverse

from classifier.registry import register_artifact, activate
from melanoma_site import health
from tests.support.health import HEALTH_AUTH


@pytest.mark.slow
@pytest.mark.django_db
def test_health_reports_down_workers_with_503(client, use_tiny_model, flush_broker):
    activate(register_artifact(use_tiny_model))
    response = client.get(reverse("health"), **HEALTH_AUTH)
    body = response.json()
    assert response.status_code == 503
    assert body["database"]["ok"] is True
    assert body["redis"]["ok"] is True
    assert body["workers"]["inference"]["ok"] is False
    assert body["model"]["ok"] is True and body["model"]["version"]


@pytest.mark.django_db
def test_health_reports_redis_down(client, settings, use_tiny_model):
    settings.CELERY_BROKER_URL = "redis://127.0.0.1:1/0"
    body = client.get(reverse("health"), **HEALTH_AUTH).json()
    assert body["redis"]["ok"] is False and "Connection" in body["redis"]["error"]
    assert body["status"] == "degraded"


@pytest.mark.django_db
def test_health_reports_missing_model_file(client, settings, tmp_path, tiny_model_dir):
    import shutil

    settings.VAR_DIR = tmp_path / "var"  # no host copy of this model (other tests keep one)
    broken = tmp_path / "model"
    shutil.copytree(tiny_model_dir, broken)
    activate(register_artifact(broken))
    (broken / "model.keras").unlink()
    body = client.get(reverse("health"), **HEALTH_AUTH).json()
    assert body["model"]["ok"] is False and "missing" in body["model"]["error"]


@pytest.mark.django_db
def test_health_accepts_the_host_copy_the_workers_load_once_a_release_replaced_the_bundled_dir(
        client, settings, tmp_path, tiny_model_dir):
    import shutil

    bundled = tmp_path / "model"
    shutil.copytree(tiny_model_dir, bundled)
    settings.SECONDLOOK_MODEL_DIR = bundled
    settings.VAR_DIR = tmp_path / "var"
    activate(register_artifact(bundled))  # keeps a verified copy under VAR_DIR/model-store
    (bundled / "model.keras").write_bytes(b"the next release's weights")
    model = client.get(reverse("health"), **HEALTH_AUTH).json()["model"]
    assert model["ok"] is True and model["served_from"] == "host copy"
    assert "corrupt" in model["warning"]

    shutil.rmtree(settings.VAR_DIR / "model-store")  # no copy left anywhere: down, and says why
    model = client.get(reverse("health"), **HEALTH_AUTH).json()["model"]
    assert model["ok"] is False and "corrupt" in model["error"]


@pytest.mark.integration
@pytest.mark.django_db(transaction=True)
def test_health_is_ok_with_a_live_worker(client, celery_worker_process, use_tiny_model):
    activate(register_artifact(use_tiny_model))
    response = client.get(reverse("health"), **HEALTH_AUTH)
    body = response.json()
    assert response.status_code == 200, body
    assert body["status"] == "ok"
    assert all(body["workers"][queue]["workers"] for queue in ("inference", "rescoring", "training"))


def test_every_routed_queue_needs_a_worker(monkeypatch):
    """A worker started with ``-Q inference`` only leaves re-scoring tasks waiting for ever: the
    rescoring queue is checked like the others (the queues are the Celery app's own)."""
    from melanoma_site.celery import app

    assert set(health.QUEUES) == {queue.name for queue in app.conf.task_queues}

    class Inspect:
        def active_queues(self):
            return {"inference@h": [{"name": "inference"}], "training@h": [{"name": "training"}]}

    monkeypatch.setattr(health.celery_app.control, "inspect", lambda timeout=1.0: Inspect())
    workers = health.check_workers()
    assert workers["rescoring"] == {"ok": False, "workers": []}
    assert workers["inference"] == {"ok": True, "workers": ["inference@h"]} and workers["training"]["ok"] is True


def test_check_functions_never_raise():
    assert health.check_redis("redis://127.0.0.1:1/0")["ok"] is False


@pytest.mark.django_db
def test_liveness_answers_without_touching_the_database_or_broker(client, django_assert_num_queries, monkeypatch):
    monkeypatch.setattr(health, "health_report", lambda: pytest.fail("the liveness check ran the full report"))
    with django_assert_num_queries(0):
        response = client.get("/health/live")
    assert response.status_code == 200 and response.json() == {"status": "ok"}
    assert "no-cache" in response["Cache-Control"]


@pytest.mark.django_db
def test_anonymous_callers_get_the_status_only_and_staff_or_the_token_the_details(client, settings, use_tiny_model,
                                                                                   django_user_model):
    settings.CELERY_BROKER_URL = "redis://127.0.0.1:1/0"  # degraded, with an error text
    anonymous = client.get(reverse("health"))
    assert anonymous.status_code == 503 and anonymous.json() == {"status": "degraded"}
    wrong = client.get(reverse("health"), HTTP_AUTHORIZATION="Bearer nope")
    assert wrong.json() == {"status": "degraded"}
    detailed = client.get(reverse("health"), **HEALTH_AUTH).json()
    assert detailed["redis"]["ok"] is False and "error" in detailed["redis"] and "workers" in detailed
    clinician = django_user_model.objects.create_user("c", password="pw-12345-long")
    client.force_login(clinician)
    assert client.get(reverse("health")).json() == {"status": "degraded"}
    staff = django_user_model.objects.create_user("s", password="pw-12345-long", is_staff=True)
    client.force_login(staff)
    assert "database" in client.get(reverse("health")).json()


@pytest.mark.django_db
def test_the_report_is_computed_once_per_cache_period_and_never_writes(client, settings, monkeypatch):
    from classifier.models import ModelVersion

    settings.HEALTH_CACHE_SECONDS = 60
    monkeypatch.setattr(health, "_cached", None)
    runs = []
    real = health.health_report
    monkeypatch.setattr(health, "health_report", lambda: runs.append(1) or real())
    monkeypatch.setattr(health, "check_workers", lambda timeout=1.0: {q: {"ok": False, "workers": []} for q in health.QUEUES})
    for _ in range(5):
        client.get(reverse("health"))
    assert runs == [1]
    assert not ModelVersion.objects.exists()  # no active version is reported, not registered
    monkeypatch.setattr(health, "_cached", None)
    assert client.get(reverse("health"), **HEALTH_AUTH).json()["model"]["ok"] is False
    assert not ModelVersion.objects.exists()


@pytest.mark.django_db
def test_load_balancers_may_probe_with_head(client):
    """Many load balancers probe with HEAD; require_GET answered them 405."""
    response = client.head("/health/live")
    assert response.status_code == 200
    assert client.post("/health/live").status_code == 405  # still read-only


def test_a_head_probe_gets_no_body_for_gunicorn_to_drop_and_warn_of(rf):
    """The test client strips HEAD bodies itself; the view is asked directly, as gunicorn asks it."""
    from melanoma_site.health import live

    response = live(rf.head("/health/live"))
    assert response.status_code == 200 and response.content == b""
    assert live(rf.get("/health/live")).content == b'{"status": "ok"}'
