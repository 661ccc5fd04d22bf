"""Model-version lifecycle services: start a training run, cancel it, activate, roll back, re-assess
the image checks in place.

Plain functions with keyword-only arguments; they validate, write in a transaction and dispatch
Celery tasks only after the transaction commits. ``request`` (the admin's HTTP request, None from
a command or a worker) goes into the audit event, which keeps the client's address with it.
"""
from __future__ import annotations

import logging
import os
import shutil
from collections import Counter
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Callable

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import ProtectedError
from django.http import HttpRequest
from django.utils import timezone

from audit import log as audit_log
from audit.models import AuditAction, AuditEvent
from classifier import artifact_store, ensemble_training, fine_tuning
from classifier.dispatch import broker_down_reason, on_commit_or_fail, publish
from classifier.models import ModelVersion
from classifier.promotion import GateResult, evaluate_gate, gate_evidence, image_checks_problem, with_image_checks
from classifier.registry import activate, register_artifact
from classifier.warmup import warm_after_commit
from mlcore.artifact import CARD_FILE, MODEL_FILE, CardError, read_card, sha256_file
from training.benchmark import BenchmarkError, current_benchmark
from training.config import TrainConfig

log = logging.getLogger(__name__)
TRAIN_TASK = "classifier.tasks.train_model"

REVIEWS = "reviews"
CARD_REVIEW_SOURCE = "review"  # what a model card's data_sources call the reviewed cases' records
DATA_SOURCES = {
    "isic-9class": "ISIC 9-class set (shared data)",
    "ham10000": "HAM10000 (shared data)",
    "ham10000-more": "HAM10000, further images (shared data)",
    REVIEWS: "Dermatologist-reviewed cases in this app",
}


class LifecycleError(ValueError):
    """A request the current state of the registry does not allow; the message says why."""


@dataclass(frozen=True)
class TrainingRequest:
    sources: tuple[str, ...]
    epochs: int
    seed: int
    target_sensitivity: float
    members: tuple[int, ...] = ()  # an ensemble's member seeds; () trains a single CNN
    start: dict | None = None  # the model a fine-tuning run continues (fine_tuning.start_record)


def validate_training_request(*, sources, epochs: int, seed: int, target_sensitivity: float, members=(),
                              overrides: dict | None = None, start_from: str = fine_tuning.IMAGENET) -> TrainingRequest:
    """Check a training request and normalise it (``members``: an ensemble's seeds, the first one
    also its ``seed``; ``start_from`` "active" fine-tunes the active model)."""
    sources = tuple(sorted(set(sources)))
    unknown = set(sources) - set(DATA_SOURCES)
    if not sources:
        raise LifecycleError("Choose at least one data source.")
    if unknown:
        raise LifecycleError(f"Unknown data source(s): {', '.join(sorted(unknown))}.")
    if sources == (REVIEWS,):
        raise LifecycleError("Reviewed cases alone are too few to train on; add a shared dataset.")
    if not 1 <= int(epochs) <= 200:
        raise LifecycleError("Epochs must be between 1 and 200.")
    if not 0.5 <= float(target_sensitivity) < 1.0:
        raise LifecycleError("Target sensitivity must be at least 0.5 and below 1.0.")
    missing = [s for s in sources if s != REVIEWS and not (Path(settings.SECONDLOOK_DATA_DIR) / s).is_dir()]
    if missing:
        raise LifecycleError(
            f"Not on this server: {', '.join(DATA_SOURCES[s] for s in missing)} (no {', '.join(missing)} folder in "
            f"the training data directory). Untick it, or install the data and set SECONDLOOK_DATA_DIR.")
    unknown = set(overrides or {}) - set(TrainConfig.__dataclass_fields__)
    if unknown:
        raise LifecycleError(f"Unknown training setting(s): {', '.join(sorted(unknown))}.")
    if members:
        try:
            members = ensemble_training.validate_members(members, overrides=overrides)
        except ensemble_training.EnsembleRequestError as exc:
            raise LifecycleError(str(exc)) from None
        seed = members[0]
    start = None
    if start_from == fine_tuning.ACTIVE:
        if members:
            raise LifecycleError("An ensemble trains each member from ImageNet weights; fine-tuning continues the "
                                 "one active model.")
        active = ModelVersion.objects.filter(status=ModelVersion.Status.ACTIVE).first()
        try:
            fine_tuning.check_fine_tunable(active)
        except fine_tuning.FineTuneError as exc:
            raise LifecycleError(str(exc)) from None
        start = fine_tuning.start_record(active)
    elif start_from != fine_tuning.IMAGENET:
        raise LifecycleError(f"Unknown starting point {start_from!r}: 'imagenet' or 'active'.")
    return TrainingRequest(sources, int(epochs), int(seed), float(target_sensitivity), tuple(members or ()), start)


