"""Plain functions over the model registry: register artifacts, find the active version."""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.files.storage import default_storage
from django.db import IntegrityError, transaction
from django.utils import timezone

from audit import log as audit_log
from classifier import artifact_store
from classifier.models import ModelVersion, RescoreJob
from mlcore.artifact import CARD_FILE, MODEL_FILE, json_safe, read_card
from mlcore.artifact import sha256_file as file_sha256

log = logging.getLogger(__name__)


def _card_fields(card: dict[str, Any]) -> dict[str, Any]:
    thresholds = card.get("thresholds", {})
    return {
        "data_fingerprint": str(card.get("data_fingerprint", ""))[:128],
        "data_sources": card.get("data_sources", []),
        "metrics": card.get("metrics", {}),
        "temperature": card.get("temperature"),
        "melanoma_threshold": _threshold(thresholds.get("melanoma")),
        "malignancy_threshold": _threshold(thresholds.get("malignancy")),
        "target_sensitivity": card.get("training", {}).get("config", {}).get("target_sensitivity"),
    }


def _threshold(entry: Any) -> float | None:
    if isinstance(entry, dict):
        entry = entry.get("threshold")
    return None if entry is None else float(entry)


class RunNoLongerTraining(RuntimeError):
    """The training run an artifact belongs to was cancelled, failed (by the stale-run sweep, say)
    or deleted while it finished: its row is left as it is, not registered."""


def register_artifact(model_dir: Path, *, status: str = ModelVersion.Status.READY, notes: str = "",
                      run_id: int | None = None) -> ModelVersion:
    """Create or refresh the registry row for an exported artifact directory.

    ``run_id``: the artifact of that training run, whose row is updated by primary key, and only
    while it is still training (one conditional UPDATE); raises RunNoLongerTraining otherwise, so
    that a run cancelled, failed or deleted meanwhile is never recreated nor overwritten. The run
    itself then marks the row ready. Without it (the CLI, a bundled model) a missing row is created.
    Either way only the artifact's own fields are written: the status, cancel request, error and
    progress of an existing row are never written back from a stale copy."""
    model_dir = Path(model_dir).resolve()
    card = read_card(model_dir, required=("version",))
    sha = card.get("model_sha256") or file_sha256(model_dir / MODEL_FILE)
    fields = _card_fields(card) | {"artifact_path": str(model_dir), "sha256": sha}
    gate_file = model_dir / "gate.json"
    if gate_file.exists():  # the held-out comparison with the model active when it was trained
        fields["metrics"] = dict(fields["metrics"], gate=json.loads(gate_file.read_text()))
    # a card written before the pipeline wrote strict JSON may hold NaN, which the database refuses
    fields = json_safe(fields)
    if run_id is not None:
        if not ModelVersion.objects.filter(pk=run_id, status=ModelVersion.Status.TRAINING).update(**fields):
            raise RunNoLongerTraining(f"training run {run_id} is no longer training (cancelled, failed or deleted "
                                      f"meanwhile): its artifact {model_dir} was not registered")
        version = ModelVersion.objects.get(pk=run_id)
    else:
        version, created = ModelVersion.objects.get_or_create(
            version=card["version"], defaults=fields | {"status": status, "notes": notes}
        )
        if not created:  # the artifact's fields only, by primary key
            ModelVersion.objects.filter(pk=version.pk).update(**fields)
            version.refresh_from_db()
    if settings.SECONDLOOK_MODELS_IN_STORAGE:  # so that workers on other hosts can load it
        artifact_store.publish(model_dir, sha)
    elif model_dir == Path(settings.SECONDLOOK_MODEL_DIR).resolve():
        artifact_store.keep_local_copy(model_dir, sha)  # the next release replaces that directory
    return version


@transaction.atomic
def activate(version: ModelVersion) -> ModelVersion:
    """Make ``version`` the one active model; the previous active one becomes ready again, and
    re-scoring jobs of any other version stop (`stop_rescores_of_other_versions`)."""
    ModelVersion.objects.select_for_update().filter(status=ModelVersion.Status.ACTIVE).exclude(pk=version.pk).update(
        status=ModelVersion.Status.READY
    )
    version.status = ModelVersion.Status.ACTIVE
    version.activated_at = timezone.now()
    version.save(update_fields=["status", "activated_at"])
    stop_rescores_of_other_versions(active=version)
    return version


def no_longer_active_reason(version_name: str) -> str:
    """Why a re-scoring job of ``version_name`` stopped: a rollback or another activation replaced it."""
    return (f"Stopped: model version {version_name} is no longer active (it was rolled back or another version "
            f"was activated); its images are not re-scored with it.")


def stop_rescores_of_other_versions(*, active: ModelVersion) -> list[int]:
    """Fail the queued or running re-scoring jobs of every version but ``active``, with the reason;
    returns their ids. A job's task that is still creating predictions stops at its next chunk,
    and the re-score predictions it already made are not scored (`cases.scoring`)."""
    jobs = RescoreJob.objects.filter(status__in=[RescoreJob.Status.QUEUED, RescoreJob.Status.RUNNING]).exclude(
        model_version=active)
    stopped: list[int] = []
    for version_id, name in set(jobs.values_list("model_version_id", "model_version__version")):
        of_version = jobs.filter(model_version_id=version_id)
        ids = list(of_version.values_list("pk", flat=True))
        of_version.filter(pk__in=ids).update(status=RescoreJob.Status.FAILED, error=no_longer_active_reason(name),
                                             finished_at=timezone.now())
        stopped += ids
    return sorted(stopped)


