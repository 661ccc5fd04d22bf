"""Records and their audit trail over their whole life: the admin's lesion inline never deletes
signed reviews and AI scores, a deleted image or score takes its stored files with it, reading
records in the admin (the trail included) is audited, the client's file name never reaches the
trail, and each export says what it handed out."""
from __future__ import annotations

from pathlib import Path

import pytest
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.core.files.uploadedfile import SimpleUploadedFile
from django.db import transaction
from django.utils import timezone

from audit.models import AuditEvent
from cases import services
from cases.models import Lesion, LesionImage, Patient, Prediction, Review
from cases.training_labels import reviewed_records
from tests.support.case_helpers import make_image, make_staff, score_image
from tests.support.imagegen import png

pytestmark = pytest.mark.django_db


def heatmap_of(image, version) -> Prediction:
    prediction = score_image(image, version)
    prediction.heatmap = default_storage.save("heatmaps/test.png", ContentFile(png(size=(32, 32), seed=5)))
    prediction.save()
    return prediction


def reviewed(world, version):
    image = make_image(world)
    prediction = heatmap_of(image, version)
    review = Review.objects.create(lesion=world.lesion_a, reviewer=world.derm, agreement="agree",
                                   final_diagnosis="nevus", management="reassure")
    return image, prediction, review


# 1. the case page's lesion inline

def case_post(case, lesion, **extra) -> dict:
    return {"referring_clinician": case.referring_clinician_id, "visit_date": case.visit_date.isoformat(),
            "clinical_question": case.clinical_question, "notes": case.notes,
            "lesions-TOTAL_FORMS": "1", "lesions-INITIAL_FORMS": "1", "lesions-MIN_NUM_FORMS": "0",
            "lesions-MAX_NUM_FORMS": "1000", "lesions-0-id": lesion.pk, "lesions-0-case": case.pk,
            "lesions-0-anatomic_site": lesion.anatomic_site, "lesions-0-description": lesion.description} | extra


def test_the_case_admin_cannot_delete_a_reviewed_lesion_through_its_inline(client, world, model_version,
                                                                            django_capture_on_commit_callbacks):
    image, prediction, review = reviewed(world, model_version)
    client.force_login(world.admin)
    page = client.get(f"/admin/cases/case/{world.case_a.pk}/change/").content.decode()
    assert 'name="lesions-0-DELETE"' not in page
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(f"/admin/cases/case/{world.case_a.pk}/change/",
                               case_post(world.case_a, world.lesion_a, **{"lesions-0-DELETE": "on"}))
    assert response.status_code == 302, response.content.decode()[:3000]
    assert Lesion.objects.filter(pk=world.lesion_a.pk).exists()
    assert Review.objects.filter(pk=review.pk).exists() and Prediction.objects.filter(pk=prediction.pk).exists()
    assert LesionImage.objects.filter(pk=image.pk).exists() and default_storage.exists(image.file.name)
    assert not AuditEvent.objects.filter(action="delete").exists()


# 2. stored files go with their rows

def test_a_deleted_image_takes_its_file_its_heatmap_and_its_training_copy_with_it(
        world, model_version, settings, tmp_path, django_capture_on_commit_callbacks):
    settings.SECONDLOOK_CACHE_DIR = tmp_path / "cache"
    image = make_image(world)
    prediction = heatmap_of(image, model_version)
    exported = tmp_path / "cache" / "reviewed"
    exported.mkdir(parents=True)
    copy, other = exported / f"review-{image.pk}.png", exported / f"review-{image.pk}0.png"
    copy.write_bytes(b"x")
    other.write_bytes(b"x")
    names = [image.file.name, prediction.heatmap.name]
    assert all(default_storage.exists(name) for name in names)
    with django_capture_on_commit_callbacks(execute=True):
        image.delete()
    assert not any(default_storage.exists(name) for name in names)
    assert not copy.exists() and other.exists()  # another image's copy stays


def test_a_cascade_from_the_lesion_takes_the_files_too(world, model_version, django_capture_on_commit_callbacks):
    image, prediction, _ = reviewed(world, model_version)
    names = [image.file.name, prediction.heatmap.name]
    with django_capture_on_commit_callbacks(execute=True):
        world.case_a.delete()
    assert not any(default_storage.exists(name) for name in names)


def test_an_admin_delete_of_a_never_scored_image_removes_its_file(client, world,
                                                                  django_capture_on_commit_callbacks):
    image = make_image(world)
    client.force_login(world.admin)
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(f"/admin/cases/lesionimage/{image.pk}/delete/", {"post": "yes"})
    assert response.status_code == 302
    assert not LesionImage.objects.filter(pk=image.pk).exists() and not default_storage.exists(image.file.name)


def test_a_rolled_back_deletion_keeps_the_file(world, django_capture_on_commit_callbacks):
    image = make_image(world)
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        with pytest.raises(RuntimeError), transaction.atomic():
            image.delete()
            raise RuntimeError("rolled back")
    assert callbacks == [] and default_storage.exists(image.file.name)


def test_a_file_already_gone_or_a_failing_storage_never_fails_the_deletion(world, model_version, monkeypatch,
                                                                            django_capture_on_commit_callbacks):
    gone, failing = make_image(world), make_image(world, sha="b" * 64)
    default_storage.delete(gone.file.name)
    with django_capture_on_commit_callbacks(execute=True):
        gone.delete()
    monkeypatch.setattr(default_storage, "delete", lambda name: (_ for _ in ()).throw(OSError("storage down")))
    with django_capture_on_commit_callbacks(execute=True):
        failing.delete()
    assert not LesionImage.objects.exists()


