"""Register the configured default model and make it active if nothing is active yet."""
from django.core.management.base import BaseCommand

from classifier.registry import ensure_default_registered


class Command(BaseCommand):
    help = "Register the shipped/default model artifact in the model registry (idempotent)."

    def handle(self, *args, **options):
        version = ensure_default_registered()
        self.stdout.write(f"Active model: {version.version} ({version.artifact_path})")
