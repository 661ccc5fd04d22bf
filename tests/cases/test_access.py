"""Object-level access: ids from another clinic are 404 on every view; anonymous users log in first."""
from __future__ import annotations

import pytest
from django.core.files.base import ContentFile

from audit.models import AuditEvent
from cases.models import LesionImage, Prediction
from tests.support.imagegen import jpeg, upload

pytestmark = pytest.mark.django_db


@pytest.fixture
def objects_b(world, model_version):
    """A stored image, a failed prediction with a heatmap and a flagged lesion in clinic B."""
    from django.core.files.storage import default_storage

    name = default_storage.save("lesion-images/b.png", ContentFile(b"png"))
    heatmap = default_storage.save("heatmaps/b.png", ContentFile(b"png"))
    image = LesionImage.objects.create(lesion=world.lesion_b, file=name, sha256="b" * 64, size_bytes=3, width=64,
                                       height=64, uploaded_by=world.clin_b)
    prediction = Prediction.objects.create(image=image, model_version=model_version, status="failed",
                                           error="boom", heatmap=heatmap)
    return image, prediction


def urls_for(world, image, prediction):
    """(method, url, data) for every object view, pointing at clinic B's records."""
    return [
        ("get", f"/patients/{world.patient_b.pk}/", None),
        ("get", f"/patients/{world.patient_b.pk}/cases/new/", None),
        ("post", f"/patients/{world.patient_b.pk}/cases/new/", {"clinical_question": "x"}),
        ("get", f"/cases/{world.case_b.pk}/", None),
        ("get", f"/cases/{world.case_b.pk}/status.json", None),
        ("post", f"/cases/{world.case_b.pk}/lesions/new/", {"anatomic_site": "unknown"}),
        ("post", f"/cases/{world.case_b.pk}/claim/", None),
        ("post", f"/cases/{world.case_b.pk}/release/", None),
        ("get", f"/cases/{world.case_b.pk}/review/", None),
        ("post", f"/cases/{world.case_b.pk}/review/", {}),
        ("get", f"/lesions/{world.lesion_b.pk}/", None),
        ("post", f"/lesions/{world.lesion_b.pk}/", {"images": [upload("x.jpg", jpeg())], "kind": "dermoscopic"}),
        ("get", f"/images/{image.pk}/", None),
        ("get", f"/images/{image.pk}/file/", None),
        ("get", f"/predictions/{prediction.pk}/heatmap/", None),
        ("post", f"/predictions/{prediction.pk}/retry/", None),
    ]


@pytest.mark.parametrize("who", ["clin_a", "norole", "derm"])
def test_other_clinic_ids_are_404_everywhere(client, world, objects_b, who):
    image, prediction = objects_b
    client.force_login(getattr(world, who))
    for method, url, data in urls_for(world, image, prediction):
        response = getattr(client, method)(url, data or {})
        assert response.status_code == 404, (who, method, url, response.status_code)
    prediction.refresh_from_db()
    assert prediction.status == "failed"  # the retry did nothing
    assert LesionImage.objects.filter(lesion=world.lesion_b).count() == 1


def test_anonymous_is_redirected_to_login_everywhere(client, world, objects_b):
    image, prediction = objects_b
    pages = urls_for(world, image, prediction) + [("get", "/", None), ("get", "/patients/", None),
                                                   ("get", "/queue/", None), ("get", "/patients/new/", None)]
    for method, url, data in pages:
        response = getattr(client, method)(url, data or {})
        assert response.status_code == 302 and response["Location"].startswith("/accounts/login/"), url


def test_owner_clinic_and_admin_can_open_everything(client, world, objects_b):
    image, prediction = objects_b
    for user in (world.clin_b, world.admin):
        client.force_login(user)
        for url in (f"/patients/{world.patient_b.pk}/", f"/cases/{world.case_b.pk}/", f"/lesions/{world.lesion_b.pk}/",
                    f"/images/{image.pk}/", f"/cases/{world.case_b.pk}/status.json"):
            assert client.get(url).status_code == 200, (user, url)
        response = client.get(f"/images/{image.pk}/file/")
        assert response.status_code == 200 and response["Cache-Control"] == "private, no-store"
        assert b"".join(response.streaming_content) == b"png"
        response = client.get(f"/predictions/{prediction.pk}/heatmap/")
        assert response.status_code == 200 and response["Cache-Control"] == "private, no-store"
    downloads = AuditEvent.objects.filter(action="download")
    assert sorted(downloads.values_list("object_type", "actor_username")) == sorted(
        (kind, user.username) for user in (world.clin_b, world.admin) for kind in ("lesionimage", "prediction"))
    assert {e.clinic_id for e in downloads} == {world.clinic_b.pk}


def test_refused_and_missing_downloads_are_not_audited(client, world, objects_b):
    image, prediction = objects_b
    client.force_login(world.clin_a)
    assert client.get(f"/images/{image.pk}/file/").status_code == 404
    client.force_login(world.clin_b)
    assert client.get(f"/images/{image.pk + 1000}/file/").status_code == 404
    assert not AuditEvent.objects.filter(action="download").exists()


