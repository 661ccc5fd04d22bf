"""The trail is append-only in PostgreSQL itself (audit migration 0003): raw SQL and a plain
QuerySet cannot change or delete an event; deleting the actor's account still clears the actor
and nothing else. SQLite keeps the ORM's refusal only, so these run where DATABASE_URL names
PostgreSQL (as CI does)."""
from __future__ import annotations

import pytest
from django.db import IntegrityError, connection, transaction

from audit import log as audit_log
from audit.models import AuditEvent
from tests.support.case_helpers import make_user


@pytest.fixture
def event(db):
    if connection.vendor != "postgresql":
        pytest.skip("the trigger is PostgreSQL's (DATABASE_URL); SQLite keeps the ORM's refusal")
    user = make_user("writer")
    return audit_log.record(action="create", obj=user, actor=user, new={"what": "kept"})


def test_the_database_refuses_to_change_or_delete_an_event(event):
    for statement in ("UPDATE cases_auditevent SET action = 'view' WHERE id = %s",
                      "DELETE FROM cases_auditevent WHERE id = %s"):
        with pytest.raises(IntegrityError, match="append-only"), transaction.atomic(), connection.cursor() as cursor:
            cursor.execute(statement, [event.pk])
    with pytest.raises(IntegrityError, match="append-only"), transaction.atomic():
        AuditEvent._base_manager.filter(pk=event.pk).update(new_values={"what": "changed"})
    kept = AuditEvent.objects.get(pk=event.pk)
    assert (kept.action, kept.new_values) == ("create", {"what": "kept"})


def test_deleting_the_actor_clears_the_actor_only(event):
    # clearing the actor together with anything else is refused
    with pytest.raises(IntegrityError, match="append-only"), transaction.atomic():
        AuditEvent._base_manager.filter(pk=event.pk).update(actor=None, actor_username="")
    event.actor.delete()
    kept = AuditEvent.objects.get(pk=event.pk)
    assert (kept.actor_id, kept.actor_username, kept.new_values) == (None, "writer", {"what": "kept"})
