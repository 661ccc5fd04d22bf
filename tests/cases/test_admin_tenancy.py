"""Staff who are not superusers stay inside their clinic in the admin: a lesion's patient lesion
(``tracked``) cannot be relinked to another clinic's, or another patient's (the model refuses it
from any writer), and user accounts are scoped to the clinic with no way to raise a privilege.
Superusers keep the full admin."""
from __future__ import annotations

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group, Permission
from django.core.exceptions import ValidationError

from cases.admin import in_own_clinic
from cases.models import ClinicMembership, Lesion, PatientLesion
from cases.roles import CLINICIAN, DERMATOLOGIST
from classifier.models import ModelVersion, RescoreJob
from tests.support.case_helpers import make_staff as _staff, make_user, user_change_post as _user_post

pytestmark = pytest.mark.django_db


def _lesion_post(lesion, **overrides):
    data = {"case": lesion.case_id, "tracked": lesion.tracked_id or "", "anatomic_site": lesion.anatomic_site,
            "description": lesion.description, "flagged_at_0": "", "flagged_at_1": ""}
    data |= {"flagged": "on"} if lesion.flagged else {}
    return data | overrides


# --- the lesion admin and the model guard ---------------------------------------------------------

def test_clinic_staff_see_no_other_clinics_patient_lesions_and_cannot_relink(client, world):
    client.force_login(_staff(world, "view_lesion", "change_lesion"))
    theirs = world.lesion_b.tracked
    page = client.get(f"/admin/cases/lesion/{world.lesion_a.pk}/change/")
    assert page.status_code == 200
    html = page.content.decode()
    assert "PB-1" not in html and 'name="tracked"' not in html  # shown, not editable
    assert "L1 of PA-1" in html
    saved = client.post(f"/admin/cases/lesion/{world.lesion_a.pk}/change/",
                        _lesion_post(world.lesion_a, tracked=theirs.pk, description="relinked?"))
    assert saved.status_code == 302
    lesion = Lesion.objects.get(pk=world.lesion_a.pk)
    assert lesion.description == "relinked?" and lesion.tracked.patient == world.patient_a
    assert not theirs.visits.exclude(pk=world.lesion_b.pk).exists()
    # nor through another clinic's lesion page
    assert client.get(f"/admin/cases/lesion/{world.lesion_b.pk}/change/").status_code == 302  # "not found"


def test_clinic_staff_cannot_move_a_lesion_to_another_patients_visit(client, world):
    """The visit (``case``) is read-only for them too: the model's check of a new case against the
    tracked lesion they cannot see would otherwise end in a server error, not a refusal."""
    from cases.models import Case, Patient

    other = Patient.objects.create(clinic=world.clinic_a, identifier="PA-2", birth_year=1980,
                                   created_by=world.clin_a)
    visit = Case.objects.create(patient=other, referring_clinician=world.clin_a, clinical_question="other patient")
    client.force_login(_staff(world, "view_lesion", "change_lesion"))
    page = client.get(f"/admin/cases/lesion/{world.lesion_a.pk}/change/")
    assert 'name="case"' not in page.content.decode()
    saved = client.post(f"/admin/cases/lesion/{world.lesion_a.pk}/change/",
                        _lesion_post(world.lesion_a, case=visit.pk, description="moved?"))
    assert saved.status_code == 302
    lesion = Lesion.objects.get(pk=world.lesion_a.pk)
    assert lesion.description == "moved?" and lesion.case_id == world.lesion_a.case_id


def test_a_superuser_picks_only_the_cases_own_patients_lesions(client, world):
    other = PatientLesion.objects.create(patient=world.patient_a, number=PatientLesion.next_number(world.patient_a))
    client.force_login(world.admin)
    page = client.get(f"/admin/cases/lesion/{world.lesion_a.pk}/change/")
    choices = set(page.context["adminform"].form.fields["tracked"].queryset)
    assert choices == {world.lesion_a.tracked, other}
    refused = client.post(f"/admin/cases/lesion/{world.lesion_a.pk}/change/",
                          _lesion_post(world.lesion_a, tracked=world.lesion_b.tracked_id))
    assert refused.status_code == 200 and "tracked" in refused.context["adminform"].form.errors
    moved = client.post(f"/admin/cases/lesion/{world.lesion_a.pk}/change/", _lesion_post(world.lesion_a, tracked=other.pk))
    assert moved.status_code == 302 and Lesion.objects.get(pk=world.lesion_a.pk).tracked == other