def start_training(*, sources, epochs: int, seed: int, target_sensitivity: float, user=None,
                   overrides: dict | None = None, members=(), start_from: str = fine_tuning.IMAGENET,
                   request: HttpRequest | None = None, retry_of: str | None = None) -> ModelVersion:
    """Create a version in status "training" and enqueue its run on the training queue.

    ``overrides`` sets other TrainConfig fields for this run (an expert/ops knob, not in the form);
    ``members`` (2-3 distinct seeds) trains an ensemble of that many CNNs instead of one;
    ``start_from`` "active" fine-tunes the active model (`classifier.fine_tuning`) instead of
    training from ImageNet weights. ``retry_of``: the failed run this one retries (`retry_training`),
    named in the "train" audit event.
    """
    training = validate_training_request(sources=sources, epochs=epochs, seed=seed,
                                         target_sensitivity=target_sensitivity, members=members, overrides=overrides,
                                         start_from=start_from)
    busy = LifecycleError("A training run is already in progress; wait for it or cancel it.")
    if ModelVersion.objects.filter(status=ModelVersion.Status.TRAINING).exists():
        raise busy
    try:
        with transaction.atomic():
            version = _create_run(training, overrides, user, request, retry_of=retry_of)
    except IntegrityError:  # another run started in between: the database allows one
        raise busy from None
    return version


def _free_name(base: str) -> str:
    """``base``, or ``base-2``, ``base-3``…: a retry in the same second as its failed run's start
    must not collide with that run's (unique) name."""
    taken = set(ModelVersion.objects.filter(version__startswith=base).values_list("version", flat=True))
    return next(name for name in (base, *(f"{base}-{n}" for n in range(2, len(taken) + 2))) if name not in taken)


def _create_run(training: TrainingRequest, overrides: dict | None, user, request: HttpRequest | None, *,
                retry_of: str | None = None) -> ModelVersion:
    """The new run's registry row, its audit event and its task (sent after commit)."""
    # the sources as asked: registration replaces data_sources with the card's (record sources,
    # e.g. "review"), and a retry must ask for the same ones again
    asked = {"sources": list(training.sources), "epochs": training.epochs, "seed": training.seed,
             "target_sensitivity": training.target_sensitivity, "overrides": dict(overrides or {})}
    limits = {}
    if training.members:  # N trainings in a row: N times the single run's time limits
        soft, hard = ensemble_training.time_limits_s(len(training.members))
        asked |= {"kind": ensemble_training.ENSEMBLE, "members": list(training.members), "time_limit_s": hard}
        limits = {"soft_time_limit": soft, "time_limit": hard}
    if training.start:
        asked[fine_tuning.START_KEY] = training.start
    prefix = f"ens{len(training.members)}-train" if training.members else ("tune" if training.start else "train")
    version = ModelVersion.objects.create(
        version=_free_name(f"{prefix}-{timezone.now():%Y%m%d-%H%M%S}"),
        status=ModelVersion.Status.TRAINING,
        data_sources=list(training.sources),
        target_sensitivity=training.target_sensitivity,
        training_config=asked,
        progress={"phase": "queued"},
        created_by=user,
    )
    members = {"members": list(training.members)} if training.members else {}
    start = {fine_tuning.START_KEY: training.start["version"]} if training.start else {}
    retry = {"retry_of": retry_of} if retry_of else {}
    audit_registry_event(user, "train", version, request=request,
                         new={"sources": list(training.sources), "epochs": training.epochs,
                              "seed": training.seed} | members | start | retry)
    on_commit_or_fail(lambda: enqueue_training(version.pk, **limits),
                      on_failure=lambda exc: fail_run(version.pk, broker_down_reason(exc, "The training run")))
    return version


def fail_run(version_id: int, error: str, *, keep_earlier_failure: bool = False,
             by: str = "the training queue (the task could not be sent)") -> bool:
    """End a training run failed with ``error``, shown in the admin, and audit its outcome as
    the training run's own failures are (actor the system, status training -> failed, ``by``, the
    error); ``keep_earlier_failure`` leaves a run that has already failed (and its reason) as it is.
    True when this call ended it."""
    runs = ModelVersion.objects.filter(pk=version_id)
    if keep_earlier_failure:
        runs = runs.exclude(status=ModelVersion.Status.FAILED)
    old = runs.values_list("status", flat=True).first()
    if not runs.update(status=ModelVersion.Status.FAILED, error=error, finished_at=timezone.now()):
        return False
    try:  # the failed state stands even if its audit event cannot be written: it is what the admin sees
        audit_registry_event(None, "update", ModelVersion(pk=version_id), old={"status": old},
                             new={"status": ModelVersion.Status.FAILED, "by": by, "error": error[:500]})
    except Exception:
        log.exception("auditing the failure of training run %s failed", version_id)
    return True


