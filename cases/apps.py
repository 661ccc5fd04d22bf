from django.apps import AppConfig


class CasesConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "cases"
    verbose_name = "Patients, cases and reviews"

    def ready(self) -> None:
        # Retraining learns from dermatologist-confirmed lesions; the registry asks for them
        # through this hook because it may not import the clinical records.
        from cases.training_labels import reviewed_records
        from classifier.retraining import set_reviewed_records_provider

        set_reviewed_records_provider(reviewed_records)

        from cases import file_cleanup

        # an image's file and a prediction's heatmap go with their rows, however they are deleted
        file_cleanup.connect()

        from django.core import checks

        from cases.checks import report_font

        # a deployment check: the host's fonts matter where reports are printed, not in development
        checks.register(report_font, "reports", deploy=True)