def test_the_model_refuses_a_patient_lesion_of_another_patient(world):
    lesion = Lesion.objects.get(pk=world.lesion_a.pk)
    lesion.tracked = world.lesion_b.tracked
    with pytest.raises(ValidationError) as cleaned:
        lesion.full_clean()
    assert "tracked" in cleaned.value.message_dict
    with pytest.raises(ValidationError, match="another patient"):
        lesion.save()
    with pytest.raises(ValidationError, match="another patient"):
        Lesion.objects.create(case=world.case_a, tracked=world.lesion_b.tracked, anatomic_site="head/neck")
    # moving the visit's record to another patient's case, with its patient lesion, is refused too
    lesion = Lesion.objects.get(pk=world.lesion_a.pk)
    lesion.case = world.case_b
    with pytest.raises(ValidationError):
        lesion.save()
    assert Lesion.objects.get(pk=world.lesion_a.pk).tracked.patient == world.patient_a
    lesion = Lesion.objects.get(pk=world.lesion_a.pk)
    lesion.description = "still fine"
    lesion.save()  # a record of its own patient's lesion saves as before
    lesion.flagged = True
    lesion.save(update_fields=["flagged"])


def test_models_missing_from_the_clinic_paths_give_staff_nothing(world, model_version):
    staff = _staff(world)
    RescoreJob.objects.create(model_version=model_version, status="done", queued=1, total=1)
    assert in_own_clinic(RescoreJob.objects.all(), staff).count() == 0  # no clinic path: nothing, not everything
    assert in_own_clinic(RescoreJob.objects.all(), world.admin).count() == 1
    assert list(in_own_clinic(ModelVersion.objects.all(), staff)) == [model_version]  # shared by every clinic
    assert list(in_own_clinic(PatientLesion.objects.all(), staff)) == [world.lesion_a.tracked]
    assert in_own_clinic(PatientLesion.objects.all(), make_user("staff_none")).count() == 0


# --- user accounts -------------------------------------------------------------------------------

@pytest.fixture
def clinic_admin(world):
    return _staff(world, "view_user", "change_user", "add_user", "delete_user", name="admin_a")


def test_a_clinic_admin_lists_and_opens_only_their_clinics_accounts(client, world, clinic_admin):
    root_a = make_user("root_a", clinic=world.clinic_a, admin=True)  # a superuser who works in clinic A
    client.force_login(clinic_admin)
    listing = client.get("/admin/auth/user/")
    shown = {user.username for user in listing.context["cl"].result_list}
    assert shown == {"clin_a", "admin_a", "root_a"}  # not clinic B's, nor the accounts without a clinic
    for user in (world.clin_b, world.derm, world.admin):
        assert client.get(f"/admin/auth/user/{user.pk}/change/").status_code == 302, user  # "not found"
        assert client.get(f"/admin/auth/user/{user.pk}/password/").status_code == 404, user
        assert client.post(f"/admin/auth/user/{user.pk}/password/",
                           {"password1": "Taken-over-123!", "password2": "Taken-over-123!",
                            "usable_password": "true"}).status_code == 404
    # a superuser of the clinic is shown, never changed: no save, no password
    page = client.get(f"/admin/auth/user/{root_a.pk}/change/")
    assert page.status_code == 200 and 'name="_save"' not in page.content.decode()
    assert client.get(f"/admin/auth/user/{root_a.pk}/password/").status_code == 403
    assert client.post(f"/admin/auth/user/{root_a.pk}/password/",
                       {"password1": "Taken-over-123!", "password2": "Taken-over-123!"}).status_code == 403
    assert client.post(f"/admin/auth/user/{root_a.pk}/change/", _user_post(root_a, first_name="X")).status_code == 403
    assert client.post(f"/admin/auth/user/{root_a.pk}/delete/", {"post": "yes"}).status_code == 403
    client.post("/admin/auth/user/", {"action": "delete_selected", "_selected_action": [root_a.pk], "post": "yes"})
    assert get_user_model().objects.filter(pk=root_a.pk).exists()
    assert get_user_model().objects.get(pk=root_a.pk).check_password("pw-for-tests-123")
    assert not get_user_model().objects.get(pk=world.admin.pk).check_password("Taken-over-123!")