def enqueue_training(version_id: int, **limits) -> None:
    """Send the run's task (raises when the broker is down); by name: classifier.tasks imports
    the services it wraps."""
    publish(TRAIN_TASK, [version_id], **limits)


def retry_training(*, version: ModelVersion, user=None, request: HttpRequest | None = None) -> ModelVersion:
    """Start a new run with what a failed run was asked (its data sources and settings; a failed
    fine-tuning run fine-tunes the model active now)."""
    if version.status != ModelVersion.Status.FAILED:
        raise LifecycleError(f"{version.version} did not fail; only a failed run can be retried.")
    asked = version.training_config
    return start_training(sources=requested_sources(version), epochs=asked.get("epochs", 1), seed=asked.get("seed", 0),
                          target_sensitivity=asked.get("target_sensitivity", version.target_sensitivity or 0.9),
                          overrides=asked.get("overrides") or None, user=user, request=request,
                          retry_of=version.version,
                          members=asked.get("members") if asked.get("kind") == ensemble_training.ENSEMBLE else (),
                          start_from=fine_tuning.ACTIVE if asked.get(fine_tuning.START_KEY) else fine_tuning.IMAGENET)


def requested_sources(version: ModelVersion) -> list[str]:
    """The data sources a run was asked to train on (``training_config["sources"]``); for a run
    started before they were kept there, its ``data_sources``, where a model card's name for the
    reviewed cases' records ("review") is read back as the source asked for."""
    if version.training_config.get("sources"):
        return list(version.training_config["sources"])
    return sorted({REVIEWS if source == CARD_REVIEW_SOURCE else source for source in version.data_sources})


def delete_failed(*, version: ModelVersion, user=None, request: HttpRequest | None = None) -> ModelVersion:
    """Remove a failed run from the registry, with whatever it left in the models directory
    (``SECONDLOOK_MODELS_ROOT/<version>``, where its training writes, whether or not it got as far
    as registering an artifact there). A version that scored images (its predictions or re-scoring jobs refer to it) is refused:
    what it scored stays traceable to it."""
    try:
        with transaction.atomic():
            deleted, _ = ModelVersion.objects.filter(pk=version.pk, status=ModelVersion.Status.FAILED).delete()
            if not deleted:
                raise LifecycleError(f"{version.version} did not fail; only a failed run can be deleted.")
            audit_registry_event(user, "delete", version, request=request,
                                 old={"version": version.version, "error": version.error[:500]})
    except ProtectedError as exc:
        raise LifecycleError(
            f"{version.version} cannot be deleted: {_describe_protected(exc)} refer to it, and the record of what "
            f"a version scored is kept. It stays in the registry, marked failed, and is never offered for "
            f"activation or roll-back.") from None
    folder = _run_folder(version.version)
    if folder is not None:  # after the row's deletion commits: a rolled-back deletion keeps its files
        transaction.on_commit(lambda: shutil.rmtree(folder, ignore_errors=True))
    return version


def _describe_protected(exc: ProtectedError) -> str:
    """"3 predictions and 1 rescore job": what a ProtectedError says still refers to a row."""
    counts = Counter(obj._meta for obj in exc.protected_objects)
    return " and ".join(f"{n} {meta.verbose_name if n == 1 else meta.verbose_name_plural}"
                        for meta, n in sorted(counts.items(), key=lambda item: str(item[0].verbose_name)))


def _run_folder(name: str) -> Path | None:
    """``SECONDLOOK_MODELS_ROOT/<name>`` when it is a folder directly inside the models root (not a
    link, not outside it through ".." or "/" in the name), else None: only that may be removed."""
    root = Path(settings.SECONDLOOK_MODELS_ROOT).resolve()
    folder = root / name
    if not name or folder.is_symlink() or not folder.is_dir() or folder.resolve().parent != root:
        return None
    return folder


CANCELLED_BEFORE_START = "Cancelled by an administrator before a training worker started it."


