from django.apps import AppConfig


class ClassifierConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "classifier"
    verbose_name = "Classifier and model registry"

    def ready(self) -> None:
        # The ML core reads no settings itself: hand it the ones settings.py parsed.
        from django.conf import settings

        from mlcore import options

        options.configure(settings.SECONDLOOK_INFERENCE)
