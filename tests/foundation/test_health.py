"""/health/ reports database, Redis, a live worker per queue and the active model version."""
import pytest
from django.urls import reverse

from melanoma_site import health


@pytest.mark.slow
@pytest.mark.django_db
def test_health_reports_down_workers_with_503(client, use_tiny_model, flush_broker):
    response = client.get(reverse("health"))
    body = response.json()
    assert response.status_code == 503
    assert body["database"]["ok"] is True
    assert body["redis"]["ok"] is True
    assert body["workers"]["inference"]["ok"] is False
    assert body["model"]["ok"] is True and body["model"]["version"]


@pytest.mark.django_db
def test_health_reports_redis_down(client, settings, use_tiny_model):
    settings.CELERY_BROKER_URL = "redis://127.0.0.1:1/0"
    body = client.get(reverse("health")).json()
    assert body["redis"]["ok"] is False and "Connection" in body["redis"]["error"]
    assert body["status"] == "degraded"


@pytest.mark.django_db
def test_health_reports_missing_model_file(client, settings, tmp_path, tiny_model_dir):
    import shutil

    broken = tmp_path / "model"
    shutil.copytree(tiny_model_dir, broken)
    settings.SECONDLOOK_MODEL_DIR = broken
    (broken / "model.keras").unlink()
    body = client.get(reverse("health")).json()
    assert body["model"]["ok"] is False and "missing" in body["model"]["error"]


@pytest.mark.integration
@pytest.mark.django_db(transaction=True)
def test_health_is_ok_with_a_live_worker(client, celery_worker_process):
    response = client.get(reverse("health"))
    body = response.json()
    assert response.status_code == 200, body
    assert body["status"] == "ok"
    assert body["workers"]["inference"]["workers"] and body["workers"]["training"]["workers"]


def test_check_functions_never_raise():
    assert health.check_redis("redis://127.0.0.1:1/0")["ok"] is False


@pytest.mark.django_db
def test_liveness_answers_without_touching_the_database_or_broker(client, django_assert_num_queries, monkeypatch):
    monkeypatch.setattr(health, "health_report", lambda: pytest.fail("the liveness check ran the full report"))
    with django_assert_num_queries(0):
        response = client.get("/health/live")
    assert response.status_code == 200 and response.json() == {"status": "ok"}
    assert "no-cache" in response["Cache-Control"]
