"""Admins issue and revoke API tokens; the secret is shown once, only its hash is stored."""
from __future__ import annotations

from django.contrib import admin, messages
from django.contrib.auth import get_user_model
from django.urls import reverse
from django.utils import timezone
from django.utils.html import format_html

from api.models import ApiToken
from audit import log as audit_log
from cases.admin import in_own_clinic
from cases.admin_users import manageable_accounts


@admin.register(ApiToken)
class ApiTokenAdmin(admin.ModelAdmin):
    list_display = ["prefix", "name", "user", "state", "read_only", "created_at", "created_by", "expires_at",
                    "last_used_at"]
    list_filter = ["read_only", "revoked_at"]
    search_fields = ["name", "prefix", "user__username"]
    readonly_fields = ["prefix", "created_by", "created_at", "revoked_at", "last_used_at", "audit_trail"]
    actions = ["revoke"]

    def get_queryset(self, request):
        # staff who are not superusers manage their own clinic's tokens only
        return super().get_queryset(request).filter(user__in=in_own_clinic(get_user_model().objects.all(), request.user))

    def formfield_for_foreignkey(self, db_field, request, **kwargs):
        field = super().formfield_for_foreignkey(db_field, request, **kwargs)
        if db_field.name == "user" and not request.user.is_superuser:
            # a token acts as its user: never one outside the clinic, nor one whose account they may
            # not change (a superuser, another staff account, a dermatologist): the token would give
            # them its powers
            field.queryset = manageable_accounts(in_own_clinic(field.queryset, request.user), request.user)
        return field

    def get_fields(self, request, obj=None):
        editable = ["user", "name", "read_only", "expires_at"]
        return editable if obj is None else [*editable, *self.readonly_fields]

    def get_readonly_fields(self, request, obj=None):
        # a token's owner never changes: issue a new token instead
        return self.readonly_fields if obj is None else ["user", *self.readonly_fields]

    @admin.display(description="state")
    def state(self, token: ApiToken) -> str:
        return token.state

    @admin.display(description="audit trail")
    def audit_trail(self, token: ApiToken) -> str:
        """The audit events of calls made with this token (the trail records the token's id)."""
        url = reverse("admin:audit_auditevent_changelist") + f"?api_token_id={token.pk}"
        return format_html('<a href="{}">Events recorded with this token</a>', url)

    def save_model(self, request, obj: ApiToken, form, change) -> None:
        if change:
            old = audit_log.snapshot(ApiToken.objects.get(pk=obj.pk), ("name", "read_only", "expires_at"))
            super().save_model(request, obj, form, change)
            audit_log.record(action="update", obj=obj, request=request, old=old,
                             new=audit_log.snapshot(obj, ("name", "read_only", "expires_at")))
            return
        key = obj.issue()
        obj.created_by = request.user
        super().save_model(request, obj, form, change)
        audit_log.record(action="create", obj=obj, request=request,
                         new=audit_log.snapshot(obj, ("user", "name", "prefix", "read_only", "expires_at")))
        messages.warning(request, f"The new token for {obj.user} is {key} — copy it now: it is not shown again.")

    def has_change_permission(self, request, obj=None) -> bool:
        # an existing token of an account they may not manage (a dermatologist's, another staff
        # account's) is shown read-only: lifting its expiry or its read-only flag would widen it;
        # revoking it (the list's action) stays open to them
        if obj is not None and not request.user.is_superuser and not manageable_accounts(
                get_user_model().objects.filter(pk=obj.user_id), request.user).exists():
            return False
        return super().has_change_permission(request, obj)

    def has_delete_permission(self, request, obj=None) -> bool:
        return False  # revoke instead: the record of who held which token stays

    @admin.action(description="Revoke selected tokens", permissions=["change"])
    def revoke(self, request, queryset) -> None:
        now = timezone.now()
        revoked = 0
        for token in queryset.filter(revoked_at__isnull=True):
            if ApiToken.objects.filter(pk=token.pk, revoked_at__isnull=True).update(revoked_at=now):
                audit_log.record(action="update", obj=token, request=request, old={"revoked_at": None},
                                 new={"revoked_at": now.isoformat()})
                revoked += 1
        messages.success(request, f"{revoked} token(s) revoked; they no longer authenticate.")
