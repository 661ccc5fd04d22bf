"""A clinic's admin (staff, not a superuser) manages their own clinic's accounts in the admin, by
clicking: another clinic's accounts are not listed; a deactivation is audited and revokes the
account's API tokens; the token form offers only accounts they may manage."""
from __future__ import annotations

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission

from api.models import ApiToken
from audit.models import AuditEvent
from cases.models import Clinic
from tests.support.browser_helpers import PASSWORD, make_user

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_a_clinic_admin_edits_an_account_of_their_clinic_and_sees_no_other_clinics(live_server, browser_page,
                                                                                    artifacts_dir):
    from playwright.sync_api import expect

    page, base = browser_page, live_server.url
    clinic_a, clinic_b = Clinic.objects.create(name="Clinic A"), Clinic.objects.create(name="Clinic B")
    colleague = make_user("dr_alder", "Ada Alder", "clinician", clinic=clinic_a)
    make_user("dr_birch", "Bea Birch", "clinician", clinic=clinic_b)
    manager = make_user("mgr_a", "Max Manager", "clinician", clinic=clinic_a)
    manager.is_staff = True
    manager.save()
    manager.user_permissions.add(*Permission.objects.filter(
        codename__in=["view_user", "change_user", "view_apitoken", "add_apitoken"]))
    make_user("dr_derm", "Dee Derm", "dermatologist", clinic=clinic_a)  # beyond the clinic's admin
    token = ApiToken(user=colleague, name="EHR bridge")
    token.issue()
    token.save()

    page.goto(f"{base}/admin/login/")
    page.get_by_label("Username").fill("mgr_a")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()
    page.wait_for_url(f"{base}/admin/")
    page.get_by_role("link", name="Users").click()
    listing = page.locator("#result_list")
    expect(listing).to_contain_text("dr_alder")
    expect(listing).not_to_contain_text("dr_birch")

    listing.get_by_role("link", name="dr_alder").click()
    expect(page.locator("input[name=is_superuser]")).to_have_count(0)
    page.get_by_label("First name").fill("Adaline")
    page.get_by_label("Active").uncheck()
    page.get_by_role("button", name="Save", exact=True).click()
    expect(page.locator(".messagelist")).to_contain_text("was changed successfully")
    expect(page.locator("#result_list")).not_to_contain_text("dr_birch")
    page.screenshot(path=str(artifacts_dir / "42-clinic-admin-users.png"), full_page=True)
    changed = get_user_model().objects.get(pk=colleague.pk)
    assert changed.first_name == "Adaline" and not changed.is_active
    [event] = AuditEvent.objects.filter(object_type="user", object_id=str(colleague.pk))
    assert event.actor == manager and event.old_values == {"is_active": True} and event.new_values == {"is_active": False}
    assert ApiToken.objects.get(pk=token.pk).state == "revoked"  # reactivating the account revives no token

    # a token can be issued only for an account they may manage: not the clinic's dermatologist
    page.goto(f"{base}/admin/api/apitoken/add/")
    offered = page.get_by_label("User").locator("option").all_inner_texts()
    assert "dr_alder" in offered and "mgr_a" in offered
    assert "dr_derm" not in offered and "dr_birch" not in offered
