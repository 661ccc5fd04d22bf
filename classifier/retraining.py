"""A training run started from the admin, as executed by a worker of the ``training`` queue.

Learning from reviews: images of lesions with a dermatologist's final diagnosis become labelled
training records (reviewer and date kept as provenance); they pass through the same audit and
lesion-level split as the public datasets.
"""
from __future__ import annotations

import json
import logging
import os
import traceback
from datetime import timedelta
from pathlib import Path

import numpy as np
from django.conf import settings
from django.core.files.storage import default_storage
from django.db.models import F
from django.utils import timezone

from classifier.lifecycle import REVIEWS
from classifier.models import ModelVersion

log = logging.getLogger(__name__)
REVIEW_SOURCE = "review"
STALE_AFTER = timedelta(minutes=15)


def reviewed_records(export_dir: Path) -> list:
    """Training records for every image of a lesion whose newest review names one of the 9 classes."""
    from cases.context import image_context
    from cases.models import Review
    from training.data import ImageRecord
    from training.labels import CLASS_TO_HAM, CLASSES

    export_dir.mkdir(parents=True, exist_ok=True)
    newest: dict[int, Review] = {}
    for review in Review.objects.select_related("reviewer").order_by("lesion_id", "-created_at"):
        newest.setdefault(review.lesion_id, review)
    records = []
    for lesion_id, review in newest.items():
        if review.final_diagnosis not in CLASSES:
            continue  # "other" has no class to learn
        for image in review.lesion.images.all():
            path = export_dir / f"review-{image.pk}{Path(image.file.name).suffix or '.png'}"
            if not path.exists():
                with default_storage.open(image.file.name, "rb") as src:
                    path.write_bytes(src.read())
            context = image_context(image)
            records.append(ImageRecord(
                path=str(path), isic_id=f"REVIEW_{image.pk:07d}", lesion_id=f"app-lesion-{lesion_id}",
                allowed=frozenset({review.final_diagnosis}), source=REVIEW_SOURCE,
                ham_code=CLASS_TO_HAM[review.final_diagnosis],
                dx_type=f"dermatologist review by {review.reviewer.get_username()} on {review.created_at:%Y-%m-%d}",
                age=context.age, sex=context.sex, site=context.site,
            ))
    return records


class ReferenceModel:
    """The active model, adapted to what the training gate comparison needs."""

    def __init__(self, version: ModelVersion) -> None:
        from classifier.model_store import get_model

        self.loaded = get_model(Path(version.artifact_path))
        self.version = version.version
        self.thresholds = self.loaded.thresholds

    def predict_probs(self, images: np.ndarray, contexts=None) -> np.ndarray:
        from training.labels import CLASSES

        predictions = self.loaded.predict(list(images), contexts=contexts)
        return np.array([[p.class_probabilities[c] for c in CLASSES] for p in predictions])


def training_config(version: ModelVersion):
    """Default config, then ops overrides (SECONDLOOK_TRAINING_OVERRIDES, JSON), then the run's own."""
    from training.config import TrainConfig

    overrides = json.loads(os.environ.get("SECONDLOOK_TRAINING_OVERRIDES", "") or "{}")
    asked = {k: version.training_config[k] for k in ("epochs", "seed", "target_sensitivity")
             if k in version.training_config}
    # Per-run expert overrides (not offered in the admin form; used by ops and tests).
    per_run = version.training_config.get("overrides", {})
    return TrainConfig.from_dict(TrainConfig().to_dict() | overrides | per_run | asked)


def _save_progress(version_id: int, progress: dict) -> None:
    progress = {k: (None if isinstance(v, float) and not np.isfinite(v) else v) for k, v in progress.items()}
    ModelVersion.objects.filter(pk=version_id).update(progress=progress | {"updated_at": timezone.now().isoformat()})


def _claim(version_id: int) -> bool:
    """One conditional UPDATE: only the first delivery of this run starts it."""
    return bool(ModelVersion.objects.filter(
        pk=version_id, status=ModelVersion.Status.TRAINING, started_at__isnull=True
    ).update(started_at=timezone.now(), progress={"phase": "starting"}))


def _fail(version_id: int, error: str) -> None:
    ModelVersion.objects.filter(pk=version_id).update(
        status=ModelVersion.Status.FAILED, error=error, finished_at=timezone.now()
    )


def run_training(*, version_id: int) -> str:
    """Run the training for ``version_id`` to a ready (or failed) registry version."""
    from training.train import TrainingCancelled, train

    if not _claim(version_id):
        version = ModelVersion.objects.get(pk=version_id)
        updated = version.progress.get("updated_at")
        if (version.status == ModelVersion.Status.TRAINING and version.finished_at is None and updated
                and timezone.now() - timezone.datetime.fromisoformat(updated) > STALE_AFTER):
            _fail(version_id, "The training worker stopped (no progress for 15 minutes). Start a new run.")
            return "stale"
        return "already started"
    version = ModelVersion.objects.get(pk=version_id)
    try:
        sources = set(version.data_sources)
        cache_dir = Path(os.environ.get("SECONDLOOK_CACHE_DIR", settings.VAR_DIR / "cache"))
        extra = reviewed_records(cache_dir / "reviewed") if REVIEWS in sources else []
        active = ModelVersion.objects.filter(status=ModelVersion.Status.ACTIVE).first()
        out_dir = Path(settings.SECONDLOOK_MODELS_ROOT) / version.version
        train(
            training_config(version), settings.SECONDLOOK_DATA_DIR, out_dir, cache_dir,
            version=version.version, verbose=0, sources=sorted(sources - {REVIEWS}), extra_records=extra,
            on_progress=lambda progress: _save_progress(version_id, progress),
            should_stop=lambda: ModelVersion.objects.filter(pk=version_id, cancel_requested=True).exists(),
            reference=ReferenceModel(active) if active else None,
        )
    except TrainingCancelled:
        _fail(version_id, "Cancelled by an administrator.")
        return "cancelled"
    except Exception as exc:  # the run failed: say why in the admin, keep the traceback in the log
        log.exception("training %s failed", version.version)
        _fail(version_id, f"{type(exc).__name__}: {exc}\n\n{traceback.format_exc(limit=5)}")
        return "failed"
    from classifier.registry import register_artifact

    registered = register_artifact(out_dir)
    ModelVersion.objects.filter(pk=version_id).update(
        status=ModelVersion.Status.READY, finished_at=timezone.now(),
        progress=F("progress"), notes=f"Trained from {', '.join(sorted(sources))}; {len(extra)} reviewed images.",
    )
    _save_progress(version_id, {"phase": "done"})
    return registered.version
