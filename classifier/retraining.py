"""A training run started from the admin, as executed by a worker of the ``training`` queue.

Learning from reviews: images of lesions with a dermatologist's final diagnosis become labelled
training records (reviewer and date kept as provenance); they pass through the same audit and
lesion-level split as the public datasets (which keeps the frozen benchmark's lesions out of
training). A run trains one CNN, or an ensemble of one CNN per member seed combined into one
artifact (``training.ensemble.train_ensemble``; see ``classifier.ensemble_training``). When the run has finished, the new version and the active one are compared on the
frozen benchmark (``measure_gate``): that comparison is the promotion gate.
"""
from __future__ import annotations

import json
import logging
import threading
import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Callable

import numpy as np
from django.conf import settings
from django.db import connections, transaction
from django.db.models import F, Q, Value
from django.db.models.functions import Concat
from celery.exceptions import SoftTimeLimitExceeded
from django.utils import timezone

from classifier import artifact_store, ensemble_training, fine_tuning
from classifier.lifecycle import REVIEWS, LifecycleError, audit_registry_event, requested_sources
from classifier.models import ModelVersion
from classifier.promotion import BOOTSTRAP_RESAMPLES, compare_artifacts, failed_measurement, gate_evidence
from classifier.registry import RunNoLongerTraining, register_artifact
from mlcore.artifact import read_card
from training.benchmark.plots import PLOT_NAME
from training.config import TrainConfig
from training.ensemble import train_ensemble
from training.train import TrainingCancelled, train

log = logging.getLogger(__name__)
STALE_AFTER = timedelta(minutes=15)
# A live run's heartbeat (`heartbeat`): many beats within STALE_AFTER, so a slow database or a
# missed beat never lets the sweep fail a run that is still working.
HEARTBEAT_S = 60.0
NO_PROGRESS = "The training worker stopped (no progress for 15 minutes)."
WORKER_LOST = ("The training worker process stopped (for example out of memory) during this run; "
               "start it again.")
CANCELLED = "Cancelled by an administrator."
_reviewed_records_provider: Callable[[Path], list] | None = None
# the folder under SECONDLOOK_CACHE_DIR where the provider exports the reviewed images for a run
REVIEWED_EXPORT_DIR = "reviewed"


def set_reviewed_records_provider(provider: Callable[[Path], list] | None) -> None:
    """Register who turns dermatologist-confirmed lesions into training records (``provider(export_dir)``
    -> list of training.data.ImageRecord). The clinical app registers its own at start-up
    (cases.apps): the registry knows nothing of patients or reviews."""
    global _reviewed_records_provider
    _reviewed_records_provider = provider


def reviewed_records(export_dir: Path) -> list:
    """The registered provider's training records ([] when none is registered). The provider may
    say what it left out, and why, in the list's ``excluded`` ({reason: count}); it is logged."""
    records = _reviewed_records_provider(export_dir) if _reviewed_records_provider else []
    if getattr(records, "excluded", None):
        log.info("reviewed cases: %d images exported; left out: %s", len(records), records.excluded)
    return records


def reviewed_summary(records: list) -> str:
    """The run notes' sentence on the reviewed images: how many, and what was left out and why."""
    excluded = getattr(records, "excluded", None) or {}
    left_out = "; ".join(f"{count} {reason}" for reason, count in excluded.items())
    return f"{len(records)} reviewed images." + (f" Left out of the reviewed cases: {left_out}." if left_out else "")


GATE_FILE = "gate.json"  # read into metrics["gate"] by registry.register_artifact