def request_cancel(*, version: ModelVersion, user=None, request: HttpRequest | None = None) -> ModelVersion:
    """Stop a training run: one no worker has started yet ends failed at once (it would otherwise
    block every new run until the stale-run sweep), a running one stops after the current step.

    Both are conditional UPDATEs, and the worker claims a run with one too (``started_at`` set
    where it is null): whichever comes first wins, and a task that arrives for a run cancelled
    before it started finds nothing to claim and does nothing."""
    not_started = ModelVersion.objects.filter(pk=version.pk, status=ModelVersion.Status.TRAINING,
                                              started_at__isnull=True)
    if not_started.update(status=ModelVersion.Status.FAILED, cancel_requested=True, error=CANCELLED_BEFORE_START,
                          finished_at=timezone.now(), progress={"phase": "cancelled before it started"}):
        audit_registry_event(user, "cancel", version, new={"ended": "before it started"}, request=request)
    elif ModelVersion.objects.filter(pk=version.pk, status=ModelVersion.Status.TRAINING).update(cancel_requested=True):
        audit_registry_event(user, "cancel", version, request=request)
    else:
        raise LifecycleError(f"{version.version} is not training.")
    version.refresh_from_db()
    return version


def _active_other_than(version: ModelVersion, *, lock: bool = False) -> ModelVersion | None:
    """The active version unless it is ``version``; ``lock``: its row locked (select_for_update)
    until the transaction ends, so that no other activation changes it meanwhile."""
    rows = ModelVersion.objects.filter(status=ModelVersion.Status.ACTIVE).exclude(pk=version.pk)
    return (rows.select_for_update() if lock else rows).first()


def gate_for(version: ModelVersion) -> GateResult:
    """The promotion gate for ``version``: its paired comparison on the frozen benchmark, valid
    while the model it was compared with is still the active one and the benchmark is unchanged
    (``python manage.py compare_on_benchmark VERSION`` measures it again)."""
    return gate_against(version, _active_other_than(version))


_UNCHECKED = object()


def gate_against(version: ModelVersion, active: ModelVersion | None, *,
                 image_checks: str | None | object = _UNCHECKED) -> GateResult:
    """``version``'s stored comparison read against ``active`` as the active version, the current
    benchmark and the model files the registry holds (`promotion.evaluate_gate`). ``image_checks``:
    `image_checks_of(version)` when already worked out (it may read the model from storage, which
    must not happen while the active row is locked)."""
    target = version.target_sensitivity or version.training_config.get("target_sensitivity") or 0.90
    try:
        benchmark = current_benchmark().version
    except BenchmarkError as exc:  # a damaged benchmark file must not let anything through
        return GateResult(False, [str(exc)])
    result = evaluate_gate(version.metrics.get("gate"), active_version=active.version if active else None,
                           target_sensitivity=target, benchmark_version=benchmark, candidate_sha256=version.sha256,
                           active_sha256=active.sha256 if active else None)
    return with_image_checks(result, image_checks_of(version) if image_checks is _UNCHECKED else image_checks)


def image_checks_of(version: ModelVersion) -> str | None:
    """Why ``version``'s model card cannot tell an image it cannot judge (`promotion.image_checks_problem`),
    or None; a card (or model file) that cannot be read counts as lacking them."""
    try:
        card = artifact_store.card_of(version)
    except (artifact_store.ArtifactUnavailable, CardError, OSError) as exc:
        return f"its model card cannot be read ({exc}), so whether it has them is unknown: refused."
    return _card_checks_problem(card, lambda: artifact_store.local_dir(version) / MODEL_FILE)


def _card_checks_problem(card: dict, model_file: Callable[[], Path]) -> str | None:
    """`promotion.image_checks_problem` of ``card``, the network's feature layer read from
    ``model_file()`` when needed; a model file that cannot be read counts as lacking them."""
    import zipfile

    from mlcore.model_store import keras_file_has_feature_layer

    try:
        return image_checks_problem(card, lambda: keras_file_has_feature_layer(model_file()))
    except (artifact_store.ArtifactUnavailable, OSError, KeyError, ValueError, zipfile.BadZipFile) as exc:
        return (f"its model card has no out-of-domain detector (assessment.ood), and whether its network has the "
                f"feature layer the detector reads cannot be told ({exc}): refused.")


def _identity(version: ModelVersion | None) -> tuple | None:
    return None if version is None else (version.pk, version.version, version.sha256)


