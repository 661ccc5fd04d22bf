"""Admin: user accounts, scoped to the clinic like the clinical records.

Imported at the end of cases.admin. Superusers get Django's user admin unchanged. Staff who are
not superusers (a clinic's admins, given the user permissions) see and change their own clinic's
accounts only, and cannot raise anyone's privileges: ``is_superuser``, ``is_staff`` and
``user_permissions`` are read-only to them, the only group they can grant is the clinician role
(a dermatologist reviews every clinic's queue, so that role is not a clinic's to give), and they
cannot change, or set the password of, an account above that: a superuser, another staff
account, or one holding any other group. An account they add joins their clinic.
"""
from __future__ import annotations

from django.contrib import admin
from django.contrib.auth import get_user_model
from django.contrib.auth.admin import UserAdmin
from django.contrib.auth.models import Group

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


admin.site.unregister(User)
admin.site.register(User, ClinicScopedUserAdmin)
