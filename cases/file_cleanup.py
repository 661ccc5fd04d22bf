"""Stored files go with their rows: an image's file and a prediction's heatmap are deleted from
the storage once the deletion of their row is committed, whoever deletes it (the admin, a cascade
from its lesion or case, a shell), and so is the copy of an image the training export keeps
(cases.training_labels, under the cache folder's ``reviewed/``).

Connected in cases.apps. Never raises into the deletion: a file already gone, or a storage that
fails, is logged; a rolled-back deletion deletes nothing.
"""
from __future__ import annotations

import logging
from pathlib import Path

from django.conf import settings
from django.core.files.storage import default_storage
from django.db import transaction
from django.db.models.signals import post_delete

from cases.models import LesionImage, Prediction
from classifier.retraining import REVIEWED_EXPORT_DIR

log = logging.getLogger(__name__)



def _delete_stored(name: str) -> None:
    try:
        default_storage.delete(name)  # a name already gone is no error for the storages
    except Exception:  # the orphan is a leftover to clear by hand; the deletion itself stands
        log.exception("could not delete stored file %s", name)


def _delete_export_copies(image_pk: int) -> None:
    try:  # one copy per image exported for a retraining run: review-{pk}.<suffix>
        for copy in (Path(settings.SECONDLOOK_CACHE_DIR) / REVIEWED_EXPORT_DIR).glob(f"review-{image_pk}.*"):
            copy.unlink(missing_ok=True)
    except Exception:
        log.exception("could not delete the training export's copy of image %s", image_pk)


def image_deleted(sender, instance: LesionImage, using: str, **kwargs) -> None:
    name, pk = instance.file.name if instance.file else "", instance.pk
    if name:
        transaction.on_commit(lambda: _delete_stored(name), using=using)
    transaction.on_commit(lambda: _delete_export_copies(pk), using=using)


def prediction_deleted(sender, instance: Prediction, using: str, **kwargs) -> None:
    name = instance.heatmap.name if instance.heatmap else ""
    if name:
        transaction.on_commit(lambda: _delete_stored(name), using=using)


def connect() -> None:
    post_delete.connect(image_deleted, sender=LesionImage, dispatch_uid="cases.file_cleanup.image")
    post_delete.connect(prediction_deleted, sender=Prediction, dispatch_uid="cases.file_cleanup.prediction")
