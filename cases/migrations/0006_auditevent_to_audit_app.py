"""The audit trail moved to its own app (``audit``); its table stays where it is."""
from django.db import migrations


class Migration(migrations.Migration):

    dependencies = [
        ("cases", "0005_prediction_assessment"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[migrations.DeleteModel(name="AuditEvent")],
            database_operations=[],
        ),
    ]
