"""A clinic's admin (staff, not a superuser) cannot act for an account beyond them: no API token
for a dermatologist or another staff account, no attaching a clinic-less reviewer to their clinic,
no changing or deleting the membership of another staff account or a superuser. Every account
change made in the user admin is audited, old and new, never with a password."""
from __future__ import annotations

import json

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group, Permission

from api.models import ApiToken
from audit.models import AuditEvent
from cases.models import ClinicMembership
from cases.roles import CLINICIAN, DERMATOLOGIST
from tests.support.case_helpers import make_staff, make_user, user_change_post as _user_post

pytestmark = pytest.mark.django_db


def _staff(world, *codenames, name="admin_a"):
    return make_staff(world, *codenames, name=name)


PASSWORD = "A-brand-new-pass-123!"


@pytest.fixture
def others(world):
    """Clinic A's accounts beyond its admin: a dermatologist, another staff account, a superuser."""
    reviewer = make_user("derm_a", role=DERMATOLOGIST, clinic=world.clinic_a)
    other_staff = _staff(world, "view_modelversion", name="other_staff")
    root_a = make_user("root_a", clinic=world.clinic_a, admin=True)
    return reviewer, other_staff, root_a


# --- 1. tokens and memberships only for accounts the clinic's admin may manage ---------------------

def test_a_clinic_admin_issues_no_token_for_an_account_beyond_them(client, world, others):
    admin_a = _staff(world, "add_apitoken", "view_apitoken")
    client.force_login(admin_a)
    offered = client.get("/admin/api/apitoken/add/").context["adminform"].form.fields["user"].queryset
    assert {user.username for user in offered} == {"clin_a", "admin_a"}
    for user in others:
        refused = client.post("/admin/api/apitoken/add/", {"user": user.pk, "name": "acting as them"})
        assert refused.status_code == 200 and "user" in refused.context["adminform"].form.errors, user
    assert not ApiToken.objects.exists()
    for user in (world.clin_a, admin_a):  # a clinician of the clinic, and themselves, as before
        assert client.post("/admin/api/apitoken/add/", {"user": user.pk, "name": "EHR"}).status_code == 302
    assert set(ApiToken.objects.values_list("user__username", flat=True)) == {"clin_a", "admin_a"}


def test_a_clinic_admin_cannot_widen_an_existing_token_of_an_account_beyond_them(client, world, others):
    reviewer = others[0]
    theirs = ApiToken(user=reviewer, name="reader", read_only=True)
    theirs.issue()
    theirs.save()
    mine = ApiToken(user=world.clin_a, name="EHR", read_only=True)
    mine.issue()
    mine.save()
    admin_a = _staff(world, "change_apitoken", "view_apitoken")
    client.force_login(admin_a)
    url = f"/admin/api/apitoken/{theirs.pk}/change/"
    assert "read_only" not in client.get(url).context["adminform"].form.fields  # shown read-only
    client.post(url, {"name": "reader", "expires_at_0": "", "expires_at_1": ""})  # read_only left out = off
    assert ApiToken.objects.get(pk=theirs.pk).read_only is True
    # their own clinician's token stays editable, and any token can still be revoked from the list
    assert "read_only" in client.get(f"/admin/api/apitoken/{mine.pk}/change/").context["adminform"].form.fields
    client.post("/admin/api/apitoken/", {"action": "revoke", "_selected_action": [theirs.pk]})
    assert ApiToken.objects.get(pk=theirs.pk).revoked_at is not None


def test_a_clinic_admin_attaches_no_clinic_less_reviewer_staff_or_superuser(client, world):
    admin_a = _staff(world, "view_clinicmembership", "add_clinicmembership", "change_clinicmembership",
                     "view_clinic", "change_clinic")
    loose_staff = make_user("loose_staff")
    loose_staff.is_staff = True
    loose_staff.save()
    client.force_login(admin_a)
    for user in (world.derm, loose_staff, world.admin):  # a global dermatologist, staff, a superuser
        refused = client.post("/admin/cases/clinicmembership/add/", {"user": user.pk, "clinic": world.clinic_a.pk})
        assert refused.status_code == 200 and "user" in refused.context["adminform"].form.errors, user
        inline = client.post(f"/admin/cases/clinic/{world.clinic_a.pk}/change/",
                             _clinic_post(client, world.clinic_a, add_user=user))
        assert inline.status_code == 200, user
        assert not ClinicMembership.objects.filter(user=user).exists(), user
    # an account they may manage (no role, no privilege) still joins the clinic
    added = client.post("/admin/cases/clinicmembership/add/", {"user": world.norole.pk, "clinic": world.clinic_a.pk})
    assert added.status_code == 302 and ClinicMembership.objects.get(user=world.norole).clinic == world.clinic_a


