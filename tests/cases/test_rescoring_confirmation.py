""""Re-score all images" goes through a confirmation page that says how many images it queues and
with which version; a second request while that version's job is queued or running (a double
click, a second admin) is refused in words and queues nothing, as is one whose page named a
version no longer active."""
from __future__ import annotations

import threading

import pytest
from django.contrib.auth.models import Permission
from django.db import connections
from django.utils import timezone

from audit.models import AuditEvent
from cases.models import LesionImage, Prediction
from cases.rescoring import RescorePreview, RescoreRefused, rescore_preview, start_rescore
from cases.scoring import stale_rescore_reason
from classifier.models import ModelVersion, RescoreJob
from classifier.registry import activate
from tests.support.case_helpers import make_user

CONFIRM = "/admin/classifier/modelversion/rescore/confirm/"
RESCORE = "/admin/classifier/modelversion/rescore/"


@pytest.fixture(autouse=True)
def no_broker(monkeypatch) -> list[int]:
    sent: list[int] = []
    monkeypatch.setattr("cases.rescoring.enqueue", sent.append)
    return sent


def _images(world, n: int) -> list[LesionImage]:
    return [LesionImage.objects.create(lesion=world.lesion_a, file=f"images/r{i}.png", sha256=f"{i:064x}",
                                       size_bytes=10, width=64, height=64, uploaded_by=world.clin_a)
            for i in range(n)]


# --- the service ---------------------------------------------------------------------------------------

