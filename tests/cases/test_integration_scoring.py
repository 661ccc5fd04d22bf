"""End to end through a real Celery worker and Redis, with the tiny trained model.

Covers: upload → scored with the model's version → flagged case in the queue; a worker SIGKILLed
mid-inference; Redis down at upload time.
"""
from __future__ import annotations

import time

import pytest

from cases import queue, scoring
from cases.models import LesionImage, Prediction
from tests.support.case_helpers import stored_files
from tests.support.imagegen import jpeg, upload

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


def wait_for(predicate, timeout: float = 90.0, what: str = "condition", worker=None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.25)
    log = worker.log_path.read_text()[-4000:] if worker else ""
    raise AssertionError(f"timed out waiting for {what}\n{log}")


def upload_one(client, people, name="lesion.jpg", seed=0):
    client.force_login(people.clin_a)
    response = client.post(f"/lesions/{people.lesion_a.pk}/", {"images": [upload(name, jpeg(size=(96, 96), seed=seed))],
                                                              "kind": "dermoscopic"})
    assert response.status_code == 302, response.content[:500]
    return Prediction.objects.get(image__lesion=people.lesion_a, image__original_name=name)


def status_of(prediction: Prediction) -> str:
    return Prediction.objects.values_list("status", flat=True).get(pk=prediction.pk)


def test_upload_is_scored_by_worker_and_flagged_case_reaches_queue(client, people, tiny_version, media_root,
                                                                    celery_worker_process):
    prediction = upload_one(client, people)
    wait_for(lambda: status_of(prediction) in ("done", "failed"), what="scoring", worker=celery_worker_process)
    prediction.refresh_from_db()
    assert prediction.status == "done", prediction.error
    assert prediction.model_version == tiny_version and prediction.attempts == 1
    assert set(prediction.class_probabilities) == {
        "actinic keratosis", "basal cell carcinoma", "dermatofibroma", "melanoma", "nevus",
        "pigmented benign keratosis", "seborrheic keratosis", "squamous cell carcinoma", "vascular lesion"}
    assert sum(prediction.class_probabilities.values()) == pytest.approx(1.0, abs=1e-3)
    assert prediction.flagged and prediction.flag_reasons
    assert prediction.heatmap.name in stored_files(media_root)
    assert list(queue.review_queue()) == [people.case_a]
    # The dermatologist sees it in the queue and the heatmap streams.
    client.force_login(people.derm)
    assert f"/cases/{people.case_a.pk}/" in client.get("/queue/").content.decode()
    heatmap = client.get(f"/predictions/{prediction.pk}/heatmap/")
    assert heatmap.status_code == 200 and b"".join(heatmap.streaming_content).startswith(b"\x89PNG")
    page = client.get(f"/images/{prediction.image_id}/").content.decode()
    assert tiny_version.version in page and "Show heatmap" in page
    # the worker gave the model the patient's age, sex and the lesion's site, and the page says so
    patient = people.lesion_a.case.patient
    assert prediction.clinical_context == {"age": prediction.image.uploaded_at.year - patient.birth_year,
                                           "sex": patient.sex, "site": people.lesion_a.anatomic_site}
    assert "Scores include the clinical context: age" in page


def test_worker_killed_mid_inference_scores_exactly_once_after_restart(client, people, media_root, monkeypatch,
                                                                       request):
    monkeypatch.setenv(scoring.FAULT_DELAY_ENV, "60")
    worker = request.getfixturevalue("celery_worker_process")
    prediction = upload_one(client, people)
    wait_for(lambda: status_of(prediction) == "running", what="running", worker=worker)
    time.sleep(1.0)
    worker.kill()
    assert status_of(prediction) == "running"
    worker.env.pop(scoring.FAULT_DELAY_ENV)
    started = time.monotonic()
    worker.start()
    # No sweep by hand and no beat: the replacement re-queues what its dead namesake was scoring.
    wait_for(lambda: status_of(prediction) in ("done", "failed"), what="rescoring", worker=worker, timeout=30)
    assert time.monotonic() - started < 30
    prediction.refresh_from_db()
    assert prediction.status == "done" and prediction.attempts == 2, prediction.error
    assert Prediction.objects.filter(image=prediction.image).count() == 1
    assert len([f for f in stored_files(media_root) if f.startswith("heatmaps/")]) == 1


def test_redis_down_at_upload_then_sweep_enqueues_and_it_is_scored(client, people, celery_worker_process):
    from cases.tasks import sweep_pending
    from melanoma_site.celery import app
    from melanoma_site.embedded_redis import free_port

    working = app.conf.broker_url
    app.conf.broker_url = f"redis://127.0.0.1:{free_port()}/0"
    try:
        prediction = upload_one(client, people)
    finally:
        app.conf.broker_url = working
    assert LesionImage.objects.filter(pk=prediction.image_id).exists()
    prediction.refresh_from_db()
    assert prediction.status == "pending" and prediction.enqueued_at is None
    time.sleep(1.0)
    assert status_of(prediction) == "pending"  # nothing was sent
    sweep_pending.delay()  # what beat does every 30 s, run by the real worker
    wait_for(lambda: status_of(prediction) in ("done", "failed"), what="sweep + scoring", worker=celery_worker_process)
    prediction.refresh_from_db()
    assert prediction.status == "done" and prediction.enqueued_at is not None, prediction.error
