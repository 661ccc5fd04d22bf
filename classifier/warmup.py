"""Warming a newly active model version on an inference worker, so that the first upload after an
activation or a rollback does not wait for the model to load and its runner to be built (the
re-scoring benchmark's one outlier: 25 s for the first image a new version scored).

Best effort by design: a warm-up that cannot run changes nothing, since the first real task loads
the model anyway.
"""
from __future__ import annotations

import logging

import numpy as np

from classifier import artifact_store
from classifier.dispatch import on_commit_or_fail, publish
from classifier.models import ModelVersion

log = logging.getLogger(__name__)

WARM_TASK = "classifier.tasks.warm_model"


def warm_version(*, version_id: int) -> str:
    """Load ``version_id``'s model into this process's cache and score one blank image through
    the path uploads take (runner, checks, scores); returns what happened, for the task log."""
    from mlcore.inference import predict_images
    from mlcore.model_store import get_model

    version = ModelVersion.objects.filter(pk=version_id).first()
    if version is None:
        return f"not warmed: no model version {version_id}"
    if version.status != ModelVersion.Status.ACTIVE:  # another activation came first: leave it
        return f"not warmed: {version.version} is {version.status}, not active"
    try:
        model = get_model(artifact_store.local_dir(version))
        size = int(model.input_size)
        predict_images(model, [np.full((size, size, 3), 128, np.uint8)])
    except Exception as exc:  # the first real task reports a broken model on its prediction
        log.warning("could not warm %s: %s: %s", version.version, type(exc).__name__, exc)
        return f"not warmed: {type(exc).__name__}: {exc}"
    return f"warmed {version.version}"


def warm_after_commit(version: ModelVersion) -> None:
    """Once the current transaction commits, ask an inference worker to warm ``version``; a broker
    that is down is logged and ignored."""
    on_commit_or_fail(lambda: publish(WARM_TASK, [version.pk]), on_failure=lambda exc: log.warning(
        "could not ask a worker to warm %s (%s: %s)", version.version, type(exc).__name__, exc))
