"""Tokens die with their holder's access: an account made inactive, or taken out of its clinic,
has its unrevoked tokens revoked (so reactivating it, or attaching it to a clinic again, revives
none of them), each revocation written to the audit trail.

The actor is the admin whose request caused it where the admin tagged the saved or deleted object
with it (``_audit_request``: cases.admin, cases.admin_users), otherwise the system. A bulk
``QuerySet.update(is_active=False)`` sends no signal: such an account's tokens are still refused
at use (api.authentication), though not revoked."""
from __future__ import annotations

from django.contrib.auth import get_user_model
from django.db.models.signals import post_save, pre_delete, pre_save
from django.dispatch import receiver
from django.utils import timezone

from api.models import ApiToken
from audit import log as audit_log
from cases.models import ClinicMembership

User = get_user_model()


def revoke_tokens_of(user, *, reason: str, request=None) -> int:
    """Revoke ``user``'s unrevoked tokens, one audit event each; returns how many."""
    now = timezone.now()
    revoked = 0
    for token in ApiToken.objects.select_related("user").filter(user=user, revoked_at__isnull=True):
        if ApiToken.objects.filter(pk=token.pk, revoked_at__isnull=True).update(revoked_at=now):
            audit_log.record(action="update", obj=token, request=request, old={"revoked_at": None},
                             new={"revoked_at": now.isoformat(), "reason": reason})
            revoked += 1
    return revoked


@receiver(pre_save, sender=User, dispatch_uid="api_tokens_note_deactivation")
def _note_deactivation(sender, instance, raw=False, update_fields=None, **kwargs) -> None:
    """Compare with the stored account: is this save the one that makes it inactive? (A save of an
    active account, or one not writing ``is_active``, such as a login's, costs no query.)"""
    instance._api_tokens_deactivated = (
        not raw and not instance.is_active and instance.pk is not None
        and (update_fields is None or "is_active" in update_fields)
        and User.objects.filter(pk=instance.pk, is_active=True).exists())


@receiver(post_save, sender=User, dispatch_uid="api_tokens_revoke_on_deactivation")
def _revoke_on_deactivation(sender, instance, **kwargs) -> None:
    if getattr(instance, "_api_tokens_deactivated", False):
        instance._api_tokens_deactivated = False
        revoke_tokens_of(instance, reason="account deactivated", request=getattr(instance, "_audit_request", None))


@receiver(pre_delete, sender=ClinicMembership, dispatch_uid="api_tokens_revoke_on_leaving_clinic")
def _revoke_on_leaving_clinic(sender, instance, **kwargs) -> None:
    """Before the row goes (inside the deletion's transaction), so that each event still names the
    clinic, whose admins no longer see the tokens once the account has left it."""
    revoke_tokens_of(instance.user, reason="clinic membership removed",
                     request=getattr(instance, "_audit_request", None))
