"""Re-assess a registered version's image checks (quality thresholds, out-of-domain detector,
prediction sets) and put them into service in place, gated and audited
(`classifier.lifecycle.reassess_image_checks`):

    python manage.py reassess_model VERSION --reason "..." [--data DIR] [--cache DIR]
    python manage.py reassess_model VERSION --reason "..." --assessed DIR

The first fits them on a copy of the version's artifact (`training.assessment.assess_artifact`,
on its recorded splits), the second takes a copy already re-assessed elsewhere (``python -m
training assess --model COPY`` on a host with the data). Either way the version's files change
only once the new card has passed: for the active version, the image checks every activation asks
for. Running ``python -m training assess`` on a registered directory itself bypasses this check
and the audit trail (the training pipeline has no database by design): assess a copy instead.
"""
from __future__ import annotations

import getpass
import shutil
import tempfile
from pathlib import Path

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from classifier import artifact_store, lifecycle
from classifier.models import ModelVersion


class Command(BaseCommand):
    help = "Re-assess a model version's image checks and put them into service in place (gated, audited)."

    def add_arguments(self, parser):
        parser.add_argument("version", help="the registered version's name")
        parser.add_argument("--reason", required=True, help="why (kept in the audit trail)")
        parser.add_argument("--assessed", type=Path, default=None,
                            help="a copy of the artifact already re-assessed (python -m training assess --model COPY)")
        parser.add_argument("--data", type=Path, default=None, help="data root (default SECONDLOOK_DATA_DIR)")
        parser.add_argument("--cache", type=Path, default=None, help="cache dir (default SECONDLOOK_CACHE_DIR)")
        parser.add_argument("--user", default=None, help="the admin account doing it, for the audit trail")

    def handle(self, *args, **options):
        version = ModelVersion.objects.filter(version=options["version"]).first()
        if version is None:
            raise CommandError(f"No model version {options['version']!r}.")
        user = None
        if options["user"]:
            user = get_user_model().objects.filter(username=options["user"]).first()
            if user is None:
                raise CommandError(f"No user {options['user']!r}.")
        staging = None
        try:
            assessed = options["assessed"]
            if assessed is None:
                staging = Path(tempfile.mkdtemp(prefix=f".reassess-{version.pk}-", dir=_scratch()))
                assessed = staging / "artifact"
                shutil.copytree(artifact_store.local_dir(version), assessed)
                from training import assessment  # TensorFlow: only when it fits them here

                assessment.assess_artifact(assessed, options["data"] or settings.SECONDLOOK_DATA_DIR,
                                           options["cache"] or settings.SECONDLOOK_CACHE_DIR, write=True)
            done = lifecycle.reassess_image_checks(
                version=version, assessed_dir=assessed, reason=options["reason"], user=user,
                origin=f"manage.py reassess_model, OS user {getpass.getuser()}")
        except (lifecycle.LifecycleError, artifact_store.ArtifactUnavailable, OSError) as exc:
            raise CommandError(str(exc)) from None
        finally:
            if staging is not None:
                shutil.rmtree(staging, ignore_errors=True)
        self.stdout.write(f"{done.version}: model card {(done.old_card_sha256 or 'unknown')[:12]} -> "
                          f"{done.new_card_sha256[:12]} in service; image checks "
                          f"{'pass' if done.image_checks is None else 'FAIL: ' + done.image_checks}")


def _scratch() -> Path:
    """Where the copy is assessed: under VAR_DIR, beside the host copies of the models."""
    folder = Path(settings.VAR_DIR) / "reassess"
    folder.mkdir(parents=True, exist_ok=True)
    return folder