class DefaultModelRefused(RuntimeError):
    """The configured default model lacks the image checks a version needs to be active: it is
    registered (ready, the reason in its notes) but not activated; the message says why."""


def default_model_refusal(version: ModelVersion) -> str | None:
    """Why the registered default model ``version`` may not be activated, or None: the same rule
    as any activation, the image checks of its card (`lifecycle.image_checks_of`)."""
    # lifecycle builds on this module (activate, register_artifact): imported here, not at the top
    from classifier.lifecycle import image_checks_of

    problem = image_checks_of(version)
    if problem is None:
        return None
    return (f"the default model {version.version} ({version.artifact_path}) was registered but not activated: it "
            f"lacks the image checks a version needs to be active: {problem}")


def ensure_default_registered() -> ModelVersion:
    """Register the configured default model and activate it when no version is active yet; the
    activation is audited (actor: the system), in the transaction that makes it. A default model
    whose card lacks the image checks is registered, ready, and not activated: raises
    DefaultModelRefused with the reason (also logged and kept in the version's notes)."""
    active = ModelVersion.objects.filter(status=ModelVersion.Status.ACTIVE).first()
    if active is not None:
        return active
    version = register_artifact(settings.SECONDLOOK_MODEL_DIR, notes="Shipped default model, registered on first start.")
    # read outside the transaction: it may fetch the model from the storage
    refusal = default_model_refusal(version)
    if refusal is not None:
        log.error("No active model version: %s", refusal)
        note = f"Not activated: {refusal}"
        if note not in version.notes:  # every caller asks again while nothing is active: noted once
            ModelVersion.objects.filter(pk=version.pk).update(notes=f"{version.notes}\n{note}".strip())
        raise DefaultModelRefused(refusal[:1].upper() + refusal[1:])
    try:
        with transaction.atomic():
            # another process may have activated a version since the check above: it stays active
            meanwhile = ModelVersion.objects.filter(status=ModelVersion.Status.ACTIVE).first()
            if meanwhile is not None:
                return meanwhile
            activate(version)
            audit_log.record(action="activate", obj=version, actor=None, old={"active": None},
                             new={"active": version.version, "sha256": version.sha256,
                                  "reason": "no version was active: the shipped default model was registered and "
                                            "activated on first start"})
    except IntegrityError:
        # with no active row there is nothing to lock: two first starts at once both get here, and
        # the one-active-version constraint lets one win; the other answers with the winner
        return ModelVersion.objects.get(status=ModelVersion.Status.ACTIVE)
    return version


def active_version() -> ModelVersion:
    """The active version, registering the shipped default on first use (DefaultModelRefused when
    it lacks its image checks)."""
    return ensure_default_registered()


def active_model_status() -> dict[str, Any]:
    """Health summary of the active model: its version and whether a copy the workers can load is
    intact (its registered directory, else this host's verified copy, which `artifact_store.local_dir`
    serves once a release replaced the bundled directory, else, when models are kept in the storage
    (SECONDLOOK_MODELS_IN_STORAGE), its stored copy, which workers download and verify: a web host
    needs no model files of its own). Reads only (a health check must never write): no active
    version yet is reported, not registered."""
    version = ModelVersion.objects.filter(status=ModelVersion.Status.ACTIVE).first()
    if version is None:
        return {"ok": False, "error": "no active model version (the bundled one is registered at start-up)"}
    registered_file = Path(version.artifact_path) / MODEL_FILE
    problem = _model_file_problem(registered_file, version.sha256)
    if problem is None:
        return {"ok": True, "version": version.version}
    if version.sha256 and _model_file_problem(artifact_store.host_copy(version.sha256) / MODEL_FILE,
                                              version.sha256) is None:
        return {"ok": True, "version": version.version, "served_from": "host copy",
                "warning": f"registered directory: {problem}"}
    if version.sha256 and settings.SECONDLOOK_MODELS_IN_STORAGE:
        missing = _stored_files_missing(version.sha256)
        if not missing:
            status = {"ok": True, "version": version.version, "served_from": "storage"}
            if registered_file.exists():  # there but not this model: worth a look; absent is normal here
                status["warning"] = f"registered directory: {problem}"
            return status
        problem = f"{problem}; not in the storage either ({', '.join(missing)} missing)"
    return {"ok": False, "version": version.version, "error": problem}


def _stored_files_missing(sha256: str) -> list[str]:
    """The storage names of the artifact ``sha256``'s model and card that the storage lacks (an
    existence check only: downloading the model to hash it is the worker's job, which refuses a
    corrupt copy)."""
    names = [f"{artifact_store.storage_prefix(sha256)}/{name}" for name in (MODEL_FILE, CARD_FILE)]
    return [name for name in names if not default_storage.exists(name)]


def _model_file_problem(model_file: Path, sha256: str) -> str | None:
    """What is wrong with ``model_file`` (missing, corrupt), or None when it is intact."""
    if not model_file.exists():
        return f"model file missing: {model_file}"
    if sha256 and _cached_sha256(model_file) != sha256:
        return f"model file corrupt (sha256 mismatch): {model_file}"
    return None


_sha_cache: dict[tuple[str, float, int], str] = {}


def _cached_sha256(path: Path) -> str:
    """sha256 keyed by path, mtime and size, so health checks don't re-hash an unchanged file."""
    stat = path.stat()
    key = (str(path), stat.st_mtime, stat.st_size)
    if key not in _sha_cache:
        _sha_cache[key] = file_sha256(path)
    return _sha_cache[key]
