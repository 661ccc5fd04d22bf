"""The trail is append-only in PostgreSQL itself, not only in the ORM: a row-level trigger refuses
any UPDATE or DELETE of an audit event (raw SQL, a plain QuerySet through ``_base_manager``), with
one exception: the actor's account being deleted sets ``actor_id`` to NULL (``on_delete=SET_NULL``)
and nothing else; the name stays in ``actor_username``. TRUNCATE (a test database's flush) is not
a row event. SQLite, the embedded development database, keeps the ORM's refusal only."""
from django.db import migrations

FUNCTION = "secondlook_audit_append_only"
TRIGGER = "cases_auditevent_append_only"

CREATE = f"""
CREATE OR REPLACE FUNCTION {FUNCTION}() RETURNS trigger AS $$
BEGIN
    IF TG_OP = 'UPDATE' AND OLD.actor_id IS NOT NULL AND NEW.actor_id IS NULL
       AND (to_jsonb(NEW) - 'actor_id') = (to_jsonb(OLD) - 'actor_id') THEN
        RETURN NEW;  -- the actor's account was deleted
    END IF;
    RAISE EXCEPTION 'audit events are append-only: % of event % refused', TG_OP, OLD.id
        USING ERRCODE = 'restrict_violation';
END
$$ LANGUAGE plpgsql;
DROP TRIGGER IF EXISTS {TRIGGER} ON cases_auditevent;
CREATE TRIGGER {TRIGGER} BEFORE UPDATE OR DELETE ON cases_auditevent
    FOR EACH ROW EXECUTE FUNCTION {FUNCTION}();
"""

DROP = f"""
DROP TRIGGER IF EXISTS {TRIGGER} ON cases_auditevent;
DROP FUNCTION IF EXISTS {FUNCTION}();
"""


def _run(sql: str):
    def run(apps, schema_editor) -> None:
        if schema_editor.connection.vendor == "postgresql":
            schema_editor.execute(sql, None)  # no parameters: the % in RAISE is plpgsql's
    return run


class Migration(migrations.Migration):

    dependencies = [
        ("audit", "0002_auditevent_api_token"),
    ]

    operations = [
        migrations.RunPython(_run(CREATE), _run(DROP), elidable=False),
    ]
