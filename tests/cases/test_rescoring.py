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