def activate_version(*, version: ModelVersion, user=None, request: HttpRequest | None = None,
                     reason: str = "") -> ModelVersion:
    """Make a ready version active if it passes the promotion gate. The gate is checked again in
    the transaction that activates, against the active row locked there: an activation or
    roll-back that changed the active version after the first check is refused, not overridden.
    The audit event keeps the gate's evidence (benchmark, both sha256, decision, reasons) and
    ``reason``, why it was activated, when given (the admin's confirmation page requires one)."""
    if version.status not in (ModelVersion.Status.READY, ModelVersion.Status.RETIRED):
        raise LifecycleError(f"{version.version} is {version.status}; only a ready version can be activated.")
    seen = _active_other_than(version)
    checks = image_checks_of(version)
    gate = gate_against(version, seen, image_checks=checks)
    if not gate.allowed:
        raise LifecycleError("Promotion gate refused: " + " ".join(gate.reasons))
    try:
        with transaction.atomic():
            previous = _active_other_than(version, lock=True)
            if _identity(previous) != _identity(seen):
                raise LifecycleError(
                    f"The active version changed to {previous.version if previous else 'none'} while {version.version}"
                    f"'s promotion gate was being checked against {seen.version if seen else 'no model'}; nothing "
                    "was changed. Reload the page: the gate is read against the version active now.")
            gate = gate_against(version, previous, image_checks=checks)
            if not gate.allowed:
                raise LifecycleError("Promotion gate refused: " + " ".join(gate.reasons))
            activate(version)
            audit_registry_event(user, "activate", version, old={"active": previous.version if previous else None},
                                 new={"active": version.version, "gate": gate_evidence(gate)}
                                 | ({"reason": reason.strip()} if (reason or "").strip() else {}), request=request)
            warm_after_commit(version)
    except IntegrityError as exc:  # the one-active-version constraint: another activation won the race
        raise LifecycleError("Another version was activated at the same moment; nothing was changed. "
                             "Reload the page to see which version is active.") from exc
    return version


# what an assessment rewrites in an artifact, model.keras unchanged (the card's markdown rendering
# with it, which the admin shows)
REASSESSED_FILES = (*artifact_store.REFRESHED_FILES, "model_card.md")


@dataclass(frozen=True)
class Reassessment:
    """What `reassess_image_checks` put into service."""

    version: str
    old_card_sha256: str | None  # None: the card in service could not be read
    new_card_sha256: str
    image_checks: str | None  # `image_checks_of`'s answer for the new card (None: they pass)


def reassess_image_checks(*, version: ModelVersion, assessed_dir: Path, reason: str, user=None,
                          origin: str = "", request: HttpRequest | None = None) -> Reassessment:
    """Put a re-assessment of ``version``'s image checks into service, in place: the card,
    assessment.json and ood.npz of ``assessed_dir`` (a copy of its artifact that `python -m
    training assess` rewrote; its model.keras must be the version's very model) replace those of
    the copies on this host and, when models are kept in the storage, the stored ones, which the
    workers' host copies then fetch again. Predictions keep the sha256 of the card they were made
    with (``Prediction.model_card_sha256``), so scores before and after stay told apart.

    Refused, with nothing changed, for the active version (checked with its row locked, as an
    activation or roll-back locks it) when the new card fails the rule every activation applies
    (`image_checks_of`): that version would go on scoring images it cannot judge. A ready or retired
    version may take such a card; activating it is then refused. Audited ("update": who, ``origin``
    such as the command, both cards' sha256, whether the new checks pass, the reason)."""
    reason = (reason or "").strip()
    if not reason:
        raise LifecycleError("Say why the image checks are re-assessed: the reason is kept in the audit trail.")
    if version.status not in _REASSESSABLE:
        raise LifecycleError(f"{version.version} is {version.status}: only a registered model's image checks can "
                             "be re-assessed.")
    assessed_dir = Path(assessed_dir)
    problem = _card_checks_problem(_reassessed_card(version, assessed_dir), lambda: assessed_dir / MODEL_FILE)
    targets = _copies_on_this_host(version, other_than=assessed_dir)  # may fetch one: before the lock
    old_sha = sha256_file(targets[0] / CARD_FILE) if targets else None  # the first: the one workers here load
    new_sha = sha256_file(assessed_dir / CARD_FILE)
    registered = Path(version.artifact_path).resolve() if version.artifact_path else None
    if old_sha == new_sha or registered == assessed_dir.resolve():
        raise LifecycleError(f"{version.version}'s card in service is already this one; nothing was changed. (A "
                             "registered directory re-assessed in place, by python -m training assess on it, is in "
                             "service unchecked and unaudited: assess a copy and pass that.)")
    if not targets and not settings.SECONDLOOK_MODELS_IN_STORAGE:
        raise LifecycleError(f"No copy of {version.version} on this host to re-assess, and models are not kept in "
                             "the storage; nothing was changed.")
    with transaction.atomic():
        locked = ModelVersion.objects.select_for_update().get(pk=version.pk)
        if locked.status == ModelVersion.Status.ACTIVE and problem is not None:
            raise LifecycleError(f"Re-assessment refused: {locked.version} is the active version, and the new card "
                                 f"lacks the image checks a version needs to be active: {problem} Nothing was "
                                 "changed.")
        if locked.status not in _REASSESSABLE:
            raise LifecycleError(f"{locked.version} is now {locked.status}; nothing was changed.")
        audit_registry_event(
            user, "update", locked, request=request,
            old={"card_sha256": old_sha},
            new={"card_sha256": new_sha, "image_checks": "reassessed in place", "status": locked.status,
                 "checks_pass": problem is None, "problem": problem, "reason": reason, "origin": origin})
        # the files last, inside the transaction: a write that fails rolls the event back with it
        for target in targets:
            _replace_files(assessed_dir, target, REASSESSED_FILES)
        if settings.SECONDLOOK_MODELS_IN_STORAGE:
            artifact_store.publish(assessed_dir, version.sha256)
    return Reassessment(version.version, old_sha, new_sha, problem)


