"""A "Re-score all" job runs in chunks: each run of its task creates and sends the predictions of the
next few images, then queues the task again for the chunk after, so the single inference worker
takes the uploads (and beat sweeps) queued meanwhile between two chunks instead of after the whole
archive. Delivered twice, or again after its worker died, a chunk adds nothing twice; a rollback
between chunks stops the job; a job between chunks is not failed as stuck by the sweep."""
from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from cases import prediction_states as states
from cases.models import LesionImage, Prediction
from cases.rescoring import RESCORE_TIME_LIMIT_S, STALE_MARGIN_S, run_rescore, start_rescore, sweep_stale_rescores
from classifier.models import ModelVersion, RescoreJob
from classifier.registry import activate

N_IMAGES = 7
CHUNK = 3  # chunks of 3, 3 and 1 images


def _images(world, n: int = N_IMAGES, *, first: int = 0) -> list[int]:
    return [LesionImage.objects.create(lesion=world.lesion_a, file=f"images/c{i}.png", sha256=f"{i:064x}",
                                       size_bytes=10, width=64, height=64, uploaded_by=world.clin_a).pk
            for i in range(first, first + n)]


@pytest.fixture
def chunks(monkeypatch) -> list[dict]:
    """The job's next-chunk messages, recorded instead of sent (the test delivers them)."""
    sent: list[dict] = []
    monkeypatch.setattr("cases.rescoring.CHUNK", CHUNK)
    monkeypatch.setattr("cases.rescoring.enqueue", lambda job_id: None)
    monkeypatch.setattr("cases.rescoring.enqueue_chunk", lambda job_id, **kwargs: sent.append({"job_id": job_id,
                                                                                                **kwargs}))
    return sent


@pytest.fixture
def sent_scores(monkeypatch) -> list[int]:
    """Scoring tasks sent, each claimed as the real dispatch does (a prediction is sent once)."""
    sent: list[int] = []

    def dispatch(pk, **kwargs):
        if states.claim_dispatch(pk, now=timezone.now()):
            sent.append(pk)
            return True
        return False

    monkeypatch.setattr("cases.scoring.dispatch_prediction", dispatch)
    return sent


def _new_version() -> ModelVersion:
    return activate(ModelVersion.objects.create(version="v2", status="ready", artifact_path="/x"))


def _job(pk: int) -> RescoreJob:
    return RescoreJob.objects.get(pk=pk)


@pytest.mark.django_db(transaction=True)
def test_a_job_runs_chunk_by_chunk_creating_each_prediction_once(world, model_version, chunks, sent_scores):
    ids = _images(world)
    version = _new_version()
    job = start_rescore(user=world.admin)

    assert run_rescore(job_id=job.pk) == CHUNK  # the first chunk: the job's task as start_rescore sends it
    first = _job(job.pk)
    assert (first.status, first.total, first.queued) == ("running", N_IMAGES, CHUNK)
    assert chunks == [{"job_id": job.pk, "after": ids[CHUNK - 1], "done": CHUNK, "until": ids[-1]}]
    assert sorted(Prediction.objects.filter(model_version=version).values_list("image_id", flat=True)) == ids[:CHUNK]
    # an image uploaded while the job runs is scored by its upload, not counted in the job
    [late] = _images(world, 1, first=N_IMAGES)

    handled = [run_rescore(**chunks[0])]
    assert _job(job.pk).queued == 2 * CHUNK and len(chunks) == 2
    handled.append(run_rescore(**chunks[1]))
    assert handled == [CHUNK, N_IMAGES - 2 * CHUNK] and len(chunks) == 2  # the last chunk queues no other

    done = _job(job.pk)
    assert (done.status, done.total, done.queued, done.error) == ("done", N_IMAGES, N_IMAGES, "")
    assert done.started_at <= done.finished_at
    rescored = Prediction.objects.filter(model_version=version)
    assert sorted(rescored.values_list("image_id", flat=True)) == ids and late not in ids
    assert set(rescored.values_list("status", "context_revision")) == {("pending", 0)}
    assert sorted(sent_scores) == sorted(rescored.values_list("pk", flat=True))  # each sent once


