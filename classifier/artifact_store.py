"""Model artifacts in the configured storage, addressed by content, so that every worker scores
with the version the admin activated, whatever disk it has.

A registered artifact is published to ``models/<sha256 of model.keras>/`` of the default storage
(S3-compatible object storage in production) when SECONDLOOK_MODELS_IN_STORAGE is on. A worker
asks `local_dir(version)` for a directory to load from: the registered path when it holds that
very model, else its own cache under VAR_DIR, filled from the storage and checked against the
registry's sha256 before use (a corrupt or swapped download is refused, never served).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Callable

from django.conf import settings
from django.core.files.base import File
from django.core.files.storage import default_storage

from classifier.models import ModelVersion
from mlcore.artifact import CARD_FILE, MODEL_FILE, read_card, sha256_file

log = logging.getLogger(__name__)
PREFIX = "models"
# what `python -m training assess MODEL` rewrites in place (the image checks), model.keras unchanged:
# published again whenever they change, and a host copy whose card differs from the stored one is
# fetched again
REFRESHED_FILES = (CARD_FILE, "assessment.json", "ood.npz")


class ArtifactUnavailable(RuntimeError):
    """The version's model can be found neither on this host nor in the storage (or fails its check)."""


def storage_prefix(sha256: str) -> str:
    return f"{PREFIX}/{sha256}"


def _stored_sha256(name: str) -> str | None:
    """sha256 of a stored file's bytes, or None when it cannot be read (missing, or the storage is
    unreachable: an S3 client raises its own errors, not OSError)."""
    try:
        with default_storage.open(name, "rb") as handle:
            return hashlib.sha256(handle.read()).hexdigest()
    except Exception:  # noqa: BLE001 - unknown is an answer here: the callers keep what they have
        return None


def publish(model_dir: Path, sha256: str) -> list[str]:
    """Copy every file of the artifact directory to the storage. Files already there are kept (the
    same name under the model's hash holds the same bytes), except the card and the image checks
    (REFRESHED_FILES), which an assessment rewrites in place: those are replaced when they differ.
    Returns the storage names written."""
    written = []
    for path in sorted(p for p in Path(model_dir).rglob("*") if p.is_file()):
        relative = path.relative_to(model_dir).as_posix()
        name = f"{storage_prefix(sha256)}/{relative}"
        if default_storage.exists(name):
            if relative not in REFRESHED_FILES or _stored_sha256(name) == sha256_file(path):
                continue
            default_storage.delete(name)  # save() would pick another name for an existing one
        with open(path, "rb") as handle:
            default_storage.save(name, File(handle, name=path.name))
        _stored_cards.pop(name, None)
        written.append(name)
    return written


def holds(model_dir: Path, sha256: str) -> bool:
    """Whether ``model_dir`` holds an artifact whose model file has this sha256."""
    model_file = Path(model_dir) / MODEL_FILE
    return model_file.is_file() and (Path(model_dir) / CARD_FILE).is_file() and sha256_file(model_file) == sha256


def _download(sha256: str, target: Path) -> None:
    prefix = storage_prefix(sha256)
    pending = [""]
    while pending:  # storages list one level at a time
        sub = pending.pop()
        dirs, files = default_storage.listdir(f"{prefix}/{sub}".rstrip("/"))
        pending += [f"{sub}{d}/" for d in dirs]
        for name in files:
            out = target / sub / name
            out.parent.mkdir(parents=True, exist_ok=True)
            with default_storage.open(f"{prefix}/{sub}{name}", "rb") as src, open(out, "wb") as dst:
                shutil.copyfileobj(src, dst)


def host_copy(sha256: str) -> Path:
    """Where this host keeps its verified copy of the artifact whose model file has ``sha256``."""
    return Path(settings.VAR_DIR) / "model-store" / sha256


def keep_local_copy(model_dir: Path, sha256: str) -> Path:
    """Copy an artifact into this host's model store, where `local_dir` finds it once its
    registered directory holds another model: the bundled model's directory is replaced by the
    next release, and the version it held must stay loadable (roll-back, comparison, re-scoring)."""
    def copy(staging: Path) -> None:
        shutil.copytree(model_dir, staging, dirs_exist_ok=True)
        if not holds(staging, sha256):
            raise ArtifactUnavailable(f"{model_dir} no longer holds the model {sha256[:12]}…: not copied")

    return _install_host_copy(sha256, copy)


def _install_host_copy(sha256: str, fill: Callable[[Path], None], *, replace: bool = False) -> Path:
    """This host's copy of the artifact ``sha256``: kept if already there (unless ``replace``), else
    ``fill``ed into a staging directory (which ``fill`` checks, raising to refuse it) and renamed
    into place; ``replace`` swaps a copy already there for the new one."""
    cache = host_copy(sha256)
    if holds(cache, sha256) and not replace:
        return cache
    cache.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{sha256[:12]}-", dir=cache.parent))
    old = None
    try:
        fill(staging)
        if replace and cache.exists():
            old = cache.parent / f".{sha256[:12]}-old-{os.getpid()}-{staging.name}"
            try:
                cache.rename(old)
            except OSError:  # another process is swapping it too
                old = None
        try:
            staging.rename(cache)  # atomic: a concurrent copy that won is just as good
        except OSError:
            if not holds(cache, sha256):
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    return cache