_REASSESSABLE = (ModelVersion.Status.READY, ModelVersion.Status.ACTIVE, ModelVersion.Status.RETIRED)


def _reassessed_card(version: ModelVersion, assessed_dir: Path) -> dict:
    """The card of ``assessed_dir`` once it is known to be ``version``'s, with its very model and
    the detector file it names; LifecycleError otherwise."""
    if not version.sha256 or not artifact_store.holds(assessed_dir, version.sha256):
        raise LifecycleError(f"{assessed_dir} does not hold {version.version}'s model (model.keras with sha256 "
                             f"{(version.sha256 or 'unknown')[:12]}) and its card: nothing was changed.")
    try:
        card = read_card(assessed_dir, required=("version",))
    except CardError as exc:
        raise LifecycleError(f"The re-assessed card cannot be read ({exc}); nothing was changed.") from None
    if card["version"] != version.version or card.get("model_sha256") not in (None, version.sha256):
        raise LifecycleError(f"The re-assessed card is {card['version']}'s, not {version.version}'s; nothing was "
                             "changed.")
    assessment = card.get("assessment") if isinstance(card.get("assessment"), dict) else {}
    detector = assessment.get("ood") if isinstance(assessment.get("ood"), dict) else {}
    if detector.get("file"):  # the card in service must never name a detector file the workers lack
        stats = assessed_dir / str(detector["file"])
        if not stats.is_file() or sha256_file(stats) != detector.get("sha256"):
            raise LifecycleError(f"The re-assessed card names the detector {detector['file']} with sha256 "
                                 f"{str(detector.get('sha256'))[:12]}, which {assessed_dir} does not hold; nothing "
                                 "was changed.")
    return card


def _copies_on_this_host(version: ModelVersion, *, other_than: Path) -> list[Path]:
    """The directories on this host holding ``version``'s model (its registered one first, which
    workers here load when it holds it, then this host's copy), but ``other_than``. With models in
    the storage, a verified copy of the stored artifact is fetched first when none is here."""
    if settings.SECONDLOOK_MODELS_IN_STORAGE:
        try:
            artifact_store.local_dir(version)
        except (artifact_store.ArtifactUnavailable, OSError):
            pass  # then only the storage's copy is replaced
    candidates = [Path(version.artifact_path)] if version.artifact_path else []
    candidates.append(artifact_store.host_copy(version.sha256))
    return [d for d in candidates if d.resolve() != other_than.resolve() and artifact_store.holds(d, version.sha256)]


def _replace_files(source: Path, target: Path, names: tuple[str, ...]) -> None:
    """Copy ``names`` (those ``source`` has) into ``target``, each replaced at once (os.replace):
    a worker loading the model meanwhile reads the old file or the new one, never half of one."""
    for name in names:
        if not (source / name).is_file():
            continue
        staging = target / f".{name}.reassessed"
        shutil.copyfile(source / name, staging)
        os.replace(staging, target / name)


