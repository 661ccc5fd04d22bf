"""Background training runs end in the state that is true, with the real reason, and audited:
a heartbeat keeps long silent steps alive for the stale-run sweep, the sweep never fails a run
that reported meanwhile, registration never resurrects or overwrites a run that ended, a soft
time limit is reported as such, a worker killed mid-run is reported at once.

No real training: the training functions are replaced by stand-ins that write a model card."""
from __future__ import annotations

import hashlib
import json
import threading
import time
from datetime import timedelta
from pathlib import Path

import pytest
from celery.exceptions import SoftTimeLimitExceeded
from django.utils import timezone

from audit.models import AuditEvent
from classifier import registry, retraining
from classifier.models import ModelVersion
from mlcore.artifact import CARD_FILE, MODEL_FILE
from tests.support.training_runs import data_here  # noqa: F401  (a fixture)


def write_artifact(model_dir: Path, version: str) -> Path:
    """A stand-in exported artifact: a "model file" and a card naming ``version``."""
    model_dir.mkdir(parents=True, exist_ok=True)
    (model_dir / MODEL_FILE).write_bytes(f"weights of {version}".encode())
    sha = hashlib.sha256(f"weights of {version}".encode()).hexdigest()
    card = {"version": version, "model_sha256": sha, "data_sources": ["ham10000"], "metrics": {"melanoma_auc": 0.9},
            "thresholds": {"melanoma": 0.4, "malignancy": 0.5},
            # image checks: a version needs them to be active (the shipped default too)
            "assessment": {"quality": {"thresholds": {"sharpness_min": 1.0}}, "ood": {"file": "ood.npz", "sha256": "0" * 64}}}
    (model_dir / CARD_FILE).write_text(json.dumps(card))
    return model_dir


@pytest.fixture
def run_settings(settings, data_here):
    """Data, models and cache under tmp_path (`data_here`); models kept on this host only."""
    settings.SECONDLOOK_MODELS_IN_STORAGE = False
    return settings


def new_run(name: str = "run-x", **fields) -> ModelVersion:
    return ModelVersion.objects.create(version=name, status="training", data_sources=["ham10000"],
                                       training_config={"sources": ["ham10000"], "epochs": 1, "seed": 0,
                                                        "target_sensitivity": 0.9}, **fields)


def trains_an_artifact(*args, **kwargs) -> None:
    """Stand-in for training.train.train: the artifact it exports (out_dir is its 3rd argument)."""
    write_artifact(Path(args[2]), kwargs["version"])


def outcome_events(run: ModelVersion) -> list[dict]:
    events = AuditEvent.objects.filter(object_type="modelversion", object_id=str(run.pk), action="update")
    return [event.new_values | {"actor": event.actor_id} for event in events.order_by("pk")]


# --- 1. heartbeat and sweep ---------------------------------------------------------------------

@pytest.mark.django_db(transaction=True)
def test_the_heartbeat_keeps_a_long_silent_step_alive_for_the_sweep(run_settings, monkeypatch):
    """A step that reports nothing for 20 minutes (the ensemble's combine, the reviewed-case
    export): the heartbeat thread stamps the run meanwhile, and the sweep leaves it training."""
    run = new_run()
    seen = {}

    def silent_step(*args, **kwargs):
        # as if this step had been silent for 20 minutes since the run started
        long_ago = timezone.now() - timedelta(minutes=20)
        ModelVersion.objects.filter(pk=run.pk).update(started_at=long_ago, progress={
            "phase": "combining the members", "updated_at": long_ago.isoformat()})
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            progress = ModelVersion.objects.get(pk=run.pk).progress
            if progress["updated_at"] != long_ago.isoformat():
                break
            time.sleep(0.02)
        seen["progress"] = progress
        seen["swept"] = retraining.sweep_stale_runs()
        seen["status"] = ModelVersion.objects.get(pk=run.pk).status
        trains_an_artifact(*args, **kwargs)

    monkeypatch.setattr(retraining, "train", silent_step)
    monkeypatch.setattr(retraining, "measure_gate", lambda *a, **k: {})
    assert retraining.run_training(version_id=run.pk, heartbeat_s=0.05) == "run-x"

    assert seen["progress"]["phase"] == "combining the members"  # the stamp only, the phase kept
    assert timezone.now() - timezone.datetime.fromisoformat(seen["progress"]["updated_at"]) < timedelta(seconds=10)
    assert seen["swept"] == [] and seen["status"] == "training"
    run.refresh_from_db()
    assert run.status == "ready"
    assert not [t for t in threading.enumerate() if t.name.startswith("training-heartbeat-")]  # stopped