def measure_gate(candidate_dir: Path, active: ModelVersion | None, *, target_sensitivity: float,
                 on_step: Callable[[str], None] | None = None) -> dict:
    """The paired comparison of the candidate artifact with ``active`` on the frozen benchmark
    (and PH2, reported), with the gate's BOOTSTRAP_RESAMPLES resamples whatever the run's
    settings (``evaluate_gate`` refuses fewer), written to the artifact's gate.json with the paired ROC in
    plots/benchmark_roc.png. When it cannot be measured (benchmark images missing from the data,
    an unloadable model) the reason is stored instead: the version stays usable, not promotable."""
    candidate_dir = Path(candidate_dir)
    try:
        gate = compare_artifacts(
            candidate_dir, artifact_store.local_dir(active) if active else None, settings.SECONDLOOK_DATA_DIR,
            Path(settings.SECONDLOOK_CACHE_DIR), target_sensitivity=target_sensitivity, n_resamples=BOOTSTRAP_RESAMPLES,
            plot_to=candidate_dir / "plots" / f"{PLOT_NAME}.png", on_step=on_step).to_dict()
    except SoftTimeLimitExceeded:  # the task's time limit, not a measurement problem: run_training says so
        raise
    except Exception as exc:  # e.g. BenchmarkError: the data lack benchmark images; ModelLoadError
        log.exception("comparing %s on the frozen benchmark failed", candidate_dir)
        gate = failed_measurement(f"{type(exc).__name__}: {exc}")
    candidate_dir.mkdir(parents=True, exist_ok=True)
    (candidate_dir / GATE_FILE).write_text(json.dumps(gate, indent=1))
    return gate


def training_config(version: ModelVersion):
    """Default config, then ops overrides (settings.SECONDLOOK_TRAINING_OVERRIDES), then the run's own.
    A fine-tuning run takes the settings of the model it continues instead of the defaults and the
    ops overrides (`fine_tuning.run_config`): its network must be that model's."""
    overrides = dict(settings.SECONDLOOK_TRAINING_OVERRIDES)
    asked = {k: version.training_config[k] for k in ("epochs", "seed", "target_sensitivity")
             if k in version.training_config}
    # Per-run expert overrides (not offered in the admin form; used by ops and tests).
    per_run = version.training_config.get("overrides", {})
    start = version.training_config.get(fine_tuning.START_KEY)
    if start:  # the model it continues sets everything else (its architecture above all)
        return fine_tuning.run_config(start, per_run=per_run, asked=asked)
    return TrainConfig.from_dict(TrainConfig().to_dict() | overrides | per_run | asked)


def _save_progress(version_id: int, progress: dict) -> None:
    progress = {k: (None if isinstance(v, float) and not np.isfinite(v) else v) for k, v in progress.items()}
    ModelVersion.objects.filter(pk=version_id).update(progress=progress | {"updated_at": timezone.now().isoformat()})


def _claim(version_id: int) -> bool:
    """One conditional UPDATE: only the first delivery of this run starts it."""
    return bool(ModelVersion.objects.filter(
        pk=version_id, status=ModelVersion.Status.TRAINING, started_at__isnull=True
    ).update(started_at=timezone.now(), progress={"phase": "starting"}))


def remeasure_gate(version: ModelVersion, *, user=None) -> dict:
    """Compare ``version`` again with the model active now (after another activation, or with a
    new benchmark version) and store the result in its metrics["gate"], audited with the evidence
    it replaces. Refused for the active version: its comparison is the evidence its activation
    was justified by, and stays as it was."""
    if version.status == ModelVersion.Status.ACTIVE:
        raise LifecycleError(_ACTIVE_KEEPS_ITS_GATE.format(version=version.version))
    active = ModelVersion.objects.filter(status=ModelVersion.Status.ACTIVE).exclude(pk=version.pk).first()
    target = version.target_sensitivity or version.training_config.get("target_sensitivity") or 0.90
    before = version.metrics.get("gate")
    model_dir = Path(artifact_store.local_dir(version))
    gate_file, plot_file = model_dir / GATE_FILE, model_dir / "plots" / f"{PLOT_NAME}.png"
    kept_file = gate_file.read_text() if gate_file.is_file() else None
    kept_plot = plot_file.read_bytes() if plot_file.is_file() else None
    gate = measure_gate(model_dir, active, target_sensitivity=target)
    with transaction.atomic():  # activated while it was being measured: the evidence stays, its file too
        if not ModelVersion.objects.filter(pk=version.pk).exclude(status=ModelVersion.Status.ACTIVE).update(
                metrics=dict(version.metrics, gate=gate)):
            # the gate table and its ROC plot are put back as they were, together
            for path, kept, write in ((gate_file, kept_file, gate_file.write_text),
                                      (plot_file, kept_plot, plot_file.write_bytes)):
                if kept is None:
                    path.unlink(missing_ok=True)
                else:
                    write(kept)
            raise LifecycleError(_ACTIVE_KEEPS_ITS_GATE.format(version=version.version))
        audit_registry_event(user, "update", version, old={"gate": gate_evidence(before) if before else None},
                             new={"gate": gate_evidence(gate), "reason": "promotion gate re-measured on the frozen "
                                                                           "benchmark"})
    version.refresh_from_db()
    return gate