@pytest.mark.django_db
def test_a_second_re_score_of_every_image_is_refused_while_the_first_is_queued_or_running(
        world, model_version, no_broker, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        first = start_rescore(user=world.admin)
    with django_capture_on_commit_callbacks(execute=True), pytest.raises(RescoreRefused, match=r"A re-scoring job with unit-test-v1 is already queued \(started .*\); "
                                             r"nothing was queued"):
        start_rescore(user=world.admin)
    RescoreJob.objects.filter(pk=first.pk).update(status=RescoreJob.Status.RUNNING)
    with pytest.raises(RescoreRefused, match="is already running"):
        start_rescore(user=world.admin)
    assert list(RescoreJob.objects.values_list("pk", flat=True)) == [first.pk] and no_broker == [first.pk]
    assert AuditEvent.objects.filter(action="rescore").count() == 1

    RescoreJob.objects.filter(pk=first.pk).update(status=RescoreJob.Status.DONE)  # once it has ended: allowed
    again = start_rescore(user=world.admin)
    assert again.pk != first.pk and again.status == RescoreJob.Status.QUEUED


@pytest.mark.django_db
def test_a_job_of_another_version_or_a_re_score_of_chosen_images_does_not_block(world, model_version):
    other = ModelVersion.objects.create(version="v0", status="ready")
    RescoreJob.objects.create(model_version=other, status=RescoreJob.Status.RUNNING)
    chosen = start_rescore(user=world.admin, image_ids=[3, 1])
    assert chosen.image_ids == [1, 3]
    with pytest.raises(RescoreRefused):  # a re-score of every image waits for the chosen images' job too
        start_rescore(user=world.admin)


@pytest.mark.django_db
def test_a_page_that_named_another_version_queues_nothing(world, model_version):
    newer = activate(ModelVersion.objects.create(version="v2", status="ready"))  # after the page was shown
    with pytest.raises(RescoreRefused, match="The active version is now v2, not unit-test-v1.*Nothing was queued"):
        start_rescore(user=world.admin, expected_version_pk=model_version.pk)
    assert not RescoreJob.objects.exists()
    assert start_rescore(user=world.admin, expected_version_pk=newer.pk).model_version == newer


@pytest.mark.django_db(transaction=True)
def test_two_requests_at_the_same_moment_start_one_job(world, model_version):
    """The check and the insert run with the version's row locked: the second request waits for the
    first to commit, then finds its job."""
    barrier, outcomes = threading.Barrier(2), []

    def click() -> None:
        try:
            barrier.wait(timeout=10)
            outcomes.append(start_rescore(user=None).pk)
        except RescoreRefused as exc:
            outcomes.append(str(exc))
        finally:
            connections.close_all()

    threads = [threading.Thread(target=click) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    started = [outcome for outcome in outcomes if isinstance(outcome, int)]
    refused = [outcome for outcome in outcomes if isinstance(outcome, str)]
    assert started == [RescoreJob.objects.get().pk]
    assert len(refused) == 1 and "is already queued" in refused[0], outcomes


@pytest.mark.django_db
def test_the_preview_counts_the_images_a_re_score_queues(world, model_version):
    first, second, third = _images(world, 3)
    Prediction.objects.create(image=first, model_version=model_version, status="done", melanoma_probability=0.2,
                              malignancy_score=0.3, finished_at=timezone.now())  # skipped by the job
    Prediction.objects.create(image=second, model_version=model_version, status="failed",  # sent again
                              error=stale_rescore_reason(model_version.version))
    Prediction.objects.create(image=third, model_version=model_version, context_revision=1)  # a correction's score
    assert rescore_preview(version=model_version) == RescorePreview(images=3, to_queue=2)


# --- the admin -----------------------------------------------------------------------------------------

@pytest.mark.django_db
def test_the_button_leads_to_a_confirmation_page_naming_the_version_and_the_images(client, world, model_version):
    _images(world, 3)
    client.force_login(world.admin)
    listing = client.get("/admin/classifier/modelversion/").content.decode()
    assert f'href="{CONFIRM}"' in listing
    page = client.get(CONFIRM).content.decode()
    assert "unit-test-v1" in page and "<strong>3 of the 3 images</strong>" in page
    assert f'action="{RESCORE}"' in page and f'name="expected_active" value="{model_version.pk}"' in page
    assert not RescoreJob.objects.exists()  # looking changes nothing


@pytest.mark.django_db
def test_staff_who_are_not_superusers_see_no_archive_counts(client, world, model_version):
    """The archive holds every clinic's images: how many is for superusers (as the jobs' counts)."""
    _images(world, 2)
    staff = make_user("registry-staff")
    staff.is_staff = True
    staff.save()
    staff.user_permissions.add(*Permission.objects.filter(codename__in=["view_modelversion", "change_modelversion"]))
    client.force_login(staff)
    page = client.get(CONFIRM).content.decode()
    assert "unit-test-v1" in page and "of the 2 images" not in page and "every image of every clinic" in page


@pytest.mark.django_db
def test_the_page_says_when_a_job_is_already_running_and_a_second_post_is_refused_in_words(client, world,
                                                                                         model_version):
    client.force_login(world.admin)
    first = client.post(RESCORE, {"expected_active": model_version.pk}, follow=True).content.decode()
    assert "Re-scoring all images with unit-test-v1 in the background" in first
    page = client.get(CONFIRM).content.decode()
    assert 'id="rescore-running"' in page and 'value="Yes, re-score with unit-test-v1" disabled' in page
    second = client.post(RESCORE, {"expected_active": model_version.pk}, follow=True).content.decode()
    assert "A re-scoring job with unit-test-v1 is already queued" in second
    assert RescoreJob.objects.count() == 1


@pytest.mark.django_db
def test_a_confirmation_left_open_while_another_version_was_activated_queues_nothing(client, world, model_version):
    client.force_login(world.admin)
    activate(ModelVersion.objects.create(version="v2", status="ready"))
    response = client.post(RESCORE, {"expected_active": model_version.pk}, follow=True).content.decode()
    assert "The active version is now v2, not unit-test-v1" in response and not RescoreJob.objects.exists()


@pytest.mark.django_db
def test_a_re_score_started_in_the_admin_is_audited_with_the_client_address(client, world, model_version):
    client.force_login(world.admin)
    client.post(RESCORE, {"expected_active": model_version.pk}, REMOTE_ADDR="203.0.113.9")
    event = AuditEvent.objects.get(action="rescore")
    assert (event.actor, event.ip_address, event.new_values["images"]) == (world.admin, "203.0.113.9", "all")


@pytest.mark.django_db
def test_the_confirmation_page_needs_the_change_permission(client, world, model_version):
    viewer = make_user("registry-viewer")
    viewer.is_staff = True
    viewer.save()
    viewer.user_permissions.add(Permission.objects.get(codename="view_modelversion"))
    client.force_login(viewer)
    assert client.get(CONFIRM).status_code == 403
    assert client.post(RESCORE).status_code == 403
    assert not RescoreJob.objects.exists()


@pytest.mark.django_db
def test_the_image_list_action_shows_a_refusal_in_words_not_a_500(world, model_version, client, monkeypatch):
    """The image list's "re-score selected" action: a refusal of the service (the active version
    changed meanwhile) is a message on the list, and nothing is queued."""
    image = _images(world, 1)[0]

    def refused(**_):
        raise RescoreRefused("The active version changed while the job was being set up; nothing was queued.")

    monkeypatch.setattr("cases.admin.start_rescore", refused)
    client.force_login(world.admin)
    response = client.post("/admin/cases/lesionimage/", {"action": "rescore_with_active_model",
                                                         "_selected_action": [image.pk]}, follow=True)
    assert response.status_code == 200
    assert any("The active version changed" in str(m) and m.level_tag == "error"
               for m in response.context["messages"])
    assert not RescoreJob.objects.exists()