@pytest.mark.django_db
def test_a_heartbeat_stamps_only_a_training_run_and_only_its_time():
    run = new_run(progress={"phase": "epoch 3", "epoch": 3, "updated_at": "2026-01-01T00:00:00+00:00"})
    now = timezone.now()
    assert retraining.stamp_heartbeat(run.pk, now=now)
    run.refresh_from_db()
    assert run.progress == {"phase": "epoch 3", "epoch": 3, "updated_at": now.isoformat()}
    ModelVersion.objects.filter(pk=run.pk).update(status="failed", error="swept")
    assert not retraining.stamp_heartbeat(run.pk, now=now + timedelta(minutes=1))
    run.refresh_from_db()
    assert run.progress["updated_at"] == now.isoformat() and run.status == "failed"


@pytest.mark.django_db
def test_the_sweep_does_not_fail_a_run_whose_progress_moved_after_it_was_read():
    """The sweep read a stale stamp; a heartbeat (or a claim) lands before its UPDATE: it wins."""
    long_ago = timezone.now() - timedelta(minutes=20)
    run = new_run(started_at=long_ago, progress={"phase": "combining", "updated_at": long_ago.isoformat()})
    read_by_the_sweep = ModelVersion.objects.get(pk=run.pk)
    assert retraining.stamp_heartbeat(run.pk)  # the heartbeat, between the sweep's read and its write
    assert not retraining._fail_if_unchanged(read_by_the_sweep, retraining.NO_PROGRESS, by="the stale-run sweep")
    assert retraining.sweep_stale_runs() == []
    run.refresh_from_db()
    assert run.status == "training" and not run.error

    ModelVersion.objects.filter(pk=run.pk).delete()  # one training run at a time
    queued = new_run("queued")
    read_unstarted = ModelVersion.objects.get(pk=queued.pk)
    assert retraining._claim(queued.pk)  # a worker claims it between the sweep's read and its write
    assert not retraining._fail_if_unchanged(read_unstarted, "No training worker picked the run up",
                                             by="the stale-run sweep")
    assert ModelVersion.objects.get(pk=queued.pk).status == "training"


@pytest.mark.django_db
def test_the_sweep_fails_a_silent_run_with_its_reason_and_audits_it():
    long_ago = timezone.now() - timedelta(minutes=20)
    run = new_run(started_at=long_ago, progress={"phase": "epoch 1", "updated_at": long_ago.isoformat()})
    assert retraining.sweep_stale_runs() == ["run-x"]
    run.refresh_from_db()
    assert run.status == "failed" and run.error == retraining.NO_PROGRESS
    assert outcome_events(run) == [{"status": "failed", "by": "the stale-run sweep", "error": retraining.NO_PROGRESS,
                                    "actor": None}]


# --- 2. registration of a finished run --------------------------------------------------------------

@pytest.mark.django_db
def test_registering_a_run_writes_its_artifact_fields_by_primary_key_and_nothing_else(tmp_path, run_settings):
    run = new_run(progress={"phase": "frozen benchmark: scoring"})
    ModelVersion.objects.filter(pk=run.pk).update(cancel_requested=True)  # after the run read its row
    registered = registry.register_artifact(write_artifact(tmp_path / "out", "run-x"), run_id=run.pk)
    assert registered.pk == run.pk and registered.sha256 and registered.melanoma_threshold == 0.4
    assert registered.status == "training" and registered.cancel_requested  # not written back stale
    assert registered.progress == {"phase": "frozen benchmark: scoring"}