_ACTIVE_KEEPS_ITS_GATE = ("{version} is the active version: its comparison on the frozen benchmark is the evidence its "
                          "activation was justified by, and is not measured again. Compare ready or retired versions.")


def run_training(*, version_id: int, redelivered: bool = False, heartbeat_s: float = HEARTBEAT_S) -> str:
    """Run the training for ``version_id`` to a ready (or failed) registry version.

    Idempotent: only the delivery that claims the run trains it. ``redelivered`` (the broker
    handed this message out before, unacknowledged) for a run already started means the worker
    that ran it is gone (killed, out of memory): the run ends failed at once with that reason.
    While it runs, a heartbeat thread stamps its progress every ``heartbeat_s`` seconds, so that
    the stale-run sweep leaves long silent steps alone."""
    if not _claim(version_id):
        return _not_claimed(version_id, redelivered=redelivered, heartbeat_s=heartbeat_s)
    with heartbeat(version_id, every_s=heartbeat_s):
        return _run_claimed(version_id)


def _not_claimed(version_id: int, *, redelivered: bool, heartbeat_s: float = HEARTBEAT_S) -> str:
    """A delivery of a run that was cancelled before it started, already ran, or is running."""
    # A redelivery usually means the worker died (the broker requeues a late-acknowledged task whose
    # process was killed), but a broker connection blip also redelivers while the first worker still
    # trains: only a heartbeat that stops moving for two beats proves the run is gone.
    # An earlier failure (its real reason) stays; a finished run is never touched.
    if (redelivered and not _heartbeat_moves(version_id, within_s=2 * heartbeat_s)
            and _end_failed(version_id, WORKER_LOST, keep_earlier_failure=True,
                            by="the training task, redelivered", started=True)):
        return "worker lost"
    version = ModelVersion.objects.filter(pk=version_id).first()
    if version is None:
        return "gone"
    updated = version.progress.get("updated_at")
    if (version.status == ModelVersion.Status.TRAINING and version.finished_at is None and updated
            and timezone.now() - timezone.datetime.fromisoformat(updated) > STALE_AFTER
            and _fail_if_unchanged(version, f"{NO_PROGRESS} Start a new run.",
                                   by="the training task, delivered again")):
        return "stale"
    return "already started"


