"""The case page polls status.json every few seconds: its cost must not grow with the images.

Each image's summary is rendered with the request, so every render runs the context processors
(the navigation bar's queue size, with its role checks); those, and the partials' own lookups,
must be paid once per request, not once per image.
"""
from __future__ import annotations

from django.contrib.auth.models import Group
from django.db import connection
from django.test import RequestFactory
from django.test.utils import CaptureQueriesContext

from cases import roles
from cases.access import is_reviewer
from cases.models import Case, Lesion, Prediction
from cases.queue import queue_size_for
from classifier.models import ModelVersion
from melanoma_site.context_processors import site
from tests.support.case_helpers import make_image, make_user, score_image

# images of every state the summary and the re-score note show, cycled
STATES = ("done", "unassessable", "pending", "failed", "rescoring", "running")


def _add_images(world, model_version, count: int, start: int = 0, lesions: list[Lesion] | None = None) -> None:
    """``count`` images on clinic A's lesion (or spread over ``lesions``), each in the next state of STATES."""
    newer = ModelVersion.objects.get_or_create(version="unit-test-v2", defaults={
        "status": ModelVersion.Status.READY, "artifact_path": "/nonexistent/model2",
        "melanoma_threshold": 0.5, "malignancy_threshold": 0.6})[0]
    lesions = lesions or [world.lesion_a]
    for i in range(start, start + count):
        image = make_image(world, sha=f"{i:064x}", lesion=lesions[i % len(lesions)])
        state = STATES[i % len(STATES)]
        if state == "unassessable":
            score_image(image, model_version, assessable=False)
        elif state == "rescoring":  # a finished score in force, a version re-score waiting beside it
            score_image(image, model_version)
            Prediction.objects.create(image=image, model_version=newer, status=Prediction.Status.PENDING)
        else:
            score_image(image, model_version, status=state if state != "done" else Prediction.Status.DONE)


def _poll_queries(client, case: Case) -> int:
    """Queries of one status poll."""
    with CaptureQueriesContext(connection) as captured:
        response = client.get(f"/cases/{case.pk}/status.json")
    assert response.status_code == 200
    return len(captured.captured_queries)


def _one_vs_many(client, world, model_version) -> tuple[int, int, int]:
    """(queries with 1 image on 1 lesion, with 6 on 3 lesions, the images the 6-image poll returned)."""
    _add_images(world, model_version, 1)
    one = _poll_queries(client, world.case_a)
    more = [world.lesion_a] + [Lesion.objects.create(case=world.case_a, anatomic_site=site)
                               for site in ("anterior torso", "upper extremity")]
    _add_images(world, model_version, 5, start=1, lesions=more)
    many = _poll_queries(client, world.case_a)
    return one, many, len(client.get(f"/cases/{world.case_a.pk}/status.json").json()["predictions"])


def test_a_clinicians_status_poll_costs_the_same_queries_for_one_image_or_six(client, world, model_version,
                                                                              django_assert_max_num_queries):
    client.force_login(world.clin_a)
    one, many, shown = _one_vs_many(client, world, model_version)
    assert shown == 6 and many == one, (one, many)
    with django_assert_max_num_queries(one):
        client.get(f"/cases/{world.case_a.pk}/status.json")


def test_a_dermatologists_status_poll_costs_the_same_queries_for_one_image_or_six(client, world, model_version,
                                                                                  django_assert_max_num_queries):
    # a flagged lesion puts the case in the queue: the dermatologist may open it and has a queue badge
    world.lesion_a.flagged = world.lesion_a.awaiting_review = True
    world.lesion_a.save()
    client.force_login(world.derm)
    one, many, shown = _one_vs_many(client, world, model_version)
    assert shown == 6 and many == one, (one, many)
    with django_assert_max_num_queries(one):
        client.get(f"/cases/{world.case_a.pk}/status.json")


def test_the_queue_size_is_counted_once_per_request(world, django_assert_num_queries):
    request = RequestFactory().get("/")
    request.user = world.derm
    with django_assert_num_queries(2):  # the roles, then the count
        sizes = {site(request)["queue_size"] for _ in range(5)}
    assert sizes == {0}


def test_roles_are_read_once_per_user_object(world, django_assert_num_queries):
    with django_assert_num_queries(1):
        assert is_reviewer(world.derm) and roles.has_role(world.derm, roles.DERMATOLOGIST)
        assert not roles.has_role(world.derm, roles.CLINICIAN) and roles.in_role(world.derm, roles.DERMATOLOGIST)


def test_a_role_given_or_taken_in_the_same_process_is_seen_at_once(world):
    """Admin forms, the demo accounts and tests change groups through ``user.groups``: the memo
    on that user object is dropped, so no stale answer is given."""
    user = world.norole
    assert not is_reviewer(user) and queue_size_for(user) is None
    dermatologists = Group.objects.get(name=roles.DERMATOLOGIST)
    user.groups.add(dermatologists)
    assert is_reviewer(user) and queue_size_for(user) == 0
    user.groups.remove(dermatologists)
    assert not is_reviewer(user)
    user.groups.set([dermatologists])
    assert is_reviewer(user)
    user.groups.clear()
    assert not roles.has_role(user, roles.DERMATOLOGIST)


def test_a_role_given_through_the_group_needs_forget_roles(world):
    """Changing the group's side (``group.user_set``) cannot reach the user objects in memory:
    ``forget_roles`` drops their memo."""
    user = make_user("late", clinic=world.clinic_a)
    assert not roles.has_role(user, roles.CLINICIAN)
    Group.objects.get(name=roles.CLINICIAN).user_set.add(user)
    roles.forget_roles(user)
    assert roles.has_role(user, roles.CLINICIAN)


def test_each_request_reads_the_roles_afresh(client, world):
    """The memo lives on the user object, and every request loads its own: a role taken away
    between two polls is seen by the second."""
    world.lesion_a.flagged = world.lesion_a.awaiting_review = True
    world.lesion_a.save()
    client.force_login(world.derm)
    assert client.get(f"/cases/{world.case_a.pk}/status.json").status_code == 200
    world.derm.groups.clear()
    assert client.get(f"/cases/{world.case_a.pk}/status.json").status_code == 404
