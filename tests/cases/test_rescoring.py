"""Re-scoring with the active version keeps earlier predictions and adds one new pending each."""
import pytest
from django.utils import timezone

from cases.models import LesionImage, Prediction
from classifier.models import ModelVersion, RescoreJob
from classifier.registry import activate
from cases.rescoring import run_rescore, scored_count, start_rescore


def _image(world, name: str, sha: str) -> LesionImage:
    return LesionImage.objects.create(lesion=world.lesion_a, file=f"images/{name}.png", sha256=sha, size_bytes=10,
                                      width=64, height=64, uploaded_by=world.clin_a)


@pytest.mark.django_db(transaction=True)
def test_rescore_all_images_with_the_new_active_version(world, model_version, dispatched, monkeypatch):
    sent_tasks = []
    monkeypatch.setattr("cases.rescoring.enqueue", sent_tasks.append)
    first = _image(world, "a", "a" * 64)
    _image(world, "b", "b" * 64)
    old = Prediction.objects.create(image=first, model_version=model_version, status="done",
                                    melanoma_probability=0.2, malignancy_score=0.3, finished_at=timezone.now())
    new_version = activate(ModelVersion.objects.create(version="v2", status="ready", artifact_path="/x"))

    job = start_rescore(user=world.admin)
    assert sent_tasks == [job.pk] and job.model_version == new_version
    assert run_rescore(job_id=job.pk) == 2
    job.refresh_from_db()
    assert (job.status, job.total, job.queued) == (RescoreJob.Status.DONE, 2, 2)
    assert Prediction.objects.filter(model_version=new_version, status="pending").count() == 2
    assert Prediction.objects.get(pk=old.pk).status == "done"  # history kept
    assert sorted(dispatched) == sorted(Prediction.objects.filter(model_version=new_version).values_list("pk", flat=True))
    assert scored_count(job) == 0

    # A redelivered job, or a second run, adds nothing twice.
    assert run_rescore(job_id=job.pk) == 0
    assert Prediction.objects.filter(model_version=new_version).count() == 2


@pytest.mark.django_db(transaction=True)
def test_rescore_chosen_images_only(world, model_version, dispatched, monkeypatch):
    monkeypatch.setattr("cases.rescoring.enqueue", lambda pk: None)
    _image(world, "a", "a" * 64)
    second = _image(world, "b", "b" * 64)
    job = start_rescore(user=world.admin, image_ids=[second.pk])
    run_rescore(job_id=job.pk)
    assert list(Prediction.objects.filter(model_version=model_version).values_list("image_id", flat=True)) == [second.pk]



def _rescored(world, model_version):
    """A new version's scores of two reviewed images: one disagrees with the review, one agrees;
    an older version's score that disagreed too."""
    new_version = activate(ModelVersion.objects.create(version="v2", status="ready", artifact_path="/x"))
    first, second = _image(world, "a", "a" * 64), _image(world, "b", "b" * 64)
    done = {"status": "done", "melanoma_probability": 0.7, "malignancy_score": 0.7, "finished_at": timezone.now()}
    disagrees = Prediction.objects.create(image=first, model_version=new_version, flagged=True, **done,
                                          review_disagreement="New model disagrees with review: it flags a nevus.")
    agrees = Prediction.objects.create(image=second, model_version=new_version, flagged=False, **done)
    older = Prediction.objects.create(image=first, model_version=model_version, flagged=True, **done,
                                      review_disagreement="older")
    return new_version, disagrees, agrees, older


@pytest.mark.django_db
def test_the_predictions_filter_new_model_vs_review(world, model_version, client):
    from django.urls import reverse

    new_version, disagrees, agrees, older = _rescored(world, model_version)
    client.force_login(world.admin)
    url = reverse("admin:cases_prediction_changelist")
    everything = client.get(url).context["cl"].result_list
    assert {p.pk for p in everything} == {disagrees.pk, agrees.pk, older.pk}
    page = client.get(url, {"disagrees": "yes", "model_version__id__exact": new_version.pk})
    assert [p.pk for p in page.context["cl"].result_list] == [disagrees.pk]
    assert {p.pk for p in client.get(url, {"disagrees": "yes"}).context["cl"].result_list} == {disagrees.pk, older.pk}
    assert "Score disagrees with review" in client.get(url).content.decode()  # the filter's choice