def _run_claimed(version_id: int) -> str:
    """The run this delivery claimed: train, compare, register; every way out ends the row."""
    version = ModelVersion.objects.get(pk=version_id)
    try:
        sources = set(requested_sources(version))
        cache_dir = Path(settings.SECONDLOOK_CACHE_DIR)
        extra = reviewed_records(cache_dir / REVIEWED_EXPORT_DIR) if REVIEWS in sources else []
        out_dir = Path(settings.SECONDLOOK_MODELS_ROOT) / version.version
        config = training_config(version)
        seeds = ensemble_training.member_seeds(version)
        run = dict(
            version=version.version, verbose=0, sources=sorted(sources - {REVIEWS}), extra_records=extra,
            on_progress=lambda progress: _save_progress(version_id, progress),
            should_stop=lambda: _should_stop(version_id),
        )
        if seeds:  # the members one after the other (each cancellable), then one artifact of them all
            train_ensemble(config, seeds, settings.SECONDLOOK_DATA_DIR, out_dir, cache_dir, **run)
        else:
            train(config, settings.SECONDLOOK_DATA_DIR, out_dir, cache_dir, **run)
        _save_progress(version_id, {"phase": "comparing with the active model on the frozen benchmark"})
        # the version active now, read after the training (hours long): another one may have been
        # activated or rolled back to meanwhile, and the gate must compare with the one in service
        active = ModelVersion.objects.filter(status=ModelVersion.Status.ACTIVE).first()
        measure_gate(out_dir, active, target_sensitivity=config.target_sensitivity,
                     on_step=lambda step: _save_progress(version_id, {"phase": f"frozen benchmark: {step}"}))
    except TrainingCancelled:
        # a run the sweep failed meanwhile stops too, and keeps the sweep's reason
        return "cancelled" if _end_failed(version_id, CANCELLED, keep_earlier_failure=True) else "stopped"
    except SoftTimeLimitExceeded:  # Celery's soft limit: say it in words, the hard limit is next
        _end_failed(version_id, _time_limit_reason(version))
        return "failed"
    except Exception as exc:  # the run failed: say why in the admin, keep the traceback in the log
        log.exception("training %s failed", version.version)
        _end_failed(version_id, f"{type(exc).__name__}: {exc}\n\n{traceback.format_exc(limit=5)}")
        return "failed"
    if ModelVersion.objects.filter(pk=version_id, cancel_requested=True).exists():  # asked during the comparison
        _end_failed(version_id, CANCELLED, keep_earlier_failure=True)
        return "cancelled"
    try:
        registered = register_artifact(out_dir, run_id=version_id)
        notes = f"Trained from {', '.join(sorted(sources))}; {reviewed_summary(extra)}"
        if fine_tuning.describe_start(version):
            notes = f"{fine_tuning.describe_start(version)}. {notes}"
        extra_fields = {}
        if seeds:
            notes = f"{ensemble_training.describe(version)}. {notes}"
            extra_fields["metrics"] = dict(registered.metrics, architecture=ensemble_training.architecture(
                seeds, read_card(out_dir, required=())))
        with transaction.atomic():  # the outcome and its audit event together
            # only a run still training becomes ready: one cancelled or failed by the sweep meanwhile stays so
            ready = ModelVersion.objects.filter(pk=version_id, status=ModelVersion.Status.TRAINING,
                                                cancel_requested=False).update(
                status=ModelVersion.Status.READY, finished_at=timezone.now(),
                progress=F("progress"), notes=notes, **extra_fields,
            )
            if ready:
                _audit_outcome(version_id, ModelVersion.Status.READY, by="the training run",
                               detail={"version": registered.version, "sha256": registered.sha256})
    except RunNoLongerTraining as exc:  # failed (the sweep) or deleted meanwhile: left as it is, not resurrected
        log.warning("%s", exc)
        _note_not_registered(version_id, out_dir)
        return "not registered"
    except SoftTimeLimitExceeded:
        _end_failed(version_id, _time_limit_reason(version))
        return "failed"
    except Exception as exc:  # trained, but not registered: never leave it "training"
        log.exception("registering %s failed", version.version)
        _end_failed(version_id, f"Training finished but the model could not be registered: {type(exc).__name__}: {exc}")
        return "failed"
    if not ready:
        _end_failed(version_id, CANCELLED, keep_earlier_failure=True)
        return "cancelled"
    _save_progress(version_id, {"phase": "done"})
    return registered.version


