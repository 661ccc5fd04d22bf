"""The three roles of the app, as Django groups (admins are staff superusers)."""
from __future__ import annotations

from django.contrib.auth import get_user_model
from django.contrib.auth.models import AbstractBaseUser, AnonymousUser
from django.db.models.signals import m2m_changed

CLINICIAN = "clinician"
DERMATOLOGIST = "dermatologist"
ROLE_GROUPS = (CLINICIAN, DERMATOLOGIST)

# Where a user object keeps its group names once read. It lives on the instance, and every request
# loads its own ``request.user``, so a change of groups is seen by the next request at the latest.
_ROLES_ATTR = "_secondlook_role_names"


def role_names(user: AbstractBaseUser | AnonymousUser) -> frozenset[str]:
    """The names of the user's groups, read once per user object (empty for anonymous users).

    A page renders many partials, each running the context processors and their role checks:
    without the memo each check is a query. ``user.groups`` changes made through this user object
    drop the memo themselves (see ``_forget_on_group_change``); others call ``forget_roles``."""
    if not user.is_authenticated:
        return frozenset()
    # getattr/setattr, not __dict__: request.user is a lazy proxy that forwards them to the user
    names = getattr(user, _ROLES_ATTR, None)
    if names is None:
        # .all() rather than values_list: it uses groups prefetched with the user, when they are
        names = frozenset(group.name for group in user.groups.all())
        setattr(user, _ROLES_ATTR, names)
    return names


def forget_roles(user: AbstractBaseUser | AnonymousUser) -> None:
    """Drop the memo of ``role_names``: the next check reads the groups again. Needed only after
    a change this user object could not see (e.g. ``group.user_set.add(user)``)."""
    if hasattr(user, _ROLES_ATTR):
        delattr(user, _ROLES_ATTR)


def in_role(user: AbstractBaseUser | AnonymousUser, role: str) -> bool:
    """True when the user is in the role's group itself (superusers are not assumed to be)."""
    return role in role_names(user)


def has_role(user: AbstractBaseUser | AnonymousUser, role: str) -> bool:
    """True when the user is in the role's group (admins have every role)."""
    if not user.is_authenticated:
        return False
    if user.is_superuser:
        return True
    return in_role(user, role)


def _forget_on_group_change(sender, instance, action: str, reverse: bool, **kwargs) -> None:
    """``user.groups.add/remove/set/clear`` on a user object drops that object's memo, so the
    admin's user forms, the demo accounts and tests never read a stale role."""
    if not reverse and action.startswith("post_") and sender is get_user_model().groups.through:
        forget_roles(instance)


# no sender filter: the user model is not to be looked up while this module is imported
m2m_changed.connect(_forget_on_group_change, dispatch_uid="cases.roles.forget_on_group_change")


def display_name(user) -> str:
    """A user as other people see them: the full name, else the username."""
    return user.get_full_name() or user.username


def is_admin(user: AbstractBaseUser | AnonymousUser) -> bool:
    """Admins see everything: staff superusers."""
    return bool(user.is_authenticated and user.is_staff and user.is_superuser)