@pytest.mark.django_db
def test_the_jobs_disagreement_column_counts_its_versions_and_links_to_them(world, model_version, client):
    from django.contrib import admin
    from django.test import RequestFactory
    from django.urls import reverse

    from cases.rescoring import disagreement_count

    new_version, disagrees, _, _ = _rescored(world, model_version)
    job = RescoreJob.objects.create(model_version=new_version, status="done")
    chosen = RescoreJob.objects.create(model_version=new_version, status="done", image_ids=[disagrees.image_id + 1])
    request = RequestFactory().get("/")
    request.user = world.admin
    *_, column, _, _ = admin.site.get_model_admin(RescoreJob).get_list_display(request)
    assert disagreement_count(job) == 1 and disagreement_count(chosen) == 0
    link = reverse("admin:cases_prediction_changelist") + f"?disagrees=yes&amp;model_version__id__exact={new_version.pk}"
    assert column(job) == f'<a href="{link}">1</a>' and column(chosen) == "0"
    client.force_login(world.admin)
    listing = client.get(reverse("admin:classifier_rescorejob_changelist")).content.decode()
    assert f'<a href="{link}">1</a>' in listing


@pytest.mark.django_db(transaction=True)
def test_a_rescore_the_broker_refuses_ends_failed_with_the_reason(world, model_version, monkeypatch):
    def refused(job_id):
        raise ConnectionRefusedError("Error 111 connecting to 127.0.0.1:6379")

    monkeypatch.setattr("cases.rescoring.enqueue", refused)
    job = start_rescore(user=world.admin)  # the request that started it does not fail
    job.refresh_from_db()
    assert job.status == RescoreJob.Status.FAILED and job.finished_at is not None
    assert "could not be queued" in job.error and "Error 111" in job.error


@pytest.mark.django_db(transaction=True)
def test_a_rescore_that_breaks_or_runs_out_of_time_ends_failed_not_running(world, model_version, monkeypatch):
    from celery.exceptions import SoftTimeLimitExceeded

    from cases.tasks import rescore_images

    monkeypatch.setattr("cases.rescoring.enqueue", lambda pk: None)
    _image(world, "a", "a" * 64)
    for error, words in ((ValueError("bad image list"), "ValueError: bad image list"),
                         (SoftTimeLimitExceeded(), "Stopped after 30 minutes")):
        job = start_rescore(user=world.admin)

        def broken(*args, error=error, **kwargs):
            raise error

        monkeypatch.setattr("cases.rescoring.scoring.dispatch_prediction", broken)
        with pytest.raises(type(error)):
            rescore_images.apply(args=[job.pk], throw=True)
        job.refresh_from_db()
        assert job.status == RescoreJob.Status.FAILED and words in job.error, job.error
        Prediction.objects.all().delete()


@pytest.mark.django_db(transaction=True)
def test_a_rescore_whose_time_runs_out_while_sending_ends_failed_and_the_prediction_unsent(world, model_version,
                                                                                        monkeypatch):
    """The soft time limit can strike inside a send: it is not a broker failure, so the task's own
    handler still marks the job failed, and the prediction is left unsent for the sweep."""
    from celery.exceptions import SoftTimeLimitExceeded

    from cases.tasks import rescore_images

    monkeypatch.setattr("cases.rescoring.enqueue", lambda pk: None)
    _image(world, "a", "a" * 64)
    job = start_rescore(user=world.admin)

    def out_of_time(*args, **kwargs):
        raise SoftTimeLimitExceeded()

    monkeypatch.setattr("cases.scoring._send", out_of_time)
    with pytest.raises(SoftTimeLimitExceeded):
        rescore_images.apply(args=[job.pk], throw=True)
    job.refresh_from_db()
    assert job.status == RescoreJob.Status.FAILED and "Stopped after 30 minutes" in job.error, job.error
    prediction = Prediction.objects.get(model_version=model_version)
    assert prediction.status == "pending" and prediction.enqueued_at is None