def _should_stop(version_id: int) -> bool:
    """Stop when an administrator asked to, or when the row is no longer a live run (failed by the
    sweep, deleted): its result could not be registered anyway."""
    return not ModelVersion.objects.filter(pk=version_id, status=ModelVersion.Status.TRAINING,
                                           cancel_requested=False).exists()


def _time_limit_reason(version: ModelVersion) -> str:
    limit_min = ensemble_training.time_limits_s(max(1, len(ensemble_training.member_seeds(version))))[0] // 60
    return (f"Stopped: the run exceeded its training time limit ({limit_min} minutes). "
            "Retry with fewer epochs or fewer ensemble members.")


def _note_not_registered(version_id: int, out_dir: Path) -> None:
    """Say on a run that had already failed that it finished after all, unregistered (one
    conditional UPDATE appending to its error; a deleted row has nothing to say it on)."""
    note = (f"\n\nThe training finished after this run had ended; its model was not registered "
            f"(its files are in {out_dir}).")
    ModelVersion.objects.filter(pk=version_id, status=ModelVersion.Status.FAILED).update(
        error=Concat(F("error"), Value(note)))


def _end_failed(version_id: int, reason: str, *, keep_earlier_failure: bool = False, by: str = "the training run",
                started: bool = False) -> bool:
    """End a run failed with ``reason`` (one conditional UPDATE), audited; True when this call ended it.

    Only a training row, or (unless ``keep_earlier_failure``) a failed one, whose reason the run's
    own, real one replaces: a ready or active version is never failed. ``started``: only a run a
    worker claimed."""
    statuses = [ModelVersion.Status.TRAINING] + ([] if keep_earlier_failure else [ModelVersion.Status.FAILED])
    runs = ModelVersion.objects.filter(pk=version_id, status__in=statuses)
    if started:
        runs = runs.filter(started_at__isnull=False)
    if not runs.update(status=ModelVersion.Status.FAILED, error=reason, finished_at=timezone.now()):
        return False
    try:  # the failed state stands even if its audit event cannot be written: it is what the admin sees
        _audit_outcome(version_id, ModelVersion.Status.FAILED, by=by, detail={"error": reason[:500]})
    except Exception:
        log.exception("auditing the failure of training run %s failed", version_id)
    return True


def _audit_outcome(version_id: int, status: str, *, by: str, detail: dict) -> None:
    """The audit event of a run's outcome: actor the system (a worker), status training -> ``status``."""
    audit_registry_event(None, "update", ModelVersion(pk=version_id), old={"status": ModelVersion.Status.TRAINING},
                         new={"status": status, "by": by} | detail)


class _Heartbeat:
    """A daemon thread that stamps a run's ``progress["updated_at"]`` every ``every_s`` seconds."""

    def __init__(self, version_id: int, every_s: float) -> None:
        self.version_id, self.every_s = version_id, every_s
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"training-heartbeat-{version_id}", daemon=True)

    def _beat(self) -> None:
        try:
            while not self._stopped.wait(self.every_s):
                try:
                    stamp_heartbeat(self.version_id)
                except Exception:  # a database hiccup must not end the beats, nor the run
                    log.exception("heartbeat of training run %s failed", self.version_id)
        finally:
            connections.close_all()  # this thread's own connections

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopped.set()
        self._thread.join(timeout=30)


@contextmanager
def heartbeat(version_id: int, *, every_s: float = HEARTBEAT_S) -> Iterator[None]:
    """Keep a run's heartbeat going while the block runs, and stop it when the block ends.

    Its steps report progress when they can, but some are long and silent (exporting the reviewed
    cases, combining an ensemble's members); the heartbeat proves the worker process is alive
    meanwhile. A hung step is still ended by the task's hard time limit (and the sweep's)."""
    beat = _Heartbeat(version_id, every_s)
    beat.start()
    try:
        yield
    finally:
        beat.stop()


