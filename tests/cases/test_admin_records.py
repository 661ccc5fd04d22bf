"""The admin over clinical records: every change page opens, AI outputs and signed reviews are
read-only there, each admin change is in the audit trail with old and new values, and staff who
are not superusers see their own clinic only."""
from __future__ import annotations

import pytest
from django.contrib.auth.models import Permission
from django.utils import timezone

from audit.models import AuditEvent
from cases.models import Patient, Prediction, Review
from tests.support.case_helpers import make_image, make_staff as _staff, make_user

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


def test_searching_the_trail_stays_inside_the_staff_users_clinic(client, world):
    client.force_login(_staff(world, "view_auditevent"))
    for clinic, patient in ((world.clinic_a, world.patient_a), (world.clinic_b, world.patient_b)):
        AuditEvent.objects.create(action="view", object_type="patient", object_id=f"obj-{patient.identifier}",
                                  clinic_id=clinic.pk, patient_id=patient.pk)
    for term in ("P", "PB", "1"):  # a patient identifier, as the search allows
        page = client.get("/admin/audit/auditevent/", {"q": term}).content.decode()
        assert "obj-PB-1" not in page, term
    assert "obj-PA-1" in client.get("/admin/audit/auditevent/", {"q": "PA"}).content.decode()
    # a list filter still applies to the rows the identifier search adds
    filtered = client.get("/admin/audit/auditevent/", {"q": "PA", "action__exact": "update"}).content.decode()
    assert "obj-PA-1" not in filtered
    assert "Clinic B" not in client.get("/admin/audit/auditevent/").content.decode()  # nor in the clinic filter


def test_staff_cannot_move_themselves_or_records_into_another_clinic(client, world):
    from cases.models import Case, ClinicMembership

    staff = _staff(world, "change_clinicmembership", "view_clinicmembership", "change_patient", "view_patient",
                   "change_case", "view_case")
    client.force_login(staff)
    membership = ClinicMembership.objects.get(user=staff)
    moved = client.post(f"/admin/cases/clinicmembership/{membership.pk}/change/",
                        {"user": staff.pk, "clinic": world.clinic_b.pk})
    assert moved.status_code == 200 and "Select a valid choice" in moved.content.decode()
    taken = client.post(f"/admin/cases/clinicmembership/{membership.pk}/change/",
                        {"user": world.clin_b.pk, "clinic": world.clinic_a.pk})  # another clinic's account
    assert taken.status_code == 200 and "Select a valid choice" in taken.content.decode()
    patient = world.patient_a
    sent = client.post(f"/admin/cases/patient/{patient.pk}/change/", {
        "clinic": world.clinic_b.pk, "identifier": "PA-1", "birth_year": patient.birth_year, "sex": patient.sex,
        "fitzpatrick_type": "", "created_by": patient.created_by_id})
    assert sent.status_code == 200 and "Select a valid choice" in sent.content.decode()
    case = world.case_a
    form = client.get(f"/admin/cases/case/{case.pk}/change/").context["adminform"].form
    data = {**{k: v for k, v in form.initial.items() if v is not None}, "patient": world.patient_b.pk,
            "lesions-TOTAL_FORMS": 0, "lesions-INITIAL_FORMS": 0}
    assert "patient" not in form.fields  # an existing case's patient is read-only (cases/admin.py CaseAdmin)
    relinked = client.post(f"/admin/cases/case/{case.pk}/change/", data)
    assert relinked.status_code == 302  # saved with nothing changed: the posted patient is ignored
    assert ClinicMembership.objects.get(user=staff).clinic == world.clinic_a
    assert ClinicMembership.objects.get(user=world.clin_b).clinic == world.clinic_b
    assert Patient.objects.get(pk=patient.pk).clinic == world.clinic_a
    assert Case.objects.get(pk=case.pk).patient == world.patient_a
    assert not AuditEvent.objects.filter(action="update").exists()
    # the clinic filter names the staff user's own clinic only
    assert "Clinic B" not in client.get("/admin/cases/patient/").content.decode()


def test_record_actions_need_the_change_permission(client, world):
    from cases.models import Case

    Case.objects.filter(pk=world.case_a.pk).update(claimed_by=world.derm, claimed_at=timezone.now(),
                                                   status=Case.Status.IN_REVIEW)
    client.force_login(_staff(world, "view_case"))
    page = client.get("/admin/cases/case/").content.decode()
    assert "release_claims" not in page
    client.post("/admin/cases/case/", {"action": "release_claims", "_selected_action": [world.case_a.pk]})
    assert Case.objects.get(pk=world.case_a.pk).claimed_by == world.derm


