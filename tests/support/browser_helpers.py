"""Helpers shared by the browser tests: users with a role and a password, and logging in."""
from __future__ import annotations

from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group

from cases.models import ClinicMembership

PASSWORD = "browser-test-password-1"


def make_user(username, full_name, role, clinic=None):
    first, last = full_name.split(" ", 1)
    user = get_user_model().objects.create_user(username=username, password=PASSWORD, first_name=first, last_name=last)
    user.groups.add(Group.objects.get_or_create(name=role)[0])
    if clinic:
        ClinicMembership.objects.create(user=user, clinic=clinic)
    return user


def log_in(page, base, username):
    page.goto(f"{base}/accounts/login/")
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()
    page.wait_for_url(f"{base}/")


def admin_log_in(page, base, username="root"):
    """Create a superuser and log in through the admin's own login page."""
    get_user_model().objects.create_superuser(username, f"{username}@example.org", PASSWORD)
    page.goto(f"{base}/admin/login/")
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()
    page.wait_for_url(f"{base}/admin/")
    return get_user_model().objects.get(username=username)


def fill_histopathology(page, *, diagnosis: str, reference: str, reason: str | None = None) -> None:
    """Fill the case page's histopathology form (opened), dated today; ``reason`` for a correction."""
    from django.utils import timezone

    page.get_by_label("Histopathological diagnosis").select_option(diagnosis)
    page.get_by_label("Report date").fill(timezone.localdate().isoformat())
    page.get_by_label("Report reference").fill(reference)
    if reason is not None:
        page.get_by_label("Reason for the correction").fill(reason)