@pytest.mark.django_db(transaction=True)
def test_a_chunk_delivered_twice_or_after_its_worker_died_adds_nothing_twice(world, model_version, chunks,
                                                                          sent_scores, monkeypatch):
    ids = _images(world)
    version = _new_version()
    job = start_rescore(user=world.admin)
    run_rescore(job_id=job.pk)
    second = dict(chunks[0])

    # the worker dies while sending the second chunk's second image: nothing after that runs
    class WorkerDied(BaseException):
        pass

    real = sent_scores.copy()

    def dies_on_the_second(pk, **kwargs):
        if pk != Prediction.objects.get(image_id=ids[CHUNK], model_version=version).pk:
            raise WorkerDied()
        states.claim_dispatch(pk, now=timezone.now())
        sent_scores.append(pk)
        return True

    monkeypatch.setattr("cases.scoring.dispatch_prediction", dies_on_the_second)
    with pytest.raises(WorkerDied):
        run_rescore(**second)
    assert _job(job.pk).queued == CHUNK and len(chunks) == 1  # its progress and next chunk: not saved, not sent
    assert Prediction.objects.filter(model_version=version).count() == CHUNK + 2

    def dispatch(pk, **kwargs):  # the worker is back
        if states.claim_dispatch(pk, now=timezone.now()):
            sent_scores.append(pk)
        return True

    monkeypatch.setattr("cases.scoring.dispatch_prediction", dispatch)

    # the message comes back (acks_late): the chunk runs again, and adds only what it had not
    assert run_rescore(**second) == CHUNK
    assert _job(job.pk).queued == 2 * CHUNK and len(chunks) == 2
    # delivered once more, now after it finished: nothing
    assert run_rescore(**second) == 0 and len(chunks) == 2
    # the first chunk delivered again: nothing either
    assert run_rescore(job_id=job.pk) == 0 and len(chunks) == 2

    assert run_rescore(**chunks[1]) == 1
    assert run_rescore(**chunks[1]) == 0  # a finished job's last chunk again
    done = _job(job.pk)
    assert (done.status, done.total, done.queued) == ("done", N_IMAGES, N_IMAGES)
    rescored = Prediction.objects.filter(model_version=version)
    assert sorted(rescored.values_list("image_id", flat=True)) == ids  # one each
    assert sorted(sent_scores) == sorted(rescored.values_list("pk", flat=True)) and real == sent_scores[:CHUNK]


@pytest.mark.django_db(transaction=True)
def test_a_rollback_between_chunks_stops_the_job(world, model_version, chunks, sent_scores, tmp_path):
    from classifier import lifecycle
    from tests.support.gate_helpers import fake_sha, stand_in_artifact

    # active before, with model files a roll-back can load and the image checks it asks for
    ModelVersion.objects.filter(pk=model_version.pk).update(
        activated_at=timezone.now() - timedelta(days=1), sha256=fake_sha(model_version.version),
        artifact_path=stand_in_artifact(tmp_path, model_version.version))
    _images(world)
    version = _new_version()
    job = start_rescore(user=world.admin)
    run_rescore(job_id=job.pk)
    lifecycle.rollback(user=world.admin, expected_active_pk=version.pk, target_pk=model_version.pk,
                       reason="between chunks")

    assert run_rescore(**chunks[0]) == 0  # the next chunk arrives: it creates nothing, queues nothing
    stopped = _job(job.pk)
    assert stopped.status == "failed" and stopped.error.startswith("Stopped: model version v2 is no longer active")
    assert stopped.queued == CHUNK and stopped.finished_at is not None and len(chunks) == 1
    assert Prediction.objects.filter(model_version=version).count() == CHUNK


@pytest.mark.django_db(transaction=True)
def test_a_next_chunk_the_broker_refuses_ends_the_job_failed_with_the_reason(world, model_version, sent_scores,
                                                                            monkeypatch):
    def refused(job_id, **kwargs):
        raise ConnectionRefusedError("Error 111 connecting to 127.0.0.1:6379")

    monkeypatch.setattr("cases.rescoring.CHUNK", CHUNK)
    monkeypatch.setattr("cases.rescoring.enqueue", lambda job_id: None)
    monkeypatch.setattr("cases.rescoring.enqueue_chunk", refused)
    _images(world)
    job = start_rescore(user=world.admin)
    assert run_rescore(job_id=job.pk) == CHUNK
    failed = _job(job.pk)
    assert failed.status == "failed" and failed.finished_at is not None and failed.queued == CHUNK
    assert "next chunk could not be queued after 3 images" in failed.error and "Error 111" in failed.error
    assert Prediction.objects.filter(model_version=model_version).count() == CHUNK == len(sent_scores)
    assert "start the re-score again" in failed.error