def stamp_heartbeat(version_id: int, *, now=None) -> bool:
    """Set the run's ``progress["updated_at"]`` to ``now`` and nothing else, while it is training.

    One conditional UPDATE on the progress stamp it read: a progress report written meanwhile (every
    report stamps its own time) is not overwritten with the older phase read here."""
    progress = ModelVersion.objects.filter(pk=version_id, status=ModelVersion.Status.TRAINING).values_list(
        "progress", flat=True).first()
    if progress is None:  # finished, failed, deleted: nothing to keep alive
        return False
    stamped = dict(progress, updated_at=(now or timezone.now()).isoformat())
    return bool(ModelVersion.objects.filter(_progress_stamp_is(progress.get("updated_at")), pk=version_id,
                                            status=ModelVersion.Status.TRAINING).update(progress=stamped))


def _heartbeat_moves(version_id: int, *, within_s: float, poll_s: float = 5.0) -> bool:
    """Whether a training run's progress stamp changes within ``within_s`` seconds (its worker is
    alive); False at once for a run that is not training."""
    def stamp() -> tuple[bool, str | None]:
        row = ModelVersion.objects.filter(pk=version_id).values_list("status", "progress").first()
        return (row is not None and row[0] == ModelVersion.Status.TRAINING,
                (row[1] or {}).get("updated_at") if row else None)

    training, first = stamp()
    deadline = time.monotonic() + within_s
    while training and time.monotonic() < deadline:
        time.sleep(max(0.0, min(poll_s, within_s / 4, deadline - time.monotonic())))
        training, now = stamp()
        if now != first:
            return training
    return False


def _progress_stamp_is(updated_at: str | None) -> Q:
    """Rows whose ``progress["updated_at"]`` is ``updated_at`` (absent or null for None)."""
    if updated_at is None:
        return Q(progress__updated_at__isnull=True) | Q(progress__updated_at=None)
    return Q(progress__updated_at=updated_at)


def _fail_if_unchanged(version: ModelVersion, reason: str, *, by: str, now=None) -> bool:
    """Fail ``version`` with ``reason`` only if it is still the run that was judged: training, with
    the progress stamp and start that were read (a heartbeat or a claim meanwhile wins); audited."""
    now = now or timezone.now()
    with transaction.atomic():
        if not ModelVersion.objects.filter(
                _progress_stamp_is(version.progress.get("updated_at")), pk=version.pk,
                status=ModelVersion.Status.TRAINING, started_at=version.started_at).update(
                    status=ModelVersion.Status.FAILED, error=reason, finished_at=now):
            return False
        _audit_outcome(version.pk, ModelVersion.Status.FAILED, by=by, detail={"error": reason})
    return True


def sweep_stale_runs(*, now=None) -> list[str]:
    """Fail the runs that cannot still be running: no progress for STALE_AFTER (the worker was
    killed, or no training worker ever picked the run up), or past the task's hard time limit.
    Each failure is conditional on what was read, so a run that reported meanwhile is left alone."""
    now = now or timezone.now()
    failed = []
    for version in ModelVersion.objects.filter(status=ModelVersion.Status.TRAINING):
        updated = version.progress.get("updated_at")
        last = timezone.datetime.fromisoformat(updated) if updated else (version.started_at or version.created_at)
        # an ensemble run has its own, longer limit (its members train one after the other)
        limit = int(version.training_config.get("time_limit_s") or settings.TRAINING_TIME_LIMIT)
        if version.started_at and now - version.started_at > timedelta(seconds=limit):
            reason = f"The run exceeded the training time limit ({limit // 60} minutes) and was stopped."
        elif now - last > STALE_AFTER:
            reason = ("No training worker picked the run up within 15 minutes: start one (celery worker -Q training)"
                      " and retry." if version.started_at is None else NO_PROGRESS)
        else:
            continue
        if _fail_if_unchanged(version, reason, by="the stale-run sweep", now=now):
            failed.append(version.version)
    return failed