# --- 4. nor change or delete the membership of an account beyond them ------------------------------

def _clinic_post(client, clinic, *, delete=(), add_user=None, swap=None):
    """The clinic's change form as shown, with memberships ticked for deletion, one added, or one
    row's account swapped for another (``swap``: (from, to))."""
    page = client.get(f"/admin/cases/clinic/{clinic.pk}/change/")
    formset = page.context["inline_admin_formsets"][0].formset
    prefix = formset.prefix
    data = {"name": clinic.name, f"{prefix}-INITIAL_FORMS": formset.initial_form_count(),
            f"{prefix}-MIN_NUM_FORMS": 0, f"{prefix}-MAX_NUM_FORMS": 1000}
    forms = list(formset.initial_forms)
    for index, form in enumerate(forms):
        membership = form.instance
        data |= {f"{prefix}-{index}-id": membership.pk, f"{prefix}-{index}-clinic": clinic.pk,
                 f"{prefix}-{index}-user": membership.user_id}
        if membership.user in delete:
            data[f"{prefix}-{index}-DELETE"] = "on"
        if swap is not None and membership.user == swap[0]:
            data[f"{prefix}-{index}-user"] = swap[1].pk
    total = len(forms)
    if add_user is not None:
        data |= {f"{prefix}-{total}-clinic": clinic.pk, f"{prefix}-{total}-user": add_user.pk}
        total += 1
    data[f"{prefix}-TOTAL_FORMS"] = total
    return data


def test_a_clinic_admin_cannot_change_or_delete_a_staff_or_superuser_membership(client, world, others):
    admin_a = _staff(world, "view_clinicmembership", "change_clinicmembership", "delete_clinicmembership",
                     "view_clinic", "change_clinic")
    reviewer, other_staff, root_a = others
    client.force_login(admin_a)
    for user in others:
        membership = ClinicMembership.objects.get(user=user)
        url = f"/admin/cases/clinicmembership/{membership.pk}"
        assert client.post(f"{url}/delete/", {"post": "yes"}).status_code == 403, user
        assert client.post(f"{url}/change/", {"user": world.norole.pk, "clinic": world.clinic_a.pk}).status_code == 403
        client.post("/admin/cases/clinicmembership/", {"action": "delete_selected", "_selected_action": [membership.pk],
                                                       "post": "yes"})
        assert ClinicMembership.objects.get(pk=membership.pk).user == user, user
    # through the clinic's page: their rows are shown disabled, and a posted deletion is ignored
    page = client.get(f"/admin/cases/clinic/{world.clinic_a.pk}/change/")
    rows = {form.instance.user.username: form for form in page.context["inline_admin_formsets"][0].formset.initial_forms}
    assert rows["root_a"].fields["DELETE"].disabled and rows["root_a"].fields["user"].disabled
    assert not rows["clin_a"].fields["DELETE"].disabled
    saved = client.post(f"/admin/cases/clinic/{world.clinic_a.pk}/change/",
                        _clinic_post(client, world.clinic_a, delete=[*others, world.clin_a]))
    assert saved.status_code == 302
    assert set(ClinicMembership.objects.filter(clinic=world.clinic_a).values_list("user__username", flat=True)) == {
        "admin_a", "derm_a", "other_staff", "root_a"}  # only the clinician's membership went
    # nor can the protected row's account be swapped for another
    saved = client.post(f"/admin/cases/clinic/{world.clinic_a.pk}/change/",
                        _clinic_post(client, world.clinic_a, swap=(root_a, world.norole)))
    assert saved.status_code == 302
    assert ClinicMembership.objects.filter(user=root_a).exists() and not ClinicMembership.objects.filter(
        user=world.norole).exists()
    # their own clinic's clinician membership is still theirs to delete; a superuser may delete any
    clin = make_user("clin_a2", role=CLINICIAN, clinic=world.clinic_a)
    membership = ClinicMembership.objects.get(user=clin)
    assert client.post(f"/admin/cases/clinicmembership/{membership.pk}/delete/", {"post": "yes"}).status_code == 302
    client.force_login(world.admin)
    root_membership = ClinicMembership.objects.get(user=root_a)
    assert client.post(f"/admin/cases/clinicmembership/{root_membership.pk}/delete/", {"post": "yes"}).status_code == 302
    assert not ClinicMembership.objects.filter(user=root_a).exists()


