"""The audit trail's model, taken over from ``cases`` (whose 0001 created the table): state only."""
import django.db.models.deletion
from django.conf import settings
from django.db import migrations, models

ACTIONS = [('view', 'View'), ('download', 'Download file'), ('create', 'Create'), ('update', 'Update'),
           ('delete', 'Delete'), ('upload', 'Upload'), ('score', 'Score'), ('retry', 'Retry'), ('claim', 'Claim'),
           ('release', 'Release'), ('review', 'Review'), ('train', 'Train model'), ('cancel', 'Cancel training'),
           ('activate', 'Activate model'), ('rollback', 'Roll back model'), ('rescore', 'Re-score images')]


class Migration(migrations.Migration):

    initial = True

    dependencies = [
        ("cases", "0006_auditevent_to_audit_app"),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            database_operations=[],
            state_operations=[
                migrations.CreateModel(
                    name="AuditEvent",
                    fields=[
                        ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                        ("actor_username", models.CharField(blank=True, max_length=150)),
                        ("action", models.CharField(choices=ACTIONS, max_length=10)),
                        ("object_type", models.CharField(max_length=40)),
                        ("object_id", models.CharField(max_length=40)),
                        ("patient_id", models.BigIntegerField(blank=True, db_index=True, null=True)),
                        ("clinic_id", models.BigIntegerField(blank=True, db_index=True, null=True)),
                        ("old_values", models.JSONField(blank=True, default=dict)),
                        ("new_values", models.JSONField(blank=True, default=dict)),
                        ("ip_address", models.GenericIPAddressField(blank=True, null=True)),
                        ("created_at", models.DateTimeField(auto_now_add=True, db_index=True)),
                        ("actor", models.ForeignKey(blank=True, null=True, on_delete=django.db.models.deletion.SET_NULL,
                                                    related_name="+", to=settings.AUTH_USER_MODEL)),
                    ],
                    options={
                        "db_table": "cases_auditevent",
                        "ordering": ["-created_at", "-pk"],
                        "indexes": [models.Index(fields=["object_type", "object_id"], name="audit_object_idx")],
                        "constraints": [models.CheckConstraint(condition=models.Q(("action__in", [a for a, _ in ACTIONS])),
                                                               name="audit_action_valid")],
                    },
                ),
            ],
        ),
    ]