@pytest.mark.django_db(transaction=True)
def test_the_task_runs_the_chunk_its_message_names(world, model_version, chunks, sent_scores):
    """The message of a next chunk carries where the job is; the task (eager) runs that chunk."""
    from cases.tasks import rescore_images

    _images(world)
    job = start_rescore(user=world.admin)
    assert rescore_images.apply(args=[job.pk], throw=True).get() == CHUNK
    message = chunks[0]
    args = [message["job_id"], message["after"], message["done"], message["until"]]
    assert rescore_images.apply(args=args, throw=True).get() == CHUNK
    assert rescore_images.apply(args=args, throw=True).get() == 0  # redelivered
    assert _job(job.pk).queued == 2 * CHUNK


@pytest.mark.django_db
def test_the_sweep_leaves_a_job_waiting_between_chunks_and_fails_one_whose_next_chunk_never_came(
        world, model_version, settings):
    """Between chunks the job's next chunk waits in the rescoring queue behind the scores its last
    chunk sent and every upload, like a queued job: past the running limit it is not stuck; it is
    when no chunk was taken for as long as a queued job may wait. A job in its first chunk (nothing
    queued yet) is still stuck past the running limit."""
    settings.RESCORE_STALE_AFTER_S = 6 * 3600
    now = timezone.now()
    running_limit = timedelta(seconds=RESCORE_TIME_LIMIT_S + STALE_MARGIN_S)

    def job(*, queued, last_chunk_ago):
        made = RescoreJob.objects.create(model_version=model_version, status="running", total=1000, queued=queued)
        RescoreJob.objects.filter(pk=made.pk).update(created_at=now - timedelta(days=1),
                                                     started_at=now - last_chunk_ago)
        return made.pk

    waiting = job(queued=400, last_chunk_ago=running_limit + timedelta(hours=1))
    lost = job(queued=400, last_chunk_ago=timedelta(hours=6, seconds=1))
    first_chunk_killed = job(queued=0, last_chunk_ago=running_limit + timedelta(seconds=1))

    assert sweep_stale_rescores(now=now) == sorted([lost, first_chunk_killed])
    jobs = {j.pk: j for j in RescoreJob.objects.all()}
    assert jobs[waiting].status == "running" and jobs[waiting].error == ""
    assert jobs[lost].status == "failed" and jobs[lost].finished_at == now
    assert "stopped between chunks: no worker took its next chunk within 6 hours" in jobs[lost].error
    assert "start the re-score again" in jobs[lost].error
    assert "still marked running 41 minutes after a worker took it" in jobs[first_chunk_killed].error


@pytest.mark.integration
@pytest.mark.django_db(transaction=True)
def test_the_next_chunk_goes_to_the_rescoring_queue_behind_the_scores_it_sent(world, model_version, flush_broker,
                                                                             monkeypatch):
    """Through the real broker (no worker): a chunk's scoring tasks, then its next chunk, on the
    rescoring queue that a worker takes only when no upload waits."""
    import base64
    import json

    monkeypatch.setattr("cases.rescoring.CHUNK", CHUNK)
    monkeypatch.setattr("cases.rescoring.enqueue", lambda job_id: None)
    ids = _images(world)
    job = start_rescore(user=world.admin)
    assert run_rescore(job_id=job.pk) == CHUNK

    def task(raw):
        message = json.loads(raw)
        return message["headers"]["task"], json.loads(base64.b64decode(message["body"]))[0]

    oldest_first = [task(raw) for raw in reversed(flush_broker.lrange("rescoring", 0, -1))]
    scores = [pk for name, (pk,) in oldest_first[:CHUNK] if name == "cases.tasks.score_image"]
    assert sorted(scores) == sorted(Prediction.objects.filter(model_version=model_version,
                                                              image_id__in=ids).values_list("pk", flat=True))
    assert oldest_first[CHUNK:] == [("cases.tasks.rescore_images", [job.pk, ids[CHUNK - 1], CHUNK, ids[-1]])]
    assert flush_broker.llen("inference") == 0