def adopt_bundled_release(*, user=None) -> ModelVersion | None:
    """After an upgrade that brought another bundled model (the default model directory holds a
    model the registry has not seen), register it. It waits, ready, for the promotion gate like any
    new version, unless the active version was the bundled one and can no longer be loaded from
    anywhere (its files were replaced and no copy of them was kept, as by releases before
    `artifact_store.keep_local_copy`): then nothing could be scored, so the new one is activated at
    once and the old one marked failed with the reason, so that neither roll-back nor activation
    offers it, unless its card lacks the image checks a version needs to be active
    (`image_checks_of`): then it is only registered, with the reason logged and in its notes.
    Audited either way. Returns the version registered, or None."""
    bundled = Path(settings.SECONDLOOK_MODEL_DIR).resolve()
    try:
        card = read_card(bundled, required=("version", "model_sha256"))
    except CardError:
        return None
    if ModelVersion.objects.filter(sha256=card["model_sha256"]).exists():
        return None
    active = ModelVersion.objects.filter(status=ModelVersion.Status.ACTIVE).first()
    replaced = (active is not None and bool(active.artifact_path)
                and Path(active.artifact_path).resolve() == bundled and not artifact_store.loadable(active))
    # the rule of every activation, read before any row is written or locked (it may read the model)
    checks = image_checks_of(ModelVersion(version=card["version"], artifact_path=str(bundled),
                                          sha256=card["model_sha256"])) if replaced else None
    with transaction.atomic():
        if not replaced or checks is not None:
            notes = "Bundled with an upgrade of the software: compare it on the benchmark before activating it."
            reason = "bundled release"
            if checks is not None:
                reason = (f"bundled release, not activated in place of {active.version} (whose files the upgrade "
                          f"replaced): it lacks the image checks a version needs to be active: {checks}")
                log.error("Bundled model %s: %s", card["version"], reason)
                notes = f"Bundled with an upgrade of the software; {reason}"
            version = register_artifact(bundled, notes=notes)
            audit_registry_event(user, "create", version, new={"version": version.version, "reason": reason})
            return version
        reason = (f"the upgrade replaced {active.version}'s files in {bundled} and no copy was kept: "
                  f"{card['version']}, bundled with it, was activated in its place")
        version = register_artifact(bundled, notes=f"Bundled with an upgrade of the software; {reason}.")
        activate(version)
        # error and finished_at: the admin's "Why it failed" box shows the reason, as for a failed run
        ModelVersion.objects.filter(pk=active.pk).update(
            status=ModelVersion.Status.FAILED, error=f"Cannot be loaded any more: {reason}.", finished_at=timezone.now(),
            notes=(active.notes + f"\nCannot be loaded any more: {reason}.").strip())
        audit_registry_event(user, "activate", version, old={"active": active.version},
                             new={"active": version.version, "reason": reason})
        warm_after_commit(version)
    return version


def rollback_choice() -> tuple[ModelVersion | None, ModelVersion | None]:
    """(the active version, the version a roll-back would re-activate): the one activated most
    recently before it that is still ready or retired and was not itself rolled back from since
    (`rolled_back_from`), or None. One marked failed is never offered."""
    current = ModelVersion.objects.filter(status=ModelVersion.Status.ACTIVE).first()
    return current, _rollback_target_of(current)


def _activated_before(current: ModelVersion | None):
    """The ready or retired versions ever activated, other than ``current``, most recent first."""
    return (ModelVersion.objects.exclude(pk=getattr(current, "pk", None))
            .filter(activated_at__isnull=False, status__in=[ModelVersion.Status.READY, ModelVersion.Status.RETIRED])
            .order_by("-activated_at", "-pk"))


def _last_rolled_back_from() -> dict[str, datetime]:
    """When each version was last rolled back from (deactivated by a roll-back), by name: the
    audit trail's roll-back events keep the version they deactivated (old "active")."""
    last: dict[str, datetime] = {}
    events = AuditEvent.objects.filter(action=AuditAction.ROLLBACK, object_type=ModelVersion._meta.model_name)
    for old, at in events.values_list("old_values", "created_at"):
        name = (old or {}).get("active") if isinstance(old, dict) else None
        if isinstance(name, str) and (name not in last or at > last[name]):
            last[name] = at
    return last


def rolled_back_from(version: ModelVersion, last: dict[str, datetime] | None = None) -> datetime | None:
    """When ``version`` was rolled back from since it was last activated (None: it was not).

    Such a version is never offered by a roll-back again: rolling back twice goes further back in
    the activation history (C -> B -> A), not back to the version just rolled back from (C -> B ->
    C). Activating it explicitly (through the promotion gate) sets a new ``activated_at``, after
    the roll-back, and makes it a roll-back target again. ``last``: `_last_rolled_back_from()`
    when already read."""
    at = (last if last is not None else _last_rolled_back_from()).get(version.version)
    # the roll-back event is written after the activation it undid, in the roll-back's transaction
    return at if at is not None and version.activated_at is not None and at >= version.activated_at else None