def test_staff_issue_and_revoke_tokens_of_their_own_clinic_only(client, world):
    from api.models import ApiToken

    theirs = ApiToken(user=world.clin_b, name="clinic B's integration")
    theirs.issue()
    theirs.save()
    staff = _staff(world, "add_apitoken", "view_apitoken")
    client.force_login(staff)
    assert "clinic B&#x27;s integration" not in client.get("/admin/api/apitoken/").content.decode()
    for user in (world.admin, world.clin_b, world.derm):  # a superuser, another clinic's account, no clinic
        refused = client.post("/admin/api/apitoken/add/", {"user": user.pk, "name": "mine now"})
        assert refused.status_code == 200 and "Select a valid choice" in refused.content.decode(), user
    assert not ApiToken.objects.filter(name="mine now").exists()
    issued = client.post("/admin/api/apitoken/add/", {"user": world.clin_a.pk, "name": "clinic A's EHR"})
    assert issued.status_code == 302 and ApiToken.objects.get(name="clinic A's EHR").user == world.clin_a
    # revoking needs the change permission, and only reaches the clinic's own tokens
    mine = ApiToken.objects.get(name="clinic A's EHR")
    client.post("/admin/api/apitoken/", {"action": "revoke", "_selected_action": [mine.pk, theirs.pk]})
    assert not ApiToken.objects.filter(revoked_at__isnull=False).exists()
    staff.user_permissions.add(Permission.objects.get(codename="change_apitoken"))
    client.post("/admin/api/apitoken/", {"action": "revoke", "_selected_action": [mine.pk, theirs.pk]})
    assert list(ApiToken.objects.filter(revoked_at__isnull=False)) == [mine]
    # a superuser sees every clinic's tokens
    client.force_login(world.admin)
    listing = client.get("/admin/api/apitoken/")
    assert listing.status_code == 200
    assert "clinic B&#x27;s integration" in listing.content.decode() and "clinic A&#x27;s EHR" in listing.content.decode()


def test_the_admins_counts_cover_the_staff_users_own_clinic_only(client, world, model_version):
    from classifier.models import RescoreJob

    now = timezone.now()
    image_a = make_image(world)
    image_b = make_image(world, sha="b" * 64, lesion=world.lesion_b)
    for image, assessable in ((image_a, True), (image_b, False)):
        Prediction.objects.create(image=image, model_version=model_version, status="done", assessable=assessable,
                                  melanoma_probability=0.2, malignancy_score=0.3, finished_at=now,
                                  review_disagreement="" if assessable else "the review said melanoma")
    RescoreJob.objects.create(model_version=model_version, status="done", queued=2, total=2)
    staff = _staff(world, "view_prediction", "view_rescorejob", "view_modelversion")
    client.force_login(staff)
    rates = client.get("/admin/cases/prediction/").context["assessment_rates"]
    assert [(r.scored, r.not_assessable) for r in rates] == [(1, 0)]  # clinic B's image is not counted
    jobs = client.get("/admin/classifier/rescorejob/")
    page = jobs.content.decode()
    assert "Scored (your clinic)" in page and "Total" not in page
    row = jobs.context["cl"].result_list[0]
    scored, disagreements = (col for col in jobs.context["cl"].list_display if callable(col))
    assert scored(row) == 1 and disagreements(row) == "0"  # B's disagreement is not A's to see
    version_page = client.get(f"/admin/classifier/modelversion/{model_version.pk}/change/")
    assert [(r.scored, r.not_assessable) for r in version_page.context["assessment_rates"]] == [(1, 0)]
    # a superuser counts every clinic's images and sees the job's totals
    client.force_login(world.admin)
    assert [(r.scored, r.not_assessable) for r in client.get("/admin/cases/prediction/").context["assessment_rates"]] == [(2, 1)]
    jobs = client.get("/admin/classifier/rescorejob/")
    assert "Total" in jobs.content.decode()
    scored, disagreements = (col for col in jobs.context["cl"].list_display if callable(col))
    row = jobs.context["cl"].result_list[0]
    assert scored(row) == 2 and 'disagrees=yes' in str(disagreements(row))
