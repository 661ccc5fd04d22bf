"""Admin: user accounts, scoped to the clinic like the clinical records.

Imported at the end of cases.admin. Superusers get Django's user admin unchanged. Staff who are
not superusers (a clinic's admins, given the user permissions) see and change their own clinic's
accounts only, and cannot raise anyone's privileges: ``is_superuser``, ``is_staff`` and
``user_permissions`` are read-only to them, the only group they can grant is the clinician role
(a dermatologist reviews every clinic's queue, so that role is not a clinic's to give), and they
cannot change, or set the password of, an account above that: a superuser, another staff
account, or one holding any other group. An account they add joins their clinic.

Every change of an account here is written to the audit trail (``audit.log``): its active/staff/
superuser flags, groups and permissions, old and new, a password set (never the password) and a
deletion, under the account's clinic.
"""
from __future__ import annotations

import copy

from django.contrib import admin
from django.contrib.admin.utils import unquote
from django.contrib.auth import get_user_model
from django.contrib.auth.admin import UserAdmin
from django.contrib.auth.models import Group
from django.db.models import Q

from audit import log as audit_log
from cases.access import clinic_of
from cases.admin import in_own_clinic
from cases.models import ClinicMembership
from cases.roles import CLINICIAN

User = get_user_model()
# the groups a clinic's staff may grant or take away
CLINIC_GRANTABLE_GROUPS = (CLINICIAN,)
PRIVILEGE_FIELDS = ("is_superuser", "is_staff", "user_permissions")


def beyond_clinic_staff(account, staff) -> bool:
    """True when ``staff`` (not a superuser) may not change ``account``: a superuser, another staff
    account, or one in a group the clinic cannot grant (taking such an account over, by its
    password, would give them more than their own)."""
    if account.is_superuser:
        return True
    if account.is_staff and account.pk != staff.pk:
        return True
    return account.pk != staff.pk and account.groups.exclude(name__in=CLINIC_GRANTABLE_GROUPS).exists()


def manageable_accounts(queryset, staff):
    """``queryset`` (of accounts) less those ``beyond_clinic_staff`` refuses ``staff``, as a query:
    the accounts a clinic's admin may act for (issue a token to, attach to the clinic). ``staff``
    themselves stay, unless a superuser (a superuser's choices are not narrowed by callers)."""
    privileged = User.objects.filter(
        Q(is_staff=True) | Q(groups__in=Group.objects.exclude(name__in=CLINIC_GRANTABLE_GROUPS))).values("pk")
    return queryset.exclude(is_superuser=True).exclude(Q(pk__in=privileged) & ~Q(pk=staff.pk))


ACCOUNT_FLAGS = ("username", "is_active", "is_staff", "is_superuser")


def account_state(account) -> dict:
    """What the audit trail keeps of an account's standing (read from the database for the m2m)."""
    state = audit_log.snapshot(account, ACCOUNT_FLAGS)
    state["groups"] = sorted(account.groups.values_list("name", flat=True))
    state["user_permissions"] = sorted(f"{app}.{codename}" for app, codename in account.user_permissions.values_list(
        "content_type__app_label", "codename"))
    return state


def record_account(*, action: str, account, request, old=None, new=None) -> None:
    """One audit event about ``account``, under its clinic (so the clinic's admins see it in their trail)."""
    clinic = ClinicMembership.objects.filter(user_id=account.pk).values_list("clinic_id", flat=True).first()
    scoped = copy.copy(account)
    scoped.audit_scope = lambda: (None, clinic)
    audit_log.record(action=action, obj=scoped, request=request, old=old, new=new)


class ClinicScopedUserAdmin(UserAdmin):
    def get_queryset(self, request):
        return in_own_clinic(super().get_queryset(request), request.user)

    def get_readonly_fields(self, request, obj=None):
        readonly = list(super().get_readonly_fields(request, obj))
        return readonly if request.user.is_superuser else [*readonly, *PRIVILEGE_FIELDS]

    def formfield_for_manytomany(self, db_field, request, **kwargs):
        if db_field.name == "groups" and not request.user.is_superuser:
            kwargs["queryset"] = Group.objects.filter(name__in=CLINIC_GRANTABLE_GROUPS)
        return super().formfield_for_manytomany(db_field, request, **kwargs)

    def has_add_permission(self, request):
        # an added account joins the staff user's clinic: without one, there is nowhere to add it
        return super().has_add_permission(request) and (request.user.is_superuser or clinic_of(request.user) is not None)

    def has_change_permission(self, request, obj=None):
        allowed = super().has_change_permission(request, obj)
        return allowed and (obj is None or request.user.is_superuser or not beyond_clinic_staff(obj, request.user))

    def has_delete_permission(self, request, obj=None):
        allowed = super().has_delete_permission(request, obj)
        return allowed and (obj is None or request.user.is_superuser or not beyond_clinic_staff(obj, request.user))

    def save_model(self, request, obj, form, change):
        # the state before the form, kept for the audit event written once the groups are saved too
        obj._audit_old = account_state(User.objects.get(pk=obj.pk)) if change else {}
        obj._audit_request = request  # the actor of a token revocation the save may cause (api.signals)
        super().save_model(request, obj, form, change)
        if not change and not request.user.is_superuser:
            membership = ClinicMembership.objects.create(user=obj, clinic=clinic_of(request.user))
            audit_log.record(action="create", obj=membership, request=request,
                             new=audit_log.snapshot(membership, ("user", "clinic")))

    def save_related(self, request, form, formsets, change):
        # groups the staff user cannot grant (nor saw offered) stay as they were
        kept = []
        if change and not request.user.is_superuser:
            kept = list(form.instance.groups.exclude(name__in=CLINIC_GRANTABLE_GROUPS))
        super().save_related(request, form, formsets, change)
        form.instance.groups.add(*kept)
        old, new = audit_log.changed(getattr(form.instance, "_audit_old", {}), account_state(form.instance))
        if new or not change:
            record_account(action="update" if change else "create", account=form.instance, request=request,
                           old=old, new=new)

    def delete_model(self, request, obj):
        record_account(action="delete", account=obj, request=request, old=account_state(obj))
        super().delete_model(request, obj)

    def delete_queryset(self, request, queryset):
        for obj in queryset:
            self.delete_model(request, obj)

    def user_change_password(self, request, id, form_url=""):
        """Django's password form, audited: that a password was set (or password login disabled),
        never the password nor its hash."""
        account = self.get_object(request, unquote(id))  # None where not found (Django answers 404)
        before = account.password if account is not None else None
        response = super().user_change_password(request, id, form_url)
        if request.method == "POST" and account is not None:
            account.refresh_from_db()
            if account.password != before:
                record_account(action="update", account=account, request=request,
                               new={"password": "set" if account.has_usable_password() else "disabled"})
        return response


admin.site.unregister(User)
admin.site.register(User, ClinicScopedUserAdmin)