@pytest.mark.django_db(transaction=True)
def test_a_rescore_killed_at_its_hard_time_limit_ends_failed_with_the_reason(world, model_version, monkeypatch):
    """The hard time limit kills the task's process: only the failure hook, which the worker's
    parent calls, can mark the job failed. A job already ended keeps its status and reason."""
    from celery.exceptions import TimeLimitExceeded

    from cases.tasks import rescore_images

    monkeypatch.setattr("cases.rescoring.enqueue", lambda pk: None)
    job = start_rescore(user=world.admin)
    RescoreJob.objects.filter(pk=job.pk).update(status=RescoreJob.Status.RUNNING)
    rescore_images.on_failure(TimeLimitExceeded(1900), "task-id", (job.pk,), {}, None)
    job.refresh_from_db()
    assert job.status == RescoreJob.Status.FAILED and job.finished_at is not None
    assert "hard time limit (31 minutes)" in job.error and "start the re-score again" in job.error, job.error

    done = start_rescore(user=world.admin)
    RescoreJob.objects.filter(pk=done.pk).update(status=RescoreJob.Status.DONE)
    rescore_images.on_failure(TimeLimitExceeded(1900), "task-id", (), {"job_id": done.pk}, None)
    done.refresh_from_db()
    assert done.status == RescoreJob.Status.DONE and done.error == ""


@pytest.mark.django_db
def test_the_sweep_fails_jobs_that_cannot_still_be_queued_or_running(world, model_version, settings):
    """Past the task's hard time limit plus a margin a running job's worker must be dead; a job no
    worker took within the re-score backlog's wait was never going to run. Both end failed with
    the reason; younger jobs and finished ones are left as they are."""
    from datetime import timedelta

    from cases.rescoring import RESCORE_TIME_LIMIT_S, STALE_MARGIN_S, sweep_stale_rescores

    settings.RESCORE_STALE_AFTER_S = 6 * 3600
    now = timezone.now()
    limit = timedelta(seconds=RESCORE_TIME_LIMIT_S + STALE_MARGIN_S)

    def job(status, *, created_ago, started_ago=None):
        made = RescoreJob.objects.create(model_version=model_version, status=status)
        RescoreJob.objects.filter(pk=made.pk).update(
            created_at=now - created_ago, started_at=None if started_ago is None else now - started_ago)
        return made.pk

    killed = job("running", created_ago=timedelta(days=1), started_ago=limit + timedelta(seconds=1))
    working = job("running", created_ago=timedelta(days=1), started_ago=limit - timedelta(seconds=60))
    legacy = job("running", created_ago=limit + timedelta(seconds=1))  # from before started_at was kept
    waiting = job("queued", created_ago=timedelta(hours=5))  # behind a backlog of re-scores
    never_taken = job("queued", created_ago=timedelta(hours=6, seconds=1))
    finished = job("done", created_ago=timedelta(days=2), started_ago=timedelta(days=2))

    assert sweep_stale_rescores(now=now) == sorted([killed, legacy, never_taken])
    jobs = {j.pk: j for j in RescoreJob.objects.all()}
    assert {pk: jobs[pk].status for pk in (working, waiting, finished)} == {
        working: "running", waiting: "queued", finished: "done"}
    assert "still marked running 41 minutes after a worker took it" in jobs[killed].error
    assert jobs[killed].finished_at == now and jobs[legacy].error == jobs[killed].error
    assert "No worker took the job within 6 hours" in jobs[never_taken].error
    assert "-Q inference,rescoring" in jobs[never_taken].error
    assert sweep_stale_rescores(now=now) == []  # a second sweep changes nothing