# --- 2. account changes are audited ----------------------------------------------------------------

def _user_events(user):
    return AuditEvent.objects.filter(object_type="user", object_id=str(user.pk)).order_by("pk")


def test_account_changes_passwords_and_deletions_are_audited(client, world):
    admin_a = _staff(world, "view_user", "change_user", "delete_user", "delete_clinicmembership")
    client.force_login(admin_a)
    saved = client.post(f"/admin/auth/user/{world.clin_a.pk}/change/", _user_post(world.clin_a, groups=[], is_active=None))
    assert saved.status_code == 302
    [event] = _user_events(world.clin_a)
    assert event.action == "update" and event.actor == admin_a and event.clinic_id == world.clinic_a.pk
    assert event.old_values == {"is_active": True, "groups": [CLINICIAN]}
    assert event.new_values == {"is_active": False, "groups": []}
    # a save that changes none of it writes no event
    client.post(f"/admin/auth/user/{world.clin_a.pk}/change/", _user_post(world.clin_a, is_active=None, groups=[]))
    assert _user_events(world.clin_a).count() == 1

    set_password = client.post(f"/admin/auth/user/{world.clin_a.pk}/password/",
                               {"password1": PASSWORD, "password2": PASSWORD, "usable_password": "true"})
    assert set_password.status_code == 302
    event = _user_events(world.clin_a).last()
    assert event.action == "update" and event.new_values == {"password": "set"} and event.old_values == {}
    world.clin_a.refresh_from_db()
    stored = json.dumps([event.old_values, event.new_values])
    assert PASSWORD not in stored and world.clin_a.password not in stored
    # a refused password form writes nothing
    client.post(f"/admin/auth/user/{world.clin_a.pk}/password/",
                {"password1": PASSWORD, "password2": "different", "usable_password": "true"})
    assert _user_events(world.clin_a).count() == 2

    leaver = make_user("leaver", role=CLINICIAN, clinic=world.clinic_a)  # clin_a's records protect that account
    pk = leaver.pk
    assert client.post(f"/admin/auth/user/{pk}/delete/", {"post": "yes"}).status_code == 302
    [deleted] = AuditEvent.objects.filter(object_type="user", object_id=str(pk))
    assert deleted.action == "delete" and deleted.actor == admin_a
    assert deleted.old_values["username"] == "leaver" and deleted.old_values["groups"] == [CLINICIAN]
    assert deleted.clinic_id == world.clinic_a.pk and not get_user_model().objects.filter(pk=pk).exists()


def test_a_superusers_privilege_changes_are_audited(client, world):
    client.force_login(world.admin)
    permission = Permission.objects.get(codename="view_patient")
    saved = client.post(f"/admin/auth/user/{world.clin_b.pk}/change/", _user_post(
        world.clin_b, is_staff="on", is_superuser="on", user_permissions=[permission.pk],
        groups=[Group.objects.get(name=DERMATOLOGIST).pk]))
    assert saved.status_code == 302
    [event] = _user_events(world.clin_b)
    assert event.actor == world.admin and event.clinic_id == world.clinic_b.pk
    assert event.old_values == {"is_staff": False, "is_superuser": False, "groups": [CLINICIAN], "user_permissions": []}
    assert event.new_values == {"is_staff": True, "is_superuser": True, "groups": [DERMATOLOGIST],
                                "user_permissions": ["cases.view_patient"]}
    added = client.post("/admin/auth/user/add/", {"username": "fresh", "usable_password": "true",
                                                  "password1": PASSWORD, "password2": PASSWORD})
    assert added.status_code == 302
    [created] = _user_events(get_user_model().objects.get(username="fresh"))
    assert created.action == "create" and created.new_values["is_active"] is True
    assert PASSWORD not in json.dumps(created.new_values)