@pytest.mark.django_db
def test_registering_a_run_that_failed_or_was_deleted_meanwhile_changes_nothing(tmp_path, run_settings):
    artifact = write_artifact(tmp_path / "out", "run-x")
    run = new_run()
    ModelVersion.objects.filter(pk=run.pk).update(status="failed", error="swept")
    with pytest.raises(registry.RunNoLongerTraining):
        registry.register_artifact(artifact, run_id=run.pk)
    run.refresh_from_db()
    assert (run.status, run.error, run.sha256, run.artifact_path) == ("failed", "swept", "", "")

    ModelVersion.objects.filter(pk=run.pk).delete()
    with pytest.raises(registry.RunNoLongerTraining):
        registry.register_artifact(artifact, run_id=run.pk)
    assert not ModelVersion.objects.filter(version="run-x").exists()  # not resurrected


@pytest.mark.django_db
def test_registering_from_the_command_line_creates_or_refreshes_the_artifact_fields_only(tmp_path, run_settings):
    artifact = write_artifact(tmp_path / "cli", "cli-1")
    created = registry.register_artifact(artifact, notes="by hand")
    assert (created.status, created.notes, created.melanoma_threshold) == ("ready", "by hand", 0.4)
    ModelVersion.objects.filter(pk=created.pk).update(status="retired", notes="kept")
    card = json.loads((artifact / CARD_FILE).read_text()) | {"thresholds": {"melanoma": 0.3}}
    (artifact / CARD_FILE).write_text(json.dumps(card))
    again = registry.register_artifact(artifact)
    assert again.pk == created.pk and (again.status, again.notes, again.melanoma_threshold) == ("retired", "kept", 0.3)


@pytest.mark.django_db
@pytest.mark.parametrize("ending", ["failed by the sweep", "deleted"])
def test_a_run_that_ended_during_its_comparison_is_not_registered_nor_resurrected(run_settings, monkeypatch, ending):
    run = new_run()

    def ended_meanwhile(*args, **kwargs):
        if ending == "deleted":  # failed by the sweep, then deleted by an administrator
            ModelVersion.objects.filter(pk=run.pk).delete()
        else:
            ModelVersion.objects.filter(pk=run.pk).update(status="failed", error=retraining.NO_PROGRESS)
        return {}

    monkeypatch.setattr(retraining, "train", trains_an_artifact)
    monkeypatch.setattr(retraining, "measure_gate", ended_meanwhile)
    assert retraining.run_training(version_id=run.pk) == "not registered"
    if ending == "deleted":
        assert not ModelVersion.objects.filter(version="run-x").exists()
    else:
        run.refresh_from_db()
        assert run.status == "failed" and run.error.startswith(retraining.NO_PROGRESS)
        assert "finished after this run had ended; its model was not registered" in run.error
        assert not run.sha256 and not ModelVersion.objects.filter(status="ready").exists()


@pytest.mark.django_db
def test_a_finished_run_becomes_ready_and_its_outcome_is_audited(run_settings, monkeypatch):
    run = new_run()
    monkeypatch.setattr(retraining, "train", trains_an_artifact)
    monkeypatch.setattr(retraining, "measure_gate", lambda *a, **k: {})
    assert retraining.run_training(version_id=run.pk) == "run-x"
    run.refresh_from_db()
    assert run.status == "ready" and run.sha256 and run.progress["phase"] == "done"
    assert outcome_events(run) == [{"status": "ready", "by": "the training run", "version": "run-x",
                                    "sha256": run.sha256, "actor": None}]


@pytest.mark.django_db
def test_a_failed_run_is_audited_with_its_reason(run_settings, monkeypatch):
    run = new_run()
    monkeypatch.setattr(retraining, "train", lambda *a, **k: (_ for _ in ()).throw(OSError("disk full")))
    assert retraining.run_training(version_id=run.pk) == "failed"
    run.refresh_from_db()
    assert run.status == "failed" and run.error.startswith("OSError: disk full")
    [event] = outcome_events(run)
    assert event["status"] == "failed" and event["error"].startswith("OSError: disk full") and event["actor"] is None