@pytest.mark.django_db
def test_the_stale_job_sweep_is_a_scheduled_task(world, model_version):
    from datetime import timedelta

    from django.conf import settings as django_settings

    from cases.tasks import sweep_rescore_jobs

    entry = django_settings.CELERY_BEAT_SCHEDULE["fail-stale-rescoring-jobs"]
    assert entry["task"] == sweep_rescore_jobs.name
    stale = RescoreJob.objects.create(model_version=model_version, status="running")
    RescoreJob.objects.filter(pk=stale.pk).update(started_at=timezone.now() - timedelta(days=1))
    assert sweep_rescore_jobs.apply().get() == [stale.pk]


@pytest.mark.django_db(transaction=True)
def test_a_worker_taking_a_job_starts_the_sweeps_clock(world, model_version, dispatched, monkeypatch):
    monkeypatch.setattr("cases.rescoring.enqueue", lambda pk: None)
    job = start_rescore(user=world.admin)
    assert job.started_at is None
    before = timezone.now()
    run_rescore(job_id=job.pk)
    job.refresh_from_db()
    assert job.status == "done" and before <= job.started_at <= job.finished_at


def _earlier_active(version: ModelVersion, root) -> ModelVersion:
    """``version`` as one that was active before, with model files a roll-back can load (a stand-in
    artifact under ``root`` with the fitted image checks), so that a roll-back can return to it."""
    from datetime import timedelta

    from tests.support.gate_helpers import fake_sha, stand_in_artifact

    ModelVersion.objects.filter(pk=version.pk).update(
        activated_at=timezone.now() - timedelta(days=1), sha256=fake_sha(version.version),
        artifact_path=stand_in_artifact(root, version.version))
    version.refresh_from_db()
    return version


def _roll_back(admin, *, from_version: ModelVersion, to: ModelVersion) -> ModelVersion:
    from classifier import lifecycle

    return lifecycle.rollback(user=admin, expected_active_pk=from_version.pk, target_pk=to.pk,
                              reason="re-scoring test")


@pytest.mark.django_db
def test_a_rollback_stops_the_re_scoring_jobs_of_the_version_rolled_back(world, model_version, tmp_path):
    _earlier_active(model_version, tmp_path)
    new_version = activate(ModelVersion.objects.create(version="v2", status="ready", artifact_path="/x"))
    queued = start_rescore(user=world.admin)
    # a re-score of chosen images, which may run beside the one of every image
    running = start_rescore(user=world.admin, image_ids=[1])
    RescoreJob.objects.filter(pk=running.pk).update(status=RescoreJob.Status.RUNNING)
    finished = RescoreJob.objects.create(model_version=new_version, status=RescoreJob.Status.DONE)
    older = RescoreJob.objects.create(model_version=model_version, status=RescoreJob.Status.QUEUED)

    assert _roll_back(world.admin, from_version=new_version, to=model_version) == model_version
    jobs = {job.pk: job for job in RescoreJob.objects.all()}
    for pk in (queued.pk, running.pk):
        assert jobs[pk].status == RescoreJob.Status.FAILED and jobs[pk].finished_at is not None
        assert jobs[pk].error.startswith("Stopped: model version v2 is no longer active"), jobs[pk].error
    assert jobs[finished.pk].status == RescoreJob.Status.DONE and jobs[finished.pk].error == ""
    assert jobs[older.pk].status == RescoreJob.Status.QUEUED  # the version active again keeps its job
    # the task of a stopped job, arriving later, creates nothing
    assert run_rescore(job_id=queued.pk) == 0 and not Prediction.objects.filter(model_version=new_version).exists()


