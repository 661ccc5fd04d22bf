"""Re-measure a version's promotion gate against the active model on the frozen benchmark."""
from django.core.management.base import BaseCommand, CommandError

from classifier.lifecycle import LifecycleError
from classifier.models import ModelVersion
from classifier.retraining import remeasure_gate


class Command(BaseCommand):
    help = ("Compare model versions with the active one on the frozen benchmark (paired, lesion-level bootstrap) "
            "and store the result as their promotion gate.")

    def add_arguments(self, parser):
        parser.add_argument("versions", nargs="+", help="version names (ready or retired; not the active one)")

    def handle(self, *args, **options):
        for name in options["versions"]:
            version = ModelVersion.objects.filter(version=name).first()
            if version is None:
                raise CommandError(f"no model version {name!r}")
            try:
                gate = remeasure_gate(version)
            except LifecycleError as exc:
                raise CommandError(str(exc)) from None
            verdict = "allowed" if gate.get("allowed") else "refused"
            self.stdout.write(f"{name}: {verdict} against {(gate.get('active') or {}).get('version') or 'no model'}")
            for reason in gate.get("reasons", []):
                self.stdout.write(f"  - {reason}")