@pytest.mark.django_db
def test_a_run_failed_by_the_sweep_stops_at_its_next_check_and_keeps_the_sweeps_reason(run_settings, monkeypatch):
    from training.train import TrainingCancelled

    run = new_run()

    def swept_while_training(*args, should_stop, **kwargs):
        ModelVersion.objects.filter(pk=run.pk).update(status="failed", error="The run exceeded the time limit.")
        if should_stop():
            raise TrainingCancelled("training cancelled on request")

    monkeypatch.setattr(retraining, "train", swept_while_training)
    assert retraining.run_training(version_id=run.pk) == "stopped"
    run.refresh_from_db()
    assert run.status == "failed" and run.error == "The run exceeded the time limit."


# --- 3. soft time limit ---------------------------------------------------------------------------

def test_an_ensemble_member_stopped_by_the_soft_time_limit_is_not_reported_as_its_failure(tmp_path, monkeypatch):
    import training.train
    from training.config import TrainConfig
    from training.ensemble import EnsembleMemberFailed, train_ensemble

    def out_of_time(*args, **kwargs):
        raise SoftTimeLimitExceeded()

    monkeypatch.setattr(training.train, "train", out_of_time)
    with pytest.raises(SoftTimeLimitExceeded):
        train_ensemble(TrainConfig(), [1, 2], tmp_path, tmp_path / "out", None)
    monkeypatch.setattr(training.train, "train", lambda *a, **k: (_ for _ in ()).throw(MemoryError("oom")))
    with pytest.raises(EnsembleMemberFailed, match=r"member 1/2 \(seed 1\) failed: MemoryError: oom"):
        train_ensemble(TrainConfig(), [1, 2], tmp_path, tmp_path / "out", None)


def test_training_does_not_import_the_task_queue():
    import subprocess
    import sys

    code = "import sys, training.ensemble, training.train; print('celery' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                          cwd=Path(__file__).resolve().parents[2]).stdout.strip() == "False"


@pytest.mark.django_db
def test_a_soft_time_limit_during_an_ensemble_run_ends_it_naming_the_limit(run_settings, monkeypatch):
    import training.train

    run = new_run("ens-run")
    ModelVersion.objects.filter(pk=run.pk).update(training_config=run.training_config | {
        "kind": "ensemble", "members": [1, 2]})
    monkeypatch.setattr(training.train, "train", lambda *a, **k: (_ for _ in ()).throw(SoftTimeLimitExceeded()))
    assert retraining.run_training(version_id=run.pk) == "failed"
    run.refresh_from_db()
    assert run.status == "failed" and "exceeded its training time limit" in run.error
    assert "EnsembleMemberFailed" not in run.error


@pytest.mark.django_db
def test_a_soft_time_limit_during_the_comparison_ends_the_run_naming_the_limit(run_settings, monkeypatch):
    run = new_run()
    monkeypatch.setattr(retraining, "train", trains_an_artifact)
    monkeypatch.setattr(retraining, "compare_artifacts", lambda *a, **k: (_ for _ in ()).throw(SoftTimeLimitExceeded()))
    assert retraining.run_training(version_id=run.pk) == "failed"
    run.refresh_from_db()
    assert run.status == "failed" and "exceeded its training time limit" in run.error
    assert not (Path(run_settings.SECONDLOOK_MODELS_ROOT) / "run-x" / retraining.GATE_FILE).exists()


# --- 4. worker lost ---------------------------------------------------------------------------------

@pytest.mark.django_db
def test_a_redelivered_run_that_had_started_ends_failed_at_once_saying_the_worker_stopped(run_settings, monkeypatch):
    monkeypatch.setattr(retraining, "train", lambda *a, **k: pytest.fail("a run was trained twice"))
    run = new_run(started_at=timezone.now(), progress={"phase": "epoch 2", "updated_at": timezone.now().isoformat()})
    assert retraining.run_training(version_id=run.pk) == "already started"  # a duplicate, not a redelivery
    assert ModelVersion.objects.get(pk=run.pk).status == "training"
    assert retraining.run_training(version_id=run.pk, redelivered=True, heartbeat_s=0.05) == "worker lost"
    run.refresh_from_db()
    assert run.status == "failed" and run.error == retraining.WORKER_LOST and run.finished_at
    assert outcome_events(run)[-1]["error"] == retraining.WORKER_LOST
    # idempotent, and an earlier real reason or a finished run is never replaced
    ModelVersion.objects.filter(pk=run.pk).update(error="OSError: disk full")
    assert retraining.run_training(version_id=run.pk, redelivered=True, heartbeat_s=0.05) == "already started"
    assert ModelVersion.objects.get(pk=run.pk).error == "OSError: disk full"
    ModelVersion.objects.filter(pk=run.pk).update(status="ready", error="")
    assert retraining.run_training(version_id=run.pk, redelivered=True) == "already started"
    assert ModelVersion.objects.get(pk=run.pk).status == "ready"


