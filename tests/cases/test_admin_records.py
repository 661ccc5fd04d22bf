"""The admin over clinical records: every change page opens, AI outputs and signed reviews are
read-only there, each admin change is in the audit trail with old and new values, and staff who
are not superusers see their own clinic only."""
from __future__ import annotations

import pytest
from django.contrib.auth.models import Permission
from django.utils import timezone

from audit.models import AuditEvent
from cases.models import Patient, Prediction, Review
from tests.support.case_helpers import make_image, make_user

pytestmark = pytest.mark.django_db


@pytest.fixture
def scored(world, model_version):
    image = make_image(world)
    prediction = Prediction.objects.create(image=image, model_version=model_version, status="done",
                                           melanoma_probability=0.4, malignancy_score=0.5, heatmap="heatmaps/x.png",
                                           finished_at=timezone.now())
    review = Review.objects.create(lesion=world.lesion_a, reviewer=world.derm, agreement="agree",
                                   final_diagnosis="nevus", management="reassure")
    return image, prediction, review


def test_every_change_page_opens_and_links_files_through_the_app(client, world, scored):
    image, prediction, review = scored
    client.force_login(world.admin)
    for url in (f"/admin/cases/lesionimage/{image.pk}/change/", f"/admin/cases/prediction/{prediction.pk}/change/",
                f"/admin/cases/review/{review.pk}/change/", f"/admin/cases/patient/{world.patient_a.pk}/change/",
                f"/admin/cases/case/{world.case_a.pk}/change/", f"/admin/cases/lesion/{world.lesion_a.pk}/change/"):
        response = client.get(url)
        assert response.status_code == 200, url
    page = client.get(f"/admin/cases/lesionimage/{image.pk}/change/").content.decode()
    assert f'href="/images/{image.pk}/file/"' in page
    page = client.get(f"/admin/cases/prediction/{prediction.pk}/change/").content.decode()
    assert f'href="/predictions/{prediction.pk}/heatmap/"' in page


def test_predictions_and_reviews_cannot_be_added_edited_or_deleted_in_the_admin(client, world, scored):
    _, prediction, review = scored
    client.force_login(world.admin)
    assert client.get("/admin/cases/prediction/add/").status_code == 403
    assert client.get("/admin/cases/review/add/").status_code == 403
    client.post(f"/admin/cases/prediction/{prediction.pk}/change/", {"melanoma_probability": "0.99", "status": "done"})
    client.post(f"/admin/cases/review/{review.pk}/change/", {"final_diagnosis": "melanoma"})
    assert client.post(f"/admin/cases/review/{review.pk}/delete/", {"post": "yes"}).status_code == 403
    assert Prediction.objects.get(pk=prediction.pk).melanoma_probability == 0.4
    assert Review.objects.get(pk=review.pk).final_diagnosis == "nevus"


def test_an_admin_change_to_a_record_is_audited_with_old_and_new_values(client, world):
    client.force_login(world.admin)
    patient = world.patient_a
    response = client.post(f"/admin/cases/patient/{patient.pk}/change/", {
        "clinic": world.clinic_a.pk, "identifier": "PA-1-corrected", "birth_year": patient.birth_year,
        "sex": patient.sex, "fitzpatrick_type": patient.fitzpatrick_type or "", "created_by": patient.created_by_id})
    assert response.status_code == 302, response.content.decode()[:2000]
    event = AuditEvent.objects.get(action="update", object_type="patient", object_id=str(patient.pk))
    assert event.old_values == {"identifier": "PA-1"} and event.new_values == {"identifier": "PA-1-corrected"}
    assert event.actor == world.admin and event.clinic_id == world.clinic_a.pk


def test_staff_who_are_not_superusers_see_their_own_clinic_only(client, world, scored):
    staff = make_user("staff_a", clinic=world.clinic_a)
    staff.is_staff = True
    staff.save()
    staff.user_permissions.add(*Permission.objects.filter(codename__in=["view_patient", "view_prediction", "view_auditevent"]))
    client.force_login(staff)
    listing = client.get("/admin/cases/patient/").content.decode()
    assert "PA-1" in listing and "PB-1" not in listing
    assert client.get(f"/admin/cases/patient/{world.patient_b.pk}/change/").status_code == 302  # "not found"
    assert client.get(f"/admin/cases/patient/{world.patient_a.pk}/change/").status_code == 200
    AuditEvent.objects.create(action="view", object_type="patient", object_id=str(world.patient_b.pk),
                              clinic_id=world.clinic_b.pk, patient_id=world.patient_b.pk)
    trail = client.get("/admin/audit/auditevent/").content.decode()
    assert f">{world.patient_b.pk}<" not in trail
    nobody = make_user("staff_none")
    nobody.is_staff = True
    nobody.save()
    nobody.user_permissions.add(*Permission.objects.filter(codename="view_patient"))
    client.force_login(nobody)
    assert "PA-1" not in client.get("/admin/cases/patient/").content.decode()
    assert Patient.objects.count() == 2
