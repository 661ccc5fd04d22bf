"""The three roles of the app, as Django groups (admins are staff superusers)."""
from __future__ import annotations

from django.contrib.auth.models import AbstractBaseUser, AnonymousUser

CLINICIAN = "clinician"
DERMATOLOGIST = "dermatologist"
ROLE_GROUPS = (CLINICIAN, DERMATOLOGIST)


def has_role(user: AbstractBaseUser | AnonymousUser, role: str) -> bool:
    """True when the user is in the role's group (admins have every role)."""
    if not user.is_authenticated:
        return False
    if user.is_superuser:
        return True
    return user.groups.filter(name=role).exists()


def display_name(user) -> str:
    """A user as other people see them: the full name, else the username."""
    return user.get_full_name() or user.username


def is_admin(user: AbstractBaseUser | AnonymousUser) -> bool:
    """Admins see everything: staff superusers."""
    return bool(user.is_authenticated and user.is_staff and user.is_superuser)