@pytest.mark.django_db(transaction=True)
def test_a_redelivery_while_the_first_worker_still_beats_leaves_the_run_alone(run_settings, monkeypatch):
    """A broker connection blip redelivers a late-acknowledged task whose worker still trains: its
    heartbeat keeps moving, so the run is not failed as "worker lost"."""
    monkeypatch.setattr(retraining, "train", lambda *a, **k: pytest.fail("a run was trained twice"))
    run = new_run(started_at=timezone.now(), progress={"phase": "epoch 2", "updated_at": timezone.now().isoformat()})
    with retraining.heartbeat(run.pk, every_s=0.05):
        assert retraining.run_training(version_id=run.pk, redelivered=True, heartbeat_s=0.5) == "already started"
    run.refresh_from_db()
    assert run.status == "training" and run.error == ""


@pytest.mark.django_db
def test_a_redelivered_run_no_worker_had_started_is_trained(run_settings, monkeypatch):
    run = new_run()
    monkeypatch.setattr(retraining, "train", trains_an_artifact)
    monkeypatch.setattr(retraining, "measure_gate", lambda *a, **k: {})
    assert retraining.run_training(version_id=run.pk, redelivered=True) == "run-x"


def test_the_task_passes_the_brokers_redelivered_flag(monkeypatch):
    from classifier import tasks

    calls = []
    monkeypatch.setattr(tasks, "run_training", lambda **kwargs: calls.append(kwargs) or "worker lost")
    for delivery_info, redelivered in (({"redelivered": True}, True), ({"redelivered": False}, False), (None, False)):
        tasks.train_model.push_request(delivery_info=delivery_info)
        try:
            tasks.train_model.run("7")
        finally:
            tasks.train_model.pop_request()
        assert calls.pop() == {"version_id": 7, "redelivered": redelivered}


# --- 5. audit of the bundled default's activation ----------------------------------------------------

@pytest.mark.django_db
def test_activating_the_shipped_default_on_first_start_is_audited_once(run_settings, tmp_path):
    run_settings.SECONDLOOK_MODEL_DIR = write_artifact(tmp_path / "bundled", "shipped-1")
    run_settings.VAR_DIR = tmp_path / "var"
    version = registry.ensure_default_registered()
    assert version.status == "active"
    event = AuditEvent.objects.get(action="activate", object_id=str(version.pk))
    assert event.actor is None and event.old_values == {"active": None}
    assert event.new_values["active"] == "shipped-1" and "first start" in event.new_values["reason"]
    assert registry.ensure_default_registered().pk == version.pk
    assert AuditEvent.objects.filter(action="activate").count() == 1


def test_a_soft_time_limit_while_one_image_is_read_reaches_the_task(tmp_path, monkeypatch):
    """Per-file error handling in the audit and the loader records an unreadable image, but must
    let the task's time limit through (else the run would carry on with the image marked bad)."""
    from training import audit, data

    class SoftTimeLimitExceeded(Exception):
        pass

    def limit(*_a, **_k):
        raise SoftTimeLimitExceeded()

    monkeypatch.setattr(audit, "decode_file", limit)
    with pytest.raises(SoftTimeLimitExceeded):
        audit.hash_file(str(tmp_path / "x.jpg"))
    image = tmp_path / "y.jpg"
    image.write_bytes(b"not an image")
    result = data.LoadResult()
    assert data._check_readable(image, result) is False  # a real decoding error is recorded, not raised
    monkeypatch.setattr("PIL.Image.open", limit)
    with pytest.raises(SoftTimeLimitExceeded):
        data._check_readable(image, data.LoadResult())