def _rollback_target_of(current: ModelVersion | None) -> ModelVersion | None:
    """The ready or retired version activated most recently, other than ``current``, that has not
    been rolled back from since (`rolled_back_from`)."""
    last = _last_rolled_back_from()
    return next((v for v in _activated_before(current) if rolled_back_from(v, last) is None), None)


def rollback_skipped(current: ModelVersion | None, target: ModelVersion | None) -> list[ModelVersion]:
    """The versions activated after ``target`` (all of them when it is None), other than
    ``current``, that a roll-back passes over because they were rolled back from: the
    confirmation page names them, so that it says exactly what the roll-back does."""
    last = _last_rolled_back_from()
    newer = _activated_before(current)
    if target is not None and target.activated_at is not None:
        newer = newer.filter(activated_at__gte=target.activated_at).exclude(pk=target.pk)
    return [v for v in newer if rolled_back_from(v, last) is not None]


def rollback_refusal(target: ModelVersion) -> str | None:
    """Why ``target`` cannot be rolled back to, or None: its very model must load on this server,
    and its card must have the image checks (`image_checks_of`) a version needs to be active.
    Reads the model (perhaps from the storage): never call it with the active row locked."""
    if not artifact_store.loadable(target):
        return (f"{target.version}'s model cannot be loaded on this server (its files are missing or no longer "
                f"match its sha256 {(target.sha256 or '')[:12]}).")
    checks = image_checks_of(target)
    if checks is not None:
        return f"{target.version} lacks the image checks a version needs to be active: {checks}"
    return None


def rollback(*, user, expected_active_pk: int | None, target_pk: int, reason: str,
             request: HttpRequest | None = None) -> ModelVersion:
    """Re-activate ``target_pk``, the version active before the current one (passing over those
    rolled back from: `rollback_choice`), as the confirmation page named them: refused, with
    nothing changed, when (under the active row's lock) the active version is no longer
    ``expected_active_pk`` (None: no active version) or the target is no longer the one a roll-back
    would choose (a double click, or a page left open while another admin activated or rolled
    back), when the target's model cannot be loaded or lacks its image checks, or without a
    ``reason``. The audit event keeps both versions, their sha256 and the reason; its old "active"
    is what marks the version deactivated as rolled back from (`rolled_back_from`)."""
    reason = (reason or "").strip()
    if not reason:
        raise LifecycleError("Say why you roll back: the reason is kept in the audit trail.")
    target = ModelVersion.objects.filter(pk=target_pk).first()
    if target is None:
        raise LifecycleError("The version to roll back to no longer exists; nothing was changed. Reload the page.")
    refusal = rollback_refusal(target)  # outside the lock: it may fetch the model from the storage
    if refusal:
        raise LifecycleError(f"Roll-back refused: {refusal} Nothing was changed.")
    try:
        with transaction.atomic():
            current = ModelVersion.objects.select_for_update().filter(status=ModelVersion.Status.ACTIVE).first()
            if getattr(current, "pk", None) != expected_active_pk:
                shown = ModelVersion.objects.filter(pk=expected_active_pk).values_list("version", flat=True).first()
                raise LifecycleError(
                    f"The active version is now {current.version if current else 'none'}, not {shown or 'none'} as "
                    f"the page showed: another roll-back or activation happened meanwhile (or the button was clicked "
                    f"twice). Nothing was changed. Reload the page to see what a roll-back would do now.")
            choice = _rollback_target_of(current)
            locked = ModelVersion.objects.select_for_update().filter(pk=target_pk).first()
            if choice is None or choice.pk != target_pk or _identity(locked) != _identity(target):
                raise LifecycleError(
                    f"A roll-back would now re-activate {choice.version if choice else 'no version'}, not "
                    f"{target.version} as the page showed; nothing was changed. Reload the page.")
            activate(locked)
            audit_registry_event(
                user, "rollback", locked, request=request,
                old={"active": current.version if current else None, "active_sha256": getattr(current, "sha256", None)},
                new={"active": locked.version, "active_sha256": locked.sha256, "reason": reason})
            warm_after_commit(locked)
    except IntegrityError as exc:  # the one-active-version constraint: an activation or rollback won the race
        raise LifecycleError("Another version was activated or rolled back to at the same moment; nothing was "
                             "changed. Reload the page to see which version is active.") from exc
    return locked


def audit_registry_event(user, action: str, version: ModelVersion, *, old: dict | None = None,
                         new: dict | None = None, request: HttpRequest | None = None) -> None:
    """Record a registry change in the append-only audit log (with the client's address when
    ``request`` is the admin's request)."""
    audit_log.record(action=action, obj=version, actor=user, old=old, new=new, request=request)