def test_a_clinic_admin_cannot_raise_any_privilege(client, world, clinic_admin):
    derm_group = Group.objects.get(name=DERMATOLOGIST)
    client.force_login(clinic_admin)
    page = client.get(f"/admin/auth/user/{world.clin_a.pk}/change/")
    html = page.content.decode()
    assert 'name="is_superuser"' not in html and 'name="is_staff"' not in html and 'name="user_permissions"' not in html
    assert {g.name for g in page.context["adminform"].form.fields["groups"].queryset} == {CLINICIAN}
    every_permission = list(Permission.objects.values_list("pk", flat=True))
    clinician = Group.objects.get(name=CLINICIAN)
    for user in (world.clin_a, clinic_admin):  # another account of the clinic, and their own
        refused = client.post(f"/admin/auth/user/{user.pk}/change/", _user_post(user, groups=[clinician.pk, derm_group.pk]))
        assert refused.status_code == 200 and "groups" in refused.context["adminform"].form.errors
        saved = client.post(f"/admin/auth/user/{user.pk}/change/", _user_post(
            user, first_name="Renamed", is_superuser="on", is_staff="on", user_permissions=every_permission,
            groups=[clinician.pk]))
        assert saved.status_code == 302
        user.refresh_from_db()
        assert user.first_name == "Renamed" and user.groups.filter(name=CLINICIAN).exists()
        assert not user.is_superuser and user.is_staff == (user == clinic_admin)  # the ticked boxes are ignored
        assert not user.groups.filter(name=DERMATOLOGIST).exists()
        assert user.user_permissions.count() == (0 if user == world.clin_a else 4)
    # the clinician role can be taken away; a role the clinic cannot grant stays where it was
    clinic_admin.groups.add(derm_group)
    client.post(f"/admin/auth/user/{clinic_admin.pk}/change/", _user_post(clinic_admin, groups=[]))
    assert set(clinic_admin.groups.values_list("name", flat=True)) == {DERMATOLOGIST}
    client.post(f"/admin/auth/user/{world.clin_a.pk}/change/", _user_post(world.clin_a, groups=[]))
    assert not world.clin_a.groups.exists()


def test_a_clinic_admin_cannot_take_over_a_more_privileged_account_of_the_clinic(client, world, clinic_admin):
    other_staff = _staff(world, "view_modelversion", "change_modelversion", name="other_staff")
    reviewer = make_user("derm_a", role=DERMATOLOGIST, clinic=world.clinic_a)
    client.force_login(clinic_admin)
    for user in (other_staff, reviewer):
        assert client.get(f"/admin/auth/user/{user.pk}/password/").status_code == 403, user
        assert client.post(f"/admin/auth/user/{user.pk}/change/", _user_post(user, first_name="X")).status_code == 403
    assert client.get(f"/admin/auth/user/{world.clin_a.pk}/password/").status_code == 200
    assert client.get(f"/admin/auth/user/{clinic_admin.pk}/password/").status_code == 200  # their own


def test_an_account_a_clinic_admin_adds_joins_their_clinic(client, world, clinic_admin):
    client.force_login(clinic_admin)
    added = client.post("/admin/auth/user/add/", {"username": "new_a", "usable_password": "true",
                                                  "password1": "A-good-pass-123!", "password2": "A-good-pass-123!"})
    assert added.status_code == 302, added.content.decode()[:2000]
    new = get_user_model().objects.get(username="new_a")
    assert ClinicMembership.objects.get(user=new).clinic == world.clinic_a
    assert not new.is_staff and not new.is_superuser
    nobody = _staff(world, "add_user", "view_user", name="staff_none")
    ClinicMembership.objects.filter(user=nobody).delete()
    client.force_login(nobody)
    assert client.get("/admin/auth/user/add/").status_code == 403  # no clinic to add it to
    assert client.get("/admin/auth/user/").context["cl"].result_count == 0


def test_a_superuser_keeps_the_full_user_admin(client, world):
    client.force_login(world.admin)
    shown = {user.username for user in client.get("/admin/auth/user/").context["cl"].result_list}
    assert {"clin_a", "clin_b", "derm", "boss"} <= shown
    page = client.get(f"/admin/auth/user/{world.clin_b.pk}/change/")
    assert 'name="is_superuser"' in page.content.decode()
    assert set(page.context["adminform"].form.fields["groups"].queryset) == set(Group.objects.all())
    assert client.get(f"/admin/auth/user/{world.clin_b.pk}/password/").status_code == 200
    saved = client.post(f"/admin/auth/user/{world.clin_b.pk}/change/",
                        _user_post(world.clin_b, is_staff="on", groups=[Group.objects.get(name=DERMATOLOGIST).pk]))
    assert saved.status_code == 302
    world.clin_b.refresh_from_db()
    assert world.clin_b.is_staff and set(world.clin_b.groups.values_list("name", flat=True)) == {DERMATOLOGIST}
    added = client.post("/admin/auth/user/add/", {"username": "loose", "usable_password": "true",
                                                  "password1": "A-good-pass-123!", "password2": "A-good-pass-123!"})
    assert added.status_code == 302 and not ClinicMembership.objects.filter(user__username="loose").exists()
