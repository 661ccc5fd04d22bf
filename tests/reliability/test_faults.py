"""Faults survived with real processes (Celery worker, beat, Redis), nothing lost, nothing doubled.

Complements tests/cases/test_integration_scoring.py (which kills a worker inside the test-only
post-inference delay, and simulates Redis down by pointing the web side at a dead port and then
sends the sweep by hand). Here:
- the worker is SIGKILLed while the task is really loading the model / predicting (no delay hook),
  and the worker itself runs the recovery sweep;
- the real Redis server is stopped and started again, and beat + the worker recover the upload
  with no manual step;
- the active model's file is missing or corrupt: clear errors on the case page and /health/, the
  rest of the app keeps working, and Retry succeeds once the file is fixed.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from audit.models import AuditEvent
from cases.models import LesionImage, Prediction
from tests.support.case_helpers import World, stored_files
from classifier.registry import activate, register_artifact
from tests.support.imagegen import jpeg, upload
from tests.support.health import HEALTH_AUTH

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.django_db(transaction=True)]
ROOT = Path(__file__).resolve().parent.parent.parent


def wait_for(predicate, timeout: float = 120.0, what: str = "condition", logs: tuple[Path, ...] = (),
             interval: float = 0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    tails = "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}" for p in logs if p.exists())
    raise AssertionError(f"timed out after {timeout}s waiting for {what}\n{tails}")


def status_of(prediction_id: int) -> str:
    return Prediction.objects.values_list("status", flat=True).get(pk=prediction_id)


def register_active(model_dir: Path):
    version = activate(register_artifact(model_dir))
    version.melanoma_threshold = version.malignancy_threshold = 0.0  # every image is flagged
    version.save()
    return version


def upload_one(client, people, name: str, seed: int) -> Prediction:
    client.force_login(people.clin_a)
    response = client.post(f"/lesions/{people.lesion_a.pk}/",
                           {"images": [upload(name, jpeg(size=(96, 96), seed=seed))], "kind": "dermoscopic"})
    assert response.status_code == 302, response.content[:500]
    return Prediction.objects.get(image__lesion=people.lesion_a, image__original_name=name)


def assert_scored_exactly_once(prediction_id: int, media_root: Path, attempts: int) -> Prediction:
    prediction = Prediction.objects.get(pk=prediction_id)
    assert prediction.status == "done", prediction.error
    assert prediction.attempts == attempts
    assert Prediction.objects.filter(image=prediction.image).count() == 1
    assert Prediction.objects.filter(image=prediction.image, model_version=prediction.model_version,
                                     status="done").count() == 1
    assert AuditEvent.objects.filter(action="score", object_id=str(prediction.pk)).count() == 1
    assert [f for f in stored_files(media_root) if f.startswith("heatmaps/")] == [prediction.heatmap.name]
    return prediction


# --- worker SIGKILLed during model load / inference ----------------------------------------------

def test_worker_sigkilled_while_really_scoring_then_its_own_sweep_rescores_exactly_once(
        client, use_tiny_model, media_root, celery_worker_process):
    from cases.tasks import sweep_pending

    register_active(use_tiny_model)
    people = World()
    worker = celery_worker_process
    assert scoring_delay_unset(worker.env)
    prediction = upload_one(client, people, "kill.jpg", seed=1)
    # The fresh worker's pool child now imports TensorFlow, loads the model and predicts (seconds):
    # kill it the moment the prediction is claimed, i.e. genuinely mid-inference.
    wait_for(lambda: status_of(prediction.pk) == "running", what="running", logs=(worker.log_path,), interval=0.02)
    children = child_pids(worker.process.pid)
    assert children, "the pool child that runs the task must exist"
    worker.kill()
    wait_for(lambda: not any(pid_alive(pid) for pid in children), timeout=10, what="pool child gone")
    prediction.refresh_from_db()
    assert prediction.status == "running" and prediction.finished_at is None, "the kill came after the result"
    assert prediction.melanoma_probability is None and not prediction.heatmap
    assert [f for f in stored_files(media_root) if f.startswith("heatmaps/")] == []

    worker.start()
    # What beat sends every SWEEP_INTERVAL_SECONDS, run by the restarted worker itself; 0 s instead of
    # the hard time limit so the test need not wait 3 minutes for the row to count as orphaned.
    sweep_pending.delay(running_stale_after_s=0)
    wait_for(lambda: status_of(prediction.pk) in ("done", "failed"), what="re-scoring", logs=(worker.log_path,))
    assert_scored_exactly_once(prediction.pk, media_root, attempts=2)
    # A second sweep finds nothing to do and does not score the image again.
    sweep_pending.delay(running_stale_after_s=0)
    time.sleep(2.0)
    assert_scored_exactly_once(prediction.pk, media_root, attempts=2)


def scoring_delay_unset(env: dict) -> bool:
    from cases.scoring import FAULT_DELAY_ENV

    return not env.get(FAULT_DELAY_ENV)


def child_pids(pid: int) -> list[int]:
    import psutil

    return [p.pid for p in psutil.Process(pid).children(recursive=True)]


def pid_alive(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


# --- the Redis server really down at upload time -------------------------------------------------

class Proc:
    """A child process with its log, stopped by process group."""

    def __init__(self, name: str, command: list[str], env: dict, log_dir: Path) -> None:
        self.log_path = log_dir / f"{name}.log"
        self._log = open(self.log_path, "ab")
        self.process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=self._log, stderr=subprocess.STDOUT,
                                        start_new_session=True)

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self._log.close()


CELERY = [sys.executable, "-m", "celery", "-A", "melanoma_site"]


def start_worker(env: dict, log_dir: Path, name: str) -> Proc:
    """A real inference worker (one process) named ``name``."""
    return Proc("worker", CELERY + ["worker", "-Q", "inference", "-n", f"{name}-{os.getpid()}@%h", "--concurrency",
                                    "1", "--loglevel", "INFO", "--without-gossip", "--without-mingle"], env, log_dir)


def start_beat(env: dict, log_dir: Path) -> Proc:
    return Proc("beat", CELERY + ["beat", "--loglevel", "INFO", "--schedule", str(log_dir / "beat-schedule")],
                env, log_dir)


def test_redis_server_down_at_upload_then_beat_and_worker_recover_with_no_manual_step(
        client, use_tiny_model, media_root, tmp_path, monkeypatch, child_env_for_tests):
    child_env = child_env_for_tests
    from melanoma_site.celery import app
    from melanoma_site.embedded_redis import free_port, start_embedded_redis

    register_active(use_tiny_model)
    people = World()
    port = free_port()
    redis_process, url = start_embedded_redis(tmp_path / "redis", port=port)
    env = child_env(REDIS_URL=url, SWEEP_INTERVAL_SECONDS="1")
    worker, beat = start_worker(env, tmp_path, "redis-down"), start_beat(env, tmp_path)
    logs = (worker.log_path, beat.log_path, tmp_path / "redis" / "redis.log")
    monkeypatch.setattr(app.conf, "broker_url", url)  # the web side (this process) uses this Redis
    try:
        wait_for(lambda: b" ready." in worker.log_path.read_bytes(), what="worker ready", logs=logs)
        wait_for(lambda: b"Sending due task" in beat.log_path.read_bytes(), what="beat running", logs=logs)

        redis_process.terminate()
        redis_process.wait(timeout=10)
        prediction = upload_one(client, people, "offline.jpg", seed=2)
        prediction.refresh_from_db()
        assert prediction.status == "pending" and prediction.enqueued_at is None
        assert LesionImage.objects.filter(pk=prediction.image_id).exists()
        assert len([f for f in stored_files(media_root) if f.startswith("lesion-images/")]) == 1
        page = client.get(f"/cases/{people.case_a.pk}/").content.decode()
        assert "Waiting to be scored (queued when the task service is reachable)" in page
        time.sleep(3.0)  # beat keeps trying; nothing can be sent while Redis is down
        assert status_of(prediction.pk) == "pending"
        assert worker.process.poll() is None and beat.process.poll() is None, "worker and beat survive the outage"

        redis_process, _ = start_embedded_redis(tmp_path / "redis", port=port)
        # No manual step: beat sends sweep_pending, the worker sends and runs score_image.
        wait_for(lambda: status_of(prediction.pk) in ("done", "failed"), timeout=180, what="recovery", logs=logs)
        assert_scored_exactly_once(prediction.pk, media_root, attempts=1)
        time.sleep(2.5)  # more sweeps run; none may score it again
        assert_scored_exactly_once(prediction.pk, media_root, attempts=1)
    finally:
        beat.stop()
        worker.stop()
        redis_process.terminate()
        redis_process.wait(timeout=10)


def test_a_hung_redis_never_holds_an_upload_and_its_image_is_scored_once_redis_resumes(
        client, use_tiny_model, media_root, tmp_path, monkeypatch, child_env_for_tests):
    """Redis paused (SIGSTOP, as when its host stalls): the upload returns in under 3 s, with its
    image stored and pending; after SIGCONT, beat and the worker score it with no manual step."""
    child_env = child_env_for_tests
    from melanoma_site.celery import app
    from melanoma_site.embedded_redis import start_embedded_redis

    register_active(use_tiny_model)
    people = World()
    redis_process, url = start_embedded_redis(tmp_path / "redis")
    env = child_env(REDIS_URL=url, SWEEP_INTERVAL_SECONDS="1")
    worker, beat = start_worker(env, tmp_path, "redis-hung"), start_beat(env, tmp_path)
    logs = (worker.log_path, beat.log_path, tmp_path / "redis" / "redis.log")
    monkeypatch.setattr(app.conf, "broker_url", url)
    try:
        wait_for(lambda: b" ready." in worker.log_path.read_bytes(), what="worker ready", logs=logs)
        os.kill(redis_process.pid, signal.SIGSTOP)
        started = time.monotonic()
        prediction = upload_one(client, people, "hung.jpg", seed=3)
        took = time.monotonic() - started
        assert took < 3.0, f"the upload took {took:.1f} s with Redis hung"
        prediction.refresh_from_db()
        assert prediction.status == "pending" and prediction.enqueued_at is None
        assert client.get("/accounts/login/").status_code in (200, 302)  # other pages still answer
        os.kill(redis_process.pid, signal.SIGCONT)
        wait_for(lambda: status_of(prediction.pk) in ("done", "failed"), timeout=120, what="scored after resume",
                 logs=logs)
        assert_scored_exactly_once(prediction.pk, media_root, attempts=1)
    finally:
        os.kill(redis_process.pid, signal.SIGCONT)
        beat.stop()
        worker.stop()
        redis_process.terminate()
        redis_process.wait(timeout=10)


def test_a_worker_sharing_no_disk_with_the_web_host_scores_with_the_activated_version(
        client, use_tiny_model, tmp_path, monkeypatch, settings, s3_endpoint, child_env_for_tests, flush_broker):
    """Web side (this process) and worker in separate directories, with S3-compatible storage
    (moto) as the only thing they share besides the database and the broker: the version
    activated here is published by content hash, fetched, checked and used by the worker."""
    import boto3

    creds = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
    for key, value in creds.items():
        monkeypatch.setenv(key, value)
    boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1").create_bucket(Bucket="models-test")
    settings.STORAGES = {**settings.STORAGES, "default": {
        "BACKEND": "storages.backends.s3.S3Storage",
        "OPTIONS": {"bucket_name": "models-test", "endpoint_url": s3_endpoint, "region_name": "us-east-1",
                    "default_acl": "private", "file_overwrite": False, "location": "media"}}}
    settings.SECONDLOOK_MODELS_IN_STORAGE = True
    web_dir = tmp_path / "web-host" / "models" / "tiny"
    shutil.copytree(use_tiny_model, web_dir)
    version = register_active(web_dir)
    keys = [o["Key"] for o in boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
            .list_objects_v2(Bucket="models-test")["Contents"]]
    assert f"media/models/{version.sha256}/model.keras" in keys
    shutil.rmtree(tmp_path / "web-host")  # nothing on the web host's disk reaches the worker
    people = World()
    worker_var = tmp_path / "worker-host" / "var"
    env = child_env_for_tests(**creds, S3_BUCKET="models-test", S3_ENDPOINT_URL=s3_endpoint,
                              SECONDLOOK_VAR_DIR=str(worker_var), MEDIA_ROOT=str(tmp_path / "worker-host" / "media"))
    worker = start_worker(env, tmp_path, "no-shared-disk")
    try:
        wait_for(lambda: b" ready." in worker.log_path.read_bytes(), what="worker ready", logs=(worker.log_path,))
        prediction = upload_one(client, people, "remote.jpg", seed=5)
        wait_for(lambda: status_of(prediction.pk) in ("done", "failed"), what="scored", logs=(worker.log_path,))
        prediction.refresh_from_db()
        assert prediction.status == "done", prediction.error
        assert prediction.model_version == version
        assert (worker_var / "model-store" / version.sha256 / "model.keras").is_file()
    finally:
        worker.stop()


# --- the model file missing or corrupt -----------------------------------------------------------

@pytest.mark.parametrize("damage", ["missing", "corrupt"])
def test_broken_model_file_fails_clearly_keeps_the_app_working_and_retry_succeeds_once_fixed(
        client, use_tiny_model, media_root, tmp_path, celery_worker_process, damage, settings):
    model_dir = tmp_path / "model-copy"
    shutil.copytree(use_tiny_model, model_dir)
    version = register_active(model_dir)
    # registering the bundled (tiny) model elsewhere keeps a verified copy of these very bytes on
    # this host, which the worker would rightly load instead: here the damaged file must be all it has
    shutil.rmtree(Path(settings.VAR_DIR) / "model-store" / version.sha256, ignore_errors=True)
    people = World()
    model_file = model_dir / "model.keras"
    good = model_file.read_bytes()
    if damage == "missing":
        model_file.unlink()
    else:
        model_file.write_bytes(b"this is not a keras archive" * 100)
    expected = "missing" if damage == "missing" else "corrupt"
    logs = (celery_worker_process.log_path,)

    prediction = upload_one(client, people, "first.jpg", seed=3)
    wait_for(lambda: status_of(prediction.pk) in ("done", "failed"), what="failure", logs=logs)
    prediction.refresh_from_db()
    assert prediction.status == "failed"
    assert prediction.error.startswith("Model could not be loaded") and expected in prediction.error, prediction.error

    # The clinician sees why, with a Retry button, on the case page and in the polling JSON.
    page = client.get(f"/cases/{people.case_a.pk}/")
    html = page.content.decode()
    assert page.status_code == 200
    assert "Scoring failed." in html and "Model could not be loaded" in html and expected in html
    assert str(model_file.parent) not in html  # clinicians are not shown server paths
    assert f"/predictions/{prediction.pk}/retry/" in html
    status = client.get(f"/cases/{people.case_a.pk}/status.json").json()
    assert [p["status"] for p in status["predictions"]] == ["failed"]
    # /health/ says the model is broken and why.
    health = client.get("/health/", **HEALTH_AUTH)
    assert health.status_code == 503
    model = health.json()["model"]
    assert model["ok"] is False and expected in model["error"] and str(model_file) in model["error"]

    # The rest of the app keeps working: pages render and uploads are accepted.
    for path in ("/", "/patients/", f"/patients/{people.patient_a.pk}/", f"/lesions/{people.lesion_a.pk}/",
                 f"/images/{prediction.image_id}/"):
        assert client.get(path).status_code == 200, path
    second = upload_one(client, people, "second.jpg", seed=4)
    wait_for(lambda: status_of(second.pk) in ("done", "failed"), what="second failure", logs=logs)
    assert status_of(second.pk) == "failed"
    assert LesionImage.objects.filter(lesion=people.lesion_a).count() == 2

    # Fixed: health recovers and Retry (the button's POST) scores both images.
    model_file.write_bytes(good)
    assert client.get("/health/", **HEALTH_AUTH).json()["model"]["ok"] is True
    for p in (prediction, second):
        response = client.post(f"/predictions/{p.pk}/retry/")
        assert response.status_code == 302
    for p in (prediction, second):
        wait_for(lambda: status_of(p.pk) in ("done", "failed"), what="retry", logs=logs)
    for p in (prediction, second):
        p.refresh_from_db()
        # a retry counts its attempts afresh (the earlier failure is in the audit trail)
        assert p.status == "done" and p.error == "" and p.attempts == 1, p.error
        assert Prediction.objects.filter(image=p.image).count() == 1
    assert AuditEvent.objects.filter(action="retry").count() == 2
    html = client.get(f"/cases/{people.case_a.pk}/").content.decode()
    assert "Scoring failed." not in html and "Melanoma probability" in html