# 4. reading records in the admin

def views_of(obj) -> list[AuditEvent]:
    return list(AuditEvent.objects.filter(action="view", object_type=obj._meta.model_name, object_id=str(obj.pk)))


def test_opening_a_patient_in_the_admin_is_one_view_event(client, world):
    staff = make_staff(world, "view_patient", "change_patient")
    client.force_login(staff)
    assert client.get(f"/admin/cases/patient/{world.patient_a.pk}/change/").status_code == 200
    [event] = views_of(world.patient_a)
    assert (event.actor, event.patient_id, event.clinic_id) == (staff, world.patient_a.pk, world.clinic_a.pk)
    assert event.new_values == {"via": "admin"}
    # another clinic's patient is not found, and nothing is recorded of it
    assert client.get(f"/admin/cases/patient/{world.patient_b.pk}/change/").status_code == 302
    assert views_of(world.patient_b) == []


def test_the_patient_list_in_the_admin_records_one_view_per_patient_shown(client, world):
    second = Patient.objects.create(clinic=world.clinic_a, identifier="PA-2", birth_year=1990, created_by=world.clin_a)
    client.force_login(make_staff(world, "view_patient"))
    assert client.get("/admin/cases/patient/").status_code == 200
    events = AuditEvent.objects.filter(action="view", object_type="patient")
    assert sorted(events.values_list("object_id", flat=True)) == sorted([str(world.patient_a.pk), str(second.pk)])
    assert {tuple(e.new_values.items()) for e in events} == {(("via", "admin list"),)}


def test_read_only_records_are_audited_when_opened_in_the_admin(client, world, model_version):
    _, prediction, review = reviewed(world, model_version)
    client.force_login(world.admin)
    for obj in (prediction, review):
        assert client.get(f"/admin/cases/{obj._meta.model_name}/{obj.pk}/change/").status_code == 200
        assert len(views_of(obj)) == 1
    client.get("/admin/cases/prediction/")
    assert len(views_of(prediction)) == 2


def test_reading_the_audit_trail_is_one_event_per_page_not_one_per_row(client, world):
    shown = [AuditEvent.objects.create(action="update", object_type="patient", object_id=str(world.patient_a.pk),
                                       patient_id=world.patient_a.pk, clinic_id=world.clinic_a.pk) for _ in range(3)]
    staff = make_staff(world, "view_auditevent")
    client.force_login(staff)
    assert client.get("/admin/audit/auditevent/").status_code == 200
    [event] = AuditEvent.objects.filter(action="view")
    assert (event.object_type, event.object_id, event.actor, event.clinic_id, event.patient_id) == (
        "auditevent", "", staff, world.clinic_a.pk, None)
    assert sorted(event.new_values["events"]) == sorted(e.pk for e in shown)
    assert client.get(f"/admin/audit/auditevent/{shown[0].pk}/change/").status_code == 200
    opened = AuditEvent.objects.get(action="view", object_id=str(shown[0].pk))
    assert (opened.object_type, opened.patient_id, opened.clinic_id) == ("auditevent", world.patient_a.pk,
                                                                          world.clinic_a.pk)


# 6. the client's file name stays out of the trail

def test_the_client_file_name_never_reaches_the_audit_trail(client, world, dispatched):
    outcome = services.upload_images(user=world.clin_a, lesion=world.lesion_a,
                                     files=[SimpleUploadedFile("Jane_Doe.png", png(), content_type="image/png")])
    [image] = outcome.accepted
    assert image.original_name == "Jane_Doe.png"  # kept for the clinic, not for the trail
    client.force_login(world.admin)
    response = client.post(f"/admin/cases/lesionimage/{image.pk}/change/", {
        "lesion": world.lesion_a.pk, "kind": "clinical", "original_name": "Jane_Doe_2.png", "acquired_on": "",
        "source_body_site": "", "uploaded_by": world.clin_a.pk})
    assert response.status_code == 302, response.content.decode()[:3000]
    assert AuditEvent.objects.get(action="update", object_type="lesionimage").new_values == {"kind": "clinical"}
    assert AuditEvent.objects.filter(action="upload").exists()
    assert not [e for e in AuditEvent.objects.all() if "Jane_Doe" in f"{e.old_values}{e.new_values}"]


# 7. exports say what they handed out

def test_the_pdf_report_is_audited_as_a_pdf_download(client, world):
    client.force_login(world.clin_a)
    assert client.get(f"/cases/{world.case_a.pk}/report.pdf").status_code == 200
    event = AuditEvent.objects.get(action="download")
    assert (event.object_type, event.object_id, event.new_values) == ("case", str(world.case_a.pk), {"format": "pdf"})


def test_each_image_exported_for_training_is_audited(world, model_version, tmp_path):
    image = make_image(world)
    score_image(image, model_version)
    Review.objects.create(lesion=world.lesion_a, reviewer=world.derm, agreement="agree", final_diagnosis="nevus",
                          management="reassure", created_at=timezone.now())
    unreviewed = make_image(world, sha="c" * 64, lesion=world.lesion_b)
    score_image(unreviewed, model_version)
    records = reviewed_records(tmp_path / "export")
    assert [Path(r.path).name for r in records] == [f"review-{image.pk}.png"]
    [event] = AuditEvent.objects.filter(action="download")
    assert (event.object_type, event.object_id, event.actor, event.patient_id, event.new_values) == (
        "lesionimage", str(image.pk), None, world.patient_a.pk, {"via": "training"})
