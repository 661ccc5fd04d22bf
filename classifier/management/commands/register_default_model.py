"""Register the configured default model and make it active if nothing is active yet; after an
upgrade, register the model it bundled (classifier.lifecycle.adopt_bundled_release)."""
from django.core.management.base import BaseCommand

from classifier.lifecycle import adopt_bundled_release
from classifier.registry import ensure_default_registered


class Command(BaseCommand):
    help = "Register the shipped/default model artifact in the model registry (idempotent)."

    def handle(self, *args, **options):
        version = ensure_default_registered()
        bundled = adopt_bundled_release()
        if bundled is not None and bundled.status == bundled.Status.ACTIVE:
            self.stdout.write(f"Bundled model {bundled.version} activated: {bundled.notes}")
            version = bundled
        elif bundled is not None:
            self.stdout.write(f"Bundled model {bundled.version} registered, ready for the promotion gate.")
        self.stdout.write(f"Active model: {version.version} ({version.artifact_path})")