# The stored card's sha256 as last read, per storage name: local_dir runs for every scoring task,
# which must not read the storage each time. A card re-published on this host is forgotten at once
# (publish); one re-published elsewhere is seen within STORED_CARD_TTL_S.
STORED_CARD_TTL_S = 60.0
_stored_cards: dict[str, tuple[float, str | None]] = {}


def _stored_card_sha256(name: str) -> str | None:
    seen = _stored_cards.get(name)
    if seen is None or time.monotonic() - seen[0] > STORED_CARD_TTL_S:
        seen = _stored_cards[name] = (time.monotonic(), _stored_sha256(name))
    return seen[1]


def _card_is_current(model_dir: Path, sha256: str) -> bool:
    """Whether ``model_dir``'s card is the stored one of the artifact ``sha256`` (re-assessed in
    place, the stored card changes; a storage that cannot be read keeps the verified copy in use)."""
    stored = _stored_card_sha256(f"{storage_prefix(sha256)}/{CARD_FILE}")
    return stored is None or stored == sha256_file(Path(model_dir) / CARD_FILE)


def card_of(version: ModelVersion) -> dict:
    """``version``'s model card, without fetching its model: from a directory on this host that
    holds the version (its registered one or the host copy), else from the storage, where it must
    name the registered model. A web host that only shows a form needs nothing more."""
    if version.sha256:
        registered = Path(version.artifact_path) if version.artifact_path else None
        if registered is not None and holds(registered, version.sha256):
            return read_card(registered, required=())
        copy = host_copy(version.sha256)
        # a host copy made before the artifact was re-assessed keeps the older card: the stored one wins
        if holds(copy, version.sha256) and (not settings.SECONDLOOK_MODELS_IN_STORAGE
                                            or _card_is_current(copy, version.sha256)):
            return read_card(copy, required=())
        if settings.SECONDLOOK_MODELS_IN_STORAGE:
            name = f"{storage_prefix(version.sha256)}/{CARD_FILE}"
            try:
                with default_storage.open(name, "rb") as handle:
                    card = json.loads(handle.read())
            except (OSError, ValueError) as exc:
                raise ArtifactUnavailable(f"the stored model card of {version.version} cannot be read ({exc})") from None
            if not isinstance(card, dict) or card.get("model_sha256") != version.sha256:
                raise ArtifactUnavailable(f"the stored model card of {version.version} names another model: refused")
            return card
    return read_card(local_dir(version), required=())


def loadable(version: ModelVersion) -> bool:
    """Whether this host can load ``version``'s very model (from its directory, its host copy or
    the storage)."""
    try:
        return holds(local_dir(version), version.sha256) if version.sha256 else True
    except (ArtifactUnavailable, OSError):
        return False


def local_dir(version: ModelVersion) -> Path:
    """A directory on this host holding ``version``'s artifact, checked against its sha256."""
    registered = Path(version.artifact_path) if version.artifact_path else None
    if not version.sha256:  # registered before hashes were kept: loading it checks what it can
        if registered is not None:
            return registered
        raise ArtifactUnavailable(f"model version {version.version} has no artifact")
    if registered is not None and holds(registered, version.sha256):
        return registered
    cache = host_copy(version.sha256)
    cached = holds(cache, version.sha256)
    if cached and (not settings.SECONDLOOK_MODELS_IN_STORAGE or _card_is_current(cache, version.sha256)):
        return cache
    if not settings.SECONDLOOK_MODELS_IN_STORAGE:
        if registered is None:
            raise ArtifactUnavailable(f"model version {version.version} has no artifact path")
        return registered  # loading it says precisely what is wrong (missing, corrupt)

    def download(staging: Path) -> None:
        _download(version.sha256, staging)
        if not holds(staging, version.sha256):
            raise ArtifactUnavailable(f"the stored model of {version.version} does not match its sha256 "
                                      f"{version.sha256[:12]}… (corrupt or replaced): refused")
        if read_card(staging).get("model_sha256") != version.sha256:
            raise ArtifactUnavailable(f"the stored model card of {version.version} names another model: refused")

    if not cached:
        return _install_host_copy(version.sha256, download)
    try:  # the stored card changed (re-assessed in place): fetch the artifact again
        return _install_host_copy(version.sha256, download, replace=True)
    except (ArtifactUnavailable, OSError) as exc:
        log.warning("cannot refresh this host's copy of %s from the storage (%s); using the copy it has",
                    version.version, exc)
        return cache
