"""Create the demo accounts (clinician, dermatologist, admin) once, printing fresh passwords.

Refused in production (``DJANGO_ENV=production``): a superuser named ``admin`` whose password went
to a terminal or a log has no place there; ``createsuperuser`` makes the real accounts."""
from __future__ import annotations

import secrets

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

from cases.roles import CLINICIAN, DERMATOLOGIST, ROLE_GROUPS

DEMO_CLINIC = "Demo Clinic"
DEMO_USERS = (
    # username, full name, role group (None = admin)
    ("clinician", "Dr Clara Clinician", CLINICIAN),
    ("dermatologist", "Dr Derek Dermatologist", DERMATOLOGIST),
    ("admin", "Ada Admin", None),
)


class Command(BaseCommand):
    help = "Create demo accounts; safe to re-run (existing accounts are left as they are)."

    def add_arguments(self, parser):
        parser.add_argument("--reset-passwords", action="store_true", help="give the demo accounts new passwords")

    @transaction.atomic
    def handle(self, *args, reset_passwords: bool = False, **options):
        if settings.PRODUCTION:
            raise CommandError("setup_demo creates demo accounts (a superuser named admin among them) and is refused "
                               "with DJANGO_ENV=production: create real accounts with `manage.py createsuperuser`")
        groups = {name: Group.objects.get_or_create(name=name)[0] for name in ROLE_GROUPS}
        User = get_user_model()
        printed = []
        for username, full_name, role in DEMO_USERS:
            user, created = User.objects.get_or_create(
                username=username,
                defaults={"first_name": full_name.rsplit(" ", 1)[0], "last_name": full_name.rsplit(" ", 1)[1]},
            )
            if role is None:
                user.is_staff = user.is_superuser = True
            else:
                user.groups.add(groups[role])
            if created or reset_passwords:
                password = secrets.token_urlsafe(12)
                user.set_password(password)
                printed.append((username, password, role or "admin"))
            user.save()
            self._after_user(user, role)
        if printed:
            self.stdout.write(self.style.SUCCESS("Demo accounts (shown once; keep them somewhere safe):"))
            for username, password, role in printed:
                self.stdout.write(f"  {role:<14} username: {username:<14} password: {password}")
        else:
            self.stdout.write("Demo accounts already exist; run `manage.py setup_demo --reset-passwords` for new passwords.")

    def _after_user(self, user, role) -> None:
        """Demo clinicians (and the admin, so they can try the clinician pages) join the demo clinic.

        Dermatologists need no clinic: they review the queue of every clinic.
        """
        from cases.models import Clinic, ClinicMembership

        if role == DERMATOLOGIST:
            return
        clinic, _ = Clinic.objects.get_or_create(name=DEMO_CLINIC)
        ClinicMembership.objects.get_or_create(user=user, defaults={"clinic": clinic})