@pytest.mark.django_db
def test_a_re_score_stops_at_its_next_chunk_once_its_version_is_no_longer_active(world, model_version, monkeypatch,
                                                                                tmp_path):
    """The rollback commits while the job's task is sending predictions: the task stops before its
    next chunk, and the job stays failed with the reason (never "done")."""
    _earlier_active(model_version, tmp_path)
    monkeypatch.setattr("cases.rescoring.CHUNK", 1)
    for i in range(3):
        _image(world, f"i{i}", f"{i}" * 64)
    new_version = activate(ModelVersion.objects.create(version="v2", status="ready", artifact_path="/x"))
    job = start_rescore(user=world.admin)
    sent = []

    def dispatch(pk, **kwargs):  # an admin rolls back right after the first image was sent
        sent.append(pk)
        if len(sent) == 1:
            _roll_back(world.admin, from_version=new_version, to=model_version)
        return True

    monkeypatch.setattr("cases.scoring.dispatch_prediction", dispatch)
    assert run_rescore(job_id=job.pk) == 1
    job.refresh_from_db()
    assert job.status == RescoreJob.Status.FAILED and "v2 is no longer active" in job.error
    assert Prediction.objects.filter(model_version=new_version).count() == 1 == len(sent)

    # a job of a version that stopped being active before its task started creates nothing
    late = RescoreJob.objects.create(model_version=new_version)
    assert run_rescore(job_id=late.pk) == 0
    late.refresh_from_db()
    assert late.status == RescoreJob.Status.FAILED and "v2 is no longer active" in late.error


@pytest.mark.django_db
def test_a_re_score_not_scored_after_a_rollback_is_sent_again_when_its_version_returns(world, model_version,
                                                                                        dispatched):
    from cases.scoring import stale_rescore_reason

    image = _image(world, "a", "a" * 64)
    old = ModelVersion.objects.create(version="v0", status="ready", artifact_path="/x")
    Prediction.objects.create(image=image, model_version=old, status="done", melanoma_probability=0.2,
                              malignancy_score=0.3, finished_at=timezone.now())
    unscored = Prediction.objects.create(image=image, model_version=model_version, status="failed",
                                         enqueued_at=timezone.now(), finished_at=timezone.now(),
                                         error=stale_rescore_reason(model_version.version))
    job = RescoreJob.objects.create(model_version=model_version)
    assert run_rescore(job_id=job.pk) == 1
    unscored.refresh_from_db()
    assert (unscored.status, unscored.error, dispatched) == ("pending", "", [unscored.pk])


@pytest.mark.django_db
def test_a_re_score_left_unscored_by_a_rollback_shows_no_note_and_cannot_be_retried(world, model_version, client):
    """It will never run: the pages keep the result in force without a "re-scoring failed" note, and
    Retry (page or API) says why instead of failing it again. A correction's re-score is never stale."""
    from django.core.exceptions import ValidationError

    from cases import services
    from cases.scoring import stale_rescore_reason, stale_rescores

    image = _image(world, "a", "a" * 64)
    done = Prediction.objects.create(image=image, model_version=model_version, status="done",
                                     melanoma_probability=0.2, malignancy_score=0.3, finished_at=timezone.now())
    rolled_back = ModelVersion.objects.create(version="v2", status="ready", artifact_path="/x")
    stale = Prediction.objects.create(image=image, model_version=rolled_back, status="failed",
                                      finished_at=timezone.now(), error=stale_rescore_reason("v2"))
    assert image.current_prediction() == done and image.rescore_in_progress() is None
    with pytest.raises(ValidationError, match="v2 is no longer active"):
        services.retry_prediction(user=world.clin_a, prediction=stale)
    stale.refresh_from_db()
    assert stale.status == "failed"
    client.force_login(world.clin_a)
    page = client.get(f"/cases/{world.case_a.pk}/").content.decode()
    assert "Re-scoring with model v2" not in page and "20.0%" in page
    response = client.post(f"/predictions/{stale.pk}/retry/", follow=True)
    assert "v2 is no longer active" in response.content.decode()
    # a correction made under v2 (its revision 0: v2 had not scored the image yet) is not stale
    Prediction.objects.filter(pk=stale.pk).update(reason="site corrected by Clin_A: wrong site")
    assert not Prediction.objects.filter(pk=stale.pk).filter(stale_rescores()).exists()
