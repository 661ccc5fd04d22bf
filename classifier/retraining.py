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
import traceback
from datetime import timedelta
from pathlib import Path
from typing import Callable

import numpy as np
from django.conf import settings
from django.db import transaction
from django.db.models import F
from celery.exceptions import SoftTimeLimitExceeded
from django.utils import timezone

from classifier import artifact_store, ensemble_training, fine_tuning
from classifier.lifecycle import REVIEWS, LifecycleError, audit_registry_event, fail_run, requested_sources
from classifier.models import ModelVersion
from classifier.promotion import BOOTSTRAP_RESAMPLES, compare_artifacts, failed_measurement, gate_evidence
from classifier.registry import register_artifact
from mlcore.artifact import read_card
from training.benchmark.plots import PLOT_NAME
from training.config import TrainConfig
from training.ensemble import train_ensemble
from training.train import TrainingCancelled, train

log = logging.getLogger(__name__)
STALE_AFTER = timedelta(minutes=15)
_reviewed_records_provider: Callable[[Path], list] | None = None


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


def run_training(*, version_id: int) -> str:
    """Run the training for ``version_id`` to a ready (or failed) registry version."""
    if not _claim(version_id):
        version = ModelVersion.objects.get(pk=version_id)
        updated = version.progress.get("updated_at")
        if (version.status == ModelVersion.Status.TRAINING and version.finished_at is None and updated
                and timezone.now() - timezone.datetime.fromisoformat(updated) > STALE_AFTER):
            fail_run(version_id, "The training worker stopped (no progress for 15 minutes). Start a new run.")
            return "stale"
        return "already started"
    version = ModelVersion.objects.get(pk=version_id)
    try:
        sources = set(requested_sources(version))
        cache_dir = Path(settings.SECONDLOOK_CACHE_DIR)
        extra = reviewed_records(cache_dir / "reviewed") if REVIEWS in sources else []
        active = ModelVersion.objects.filter(status=ModelVersion.Status.ACTIVE).first()
        out_dir = Path(settings.SECONDLOOK_MODELS_ROOT) / version.version
        config = training_config(version)
        seeds = ensemble_training.member_seeds(version)
        run = dict(
            version=version.version, verbose=0, sources=sorted(sources - {REVIEWS}), extra_records=extra,
            on_progress=lambda progress: _save_progress(version_id, progress),
            should_stop=lambda: ModelVersion.objects.filter(pk=version_id, cancel_requested=True).exists(),
        )
        if seeds:  # the members one after the other (each cancellable), then one artifact of them all
            train_ensemble(config, seeds, settings.SECONDLOOK_DATA_DIR, out_dir, cache_dir, **run)
        else:
            train(config, settings.SECONDLOOK_DATA_DIR, out_dir, cache_dir, **run)
        _save_progress(version_id, {"phase": "comparing with the active model on the frozen benchmark"})
        measure_gate(out_dir, active, target_sensitivity=config.target_sensitivity,
                     on_step=lambda step: _save_progress(version_id, {"phase": f"frozen benchmark: {step}"}))
    except TrainingCancelled:
        fail_run(version_id, "Cancelled by an administrator.")
        return "cancelled"
    except SoftTimeLimitExceeded:  # Celery's soft limit: say it in words, the hard limit is next
        limit_min = ensemble_training.time_limits_s(max(1, len(ensemble_training.member_seeds(version))))[0] // 60
        fail_run(version_id, f"Stopped: the run exceeded its training time limit ({limit_min} minutes). "
                          "Retry with fewer epochs or fewer ensemble members.")
        return "failed"
    except Exception as exc:  # the run failed: say why in the admin, keep the traceback in the log
        log.exception("training %s failed", version.version)
        fail_run(version_id, f"{type(exc).__name__}: {exc}\n\n{traceback.format_exc(limit=5)}")
        return "failed"
    if ModelVersion.objects.filter(pk=version_id, cancel_requested=True).exists():  # asked during the comparison
        fail_run(version_id, "Cancelled by an administrator.")
        return "cancelled"
    try:
        registered = register_artifact(out_dir)
        notes = f"Trained from {', '.join(sorted(sources))}; {reviewed_summary(extra)}"
        if fine_tuning.describe_start(version):
            notes = f"{fine_tuning.describe_start(version)}. {notes}"
        extra_fields = {}
        if seeds:
            notes = f"{ensemble_training.describe(version)}. {notes}"
            extra_fields["metrics"] = dict(registered.metrics, architecture=ensemble_training.architecture(
                seeds, read_card(out_dir, required=())))
        # only a run still training becomes ready: one cancelled or failed by the sweep meanwhile stays so
        ready = ModelVersion.objects.filter(pk=version_id, status=ModelVersion.Status.TRAINING,
                                            cancel_requested=False).update(
            status=ModelVersion.Status.READY, finished_at=timezone.now(),
            progress=F("progress"), notes=notes, **extra_fields,
        )
    except Exception as exc:  # trained, but not registered: never leave it "training"
        log.exception("registering %s failed", version.version)
        fail_run(version_id, f"Training finished but the model could not be registered: {type(exc).__name__}: {exc}")
        return "failed"
    if not ready:
        fail_run(version_id, "Cancelled by an administrator.", keep_earlier_failure=True)
        return "cancelled"
    _save_progress(version_id, {"phase": "done"})
    return registered.version


def sweep_stale_runs(*, now=None) -> list[str]:
    """Fail the runs that cannot still be running: no progress for STALE_AFTER (the worker was
    killed, or no training worker ever picked the run up), or past the task's hard time limit."""
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
                      " and retry." if version.started_at is None else
                      "The training worker stopped (no progress for 15 minutes).")
        else:
            continue
        if ModelVersion.objects.filter(pk=version.pk, status=ModelVersion.Status.TRAINING).update(
                status=ModelVersion.Status.FAILED, error=reason, finished_at=now):
            failed.append(version.version)
    return failed
