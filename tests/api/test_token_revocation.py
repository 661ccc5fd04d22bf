"""A deactivated account's tokens are revoked, not only refused while it is inactive: reactivating
it revives none. An account leaving its clinic loses its tokens too (its clinic's admins no longer
see them). Each revocation is audited."""
from __future__ import annotations

from django.contrib.auth.models import Permission
from django.utils import timezone
from rest_framework.test import APIClient

from api.models import ApiToken
from audit.models import AuditEvent
from cases.models import ClinicMembership
from tests.api.conftest import issue_token
from tests.support.case_helpers import make_user


def _me(key: str):
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {key}")
    return client.get("/api/v1/me/")


def _revocations():
    return AuditEvent.objects.filter(object_type="apitoken", new_values__reason__isnull=False).order_by("pk")


def test_deactivating_revokes_and_reactivating_revives_nothing(world):
    key = issue_token(world.clin_a)
    old_revoked = issue_token(world.clin_a, revoked_at=timezone.now())
    other = issue_token(world.clin_b)
    assert _me(key).status_code == 200
    world.clin_a.is_active = False
    world.clin_a.save()
    world.clin_a.is_active = True
    world.clin_a.save()
    refused = _me(key)
    assert refused.status_code == 401 and refused.json()["detail"] == "This token is revoked."
    assert _me(other).status_code == 200  # another account's token is untouched
    [event] = _revocations()
    token = ApiToken.objects.get(prefix=key[:9])
    assert event.object_id == str(token.pk) and event.actor is None and event.clinic_id == world.clinic_a.pk
    assert event.new_values["reason"] == "account deactivated" and event.old_values == {"revoked_at": None}
    assert ApiToken.objects.get(prefix=old_revoked[:9]).revoked_at < token.revoked_at  # not re-stamped
    # a token issued after reactivation works; a save that is no deactivation revokes nothing
    fresh = issue_token(world.clin_a)
    world.clin_a.first_name = "Renamed"
    world.clin_a.save()
    world.clin_a.save(update_fields=["last_login"])
    assert _me(fresh).status_code == 200


def test_deactivating_in_the_admin_revokes_as_the_admin(client, world):
    from tests.reliability.test_account_escalation import _user_post

    key = issue_token(world.clin_a)
    client.force_login(world.admin)
    saved = client.post(f"/admin/auth/user/{world.clin_a.pk}/change/", _user_post(world.clin_a, is_active=None))
    assert saved.status_code == 302
    [event] = _revocations()
    assert event.actor == world.admin and event.new_values["reason"] == "account deactivated"
    assert _me(key).json()["detail"] == "This token is revoked."


def test_leaving_the_clinic_revokes_the_tokens(client, world):
    key = issue_token(world.clin_a)
    ClinicMembership.objects.get(user=world.clin_a).delete()
    assert _me(key).json()["detail"] == "This token is revoked."
    [event] = _revocations()
    assert event.new_values["reason"] == "clinic membership removed" and event.clinic_id == world.clinic_a.pk

    # in the admin, by the clinic's admin: the event names them
    staff = make_user("admin_a", clinic=world.clinic_a)
    staff.is_staff = True
    staff.save()
    staff.user_permissions.add(*Permission.objects.filter(codename__in=["view_clinicmembership",
                                                                          "delete_clinicmembership"]))
    colleague = make_user("clin_a2", clinic=world.clinic_a)
    second = issue_token(colleague)
    client.force_login(staff)
    membership = ClinicMembership.objects.get(user=colleague)
    assert client.post(f"/admin/cases/clinicmembership/{membership.pk}/delete/", {"post": "yes"}).status_code == 302
    assert _me(second).status_code == 401
    event = _revocations().last()
    assert event.actor == staff and event.clinic_id == world.clinic_a.pk
    # an account deleted outright takes its tokens with it, without an error
    doomed = make_user("doomed", clinic=world.clinic_a)
    issue_token(doomed)
    doomed.delete()
    assert not ApiToken.objects.filter(user_id=doomed.pk).exists()