def test_patient_lists_are_scoped(client, world):
    client.force_login(world.clin_a)
    body = client.get("/patients/").content.decode()
    assert "PA-1" in body and "PB-1" not in body
    client.force_login(world.norole)
    body = client.get("/patients/").content.decode()
    assert "PA-1" not in body and "PB-1" not in body


def test_queue_is_for_reviewers_only(client, world):
    for user, status in ((world.clin_a, 403), (world.norole, 403), (world.derm, 200), (world.admin, 200)):
        client.force_login(user)
        assert client.get("/queue/").status_code == status, user


def test_dermatologist_sees_queued_cases_only(client, world):
    world.lesion_b.flagged = world.lesion_b.awaiting_review = True
    world.lesion_b.save()
    client.force_login(world.derm)
    assert client.get(f"/cases/{world.case_b.pk}/").status_code == 200
    assert client.get(f"/cases/{world.case_a.pk}/").status_code == 404
    assert client.get(f"/patients/{world.patient_b.pk}/").status_code == 200
    assert client.get(f"/patients/{world.patient_a.pk}/").status_code == 404


def test_a_dermatologist_sees_the_other_visits_of_the_lesion_under_review_only(client, world):
    """The review asks whether the lesion changed since an earlier visit: that visit (never
    flagged, or reviewed by a colleague) opens too; another lesion's visit does not."""
    from datetime import timedelta

    from django.utils import timezone

    from cases import services
    from cases.models import Case, Lesion

    Case.objects.filter(pk=world.case_a.pk).update(visit_date=timezone.localdate() - timedelta(days=90))
    later = services.create_case(user=world.clin_a, patient=world.patient_a, clinical_question="Follow-up",
                                 visit_date=timezone.localdate())
    again = services.add_lesion(user=world.clin_a, case=later, anatomic_site="posterior torso",
                                same_as=world.lesion_a.tracked)
    unrelated = services.create_case(user=world.clin_a, patient=world.patient_a, clinical_question="Other mole",
                                     visit_date=timezone.localdate() - timedelta(days=30))
    services.add_lesion(user=world.clin_a, case=unrelated, anatomic_site="head/neck")
    client.force_login(world.derm)
    assert client.get(f"/cases/{world.case_a.pk}/").status_code == 404  # nothing under review yet
    Lesion.objects.filter(pk=again.pk).update(flagged=True, awaiting_review=True)
    assert client.get(f"/cases/{later.pk}/").status_code == 200
    assert client.get(f"/cases/{world.case_a.pk}/").status_code == 200  # the earlier visit of that lesion
    assert client.get(f"/cases/{unrelated.pk}/").status_code == 404
    timeline = client.get(f"/patients/{world.patient_a.pk}/lesions/{again.tracked.number}/")
    assert timeline.status_code == 200 and len(timeline.context["visits"]) == 2
    assert client.get(f"/cases/{world.case_b.pk}/").status_code == 404  # another clinic's case stays hidden


def test_dermatologist_cannot_create_patients_or_upload(client, world):
    world.lesion_b.flagged = world.lesion_b.awaiting_review = True
    world.lesion_b.save()
    client.force_login(world.derm)
    assert client.get("/patients/new/").status_code == 403
    response = client.post(f"/lesions/{world.lesion_b.pk}/", {"images": [upload("x.jpg", jpeg())]})
    assert response.status_code == 403
    assert LesionImage.objects.count() == 0


def test_forms_require_csrf(world):
    from django.test import Client

    client = Client(enforce_csrf_checks=True)
    client.force_login(world.clin_a)
    response = client.post("/patients/new/", {"identifier": "X-1", "birth_year": 1990, "sex": "female"})
    assert response.status_code == 403


def test_failure_reasons_shown_in_the_app_carry_no_server_paths(world, model_version):
    from cases.models import Prediction
    from tests.support.case_helpers import make_image

    prediction = Prediction(image=make_image(world), model_version=model_version, status="failed",
                            error="Model could not be loaded: /srv/secondlook/var/models/v3/model.keras is missing "
                                  "(see https://example.org/docs/models)")
    assert prediction.error_for_display == ("Model could not be loaded: model.keras is missing "
                                            "(see https://example.org/docs/models)")


def test_original_file_names_are_shown_to_the_uploading_clinic_only(client, world, model_version):
    from cases.models import Prediction
    from tests.support.case_helpers import make_image

    image = make_image(world)
    image.original_name = "smith-john-back.jpg"
    image.save()
    Prediction.objects.create(image=image, model_version=model_version)
    world.lesion_a.flagged = world.lesion_a.awaiting_review = True
    world.lesion_a.save()
    client.force_login(world.clin_a)
    assert "smith-john-back.jpg" in client.get(f"/cases/{world.case_a.pk}/").content.decode()
    client.force_login(world.derm)  # sees the case in the queue, not the file's name
    page = client.get(f"/cases/{world.case_a.pk}/")
    assert page.status_code == 200 and "smith-john-back.jpg" not in page.content.decode()
