"""Register the configured default model and make it active if nothing is active yet (refused,
exit status 1, when its card lacks the image checks); after an upgrade, register the model it
bundled (classifier.lifecycle.adopt_bundled_release)."""
from django.core.management.base import BaseCommand, CommandError

from classifier.lifecycle import adopt_bundled_release
from classifier.registry import DefaultModelRefused, ensure_default_registered


class Command(BaseCommand):
    help = "Register the shipped/default model artifact in the model registry (idempotent)."

    def handle(self, *args, **options):
        try:
            version = ensure_default_registered()
        except DefaultModelRefused as exc:
            raise CommandError(f"No active model version. {exc}") from None
        bundled = adopt_bundled_release()
        if bundled is not None and bundled.status == bundled.Status.ACTIVE:
            self.stdout.write(f"Bundled model {bundled.version} activated: {bundled.notes}")
            version = bundled
        elif bundled is not None:
            self.stdout.write(f"Bundled model {bundled.version} registered, ready for the promotion gate. "
                              f"{bundled.notes}")
        self.stdout.write(f"Active model: {version.version} ({version.artifact_path})")
