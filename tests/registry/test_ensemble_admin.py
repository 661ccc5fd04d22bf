"""Ensembles trained from the admin (issue 21): the request is validated, the run trains each member
with the same config and sources, reports "member i/n", builds one ensemble artifact, registers it
as one version and runs the promotion gate; cancel and a failing member end it failed with the reason.

Everything runs in-process (no broker): the Celery task only calls ``run_training``."""
from __future__ import annotations

import json
from datetime import timedelta

import pytest
from django.utils import timezone

from classifier import ensemble_training, lifecycle, retraining
from classifier.models import ModelVersion
from classifier.registry import activate, register_artifact
from training.train import TrainingCancelled
from tests.support.training_runs import data_here, sent  # noqa: F401 (fixtures)

ENSEMBLE_TASK_LIMITS = {"soft_time_limit", "time_limit"}


def start_ensemble(seeds, django_capture_on_commit_callbacks, **kwargs) -> ModelVersion:
    with django_capture_on_commit_callbacks(execute=True):
        return lifecycle.start_training(sources=["ham10000"], epochs=2, seed=0, target_sensitivity=0.9,
                                        members=seeds, **kwargs)


# --- the request ----------------------------------------------------------------------------------

@pytest.mark.django_db
@pytest.mark.parametrize("seeds, message", [
    ((5, 5), "Each member needs its own seed .*5 given more than once"),
    ((1, 2, 3, 4), "An ensemble has 2 to 3 members; 4 seed"),
    ((1,), "An ensemble has 2 to 3 members; 1 seed"),
])
def test_bad_member_seeds_are_refused_and_nothing_is_created(data_here, sent, seeds, message):
    with pytest.raises(lifecycle.LifecycleError, match=message):
        lifecycle.start_training(sources=["ham10000"], epochs=2, seed=0, target_sensitivity=0.9, members=seeds)
    assert not ModelVersion.objects.exists() and sent == []


@pytest.mark.django_db
def test_an_ensemble_beyond_its_time_limit_is_refused_with_the_estimate(data_here, sent, settings):
    settings.TRAINING_SOFT_TIME_LIMIT, settings.TRAINING_TIME_LIMIT = 20 * 60, 30 * 60
    with pytest.raises(lifecycle.LifecycleError, match=r"ensemble of 2 would take about 2 h 15 min, beyond its "
                                                       r"time limit of 40 min"):
        lifecycle.start_training(sources=["ham10000"], epochs=2, seed=0, target_sensitivity=0.9, members=(1, 2))
    assert not ModelVersion.objects.exists() and sent == []


@pytest.mark.django_db
def test_the_form_refuses_bad_seeds_field_by_field():
    from classifier.forms import TrainingForm

    base = {"sources": ["ham10000"], "epochs": 3, "seed": 5, "target_sensitivity": 0.9}
    for text, message in (("7 7", "own seed"), ("1 2 3 4", "2 to 3 members"), ("1, x", "'x' is not one")):
        form = TrainingForm(base | {"kind": "ensemble", "members": text})
        assert not form.is_valid() and message in form.errors["members"][0], form.errors
    form = TrainingForm(base | {"kind": "ensemble", "members": "7, 9"})
    assert form.is_valid() and form.cleaned_data == base | {"members": (7, 9), "start_from": "imagenet"}
    form = TrainingForm(base | {"kind": "single", "members": "7 7"})  # seeds are ignored for one CNN
    assert form.is_valid() and form.cleaned_data == base | {"members": (), "start_from": "imagenet"}
    # nothing active: fine-tuning is not offered, and the form says why
    assert [value for value, _ in form.fields["start_from"].choices] == ["imagenet"]
    assert "No model is active" in form.fields["start_from"].help_text
    form = TrainingForm(base | {"kind": "single", "start_from": "active"})
    assert not form.is_valid() and "not one of the available choices" in form.errors["start_from"][0]


@pytest.mark.django_db
def test_an_ensemble_run_is_queued_with_its_members_and_longer_time_limits(
        data_here, sent, settings, django_capture_on_commit_callbacks):
    run = start_ensemble((2026, 1234), django_capture_on_commit_callbacks)
    assert run.version.startswith("ens2-train-") and run.status == "training"
    assert run.training_config["kind"] == "ensemble" and run.training_config["members"] == [2026, 1234]
    assert run.training_config["seed"] == 2026  # the first member's seed fixes the lesion split
    [(name, args, options)] = sent
    assert (name, args) == (lifecycle.TRAIN_TASK, [run.pk])
    assert options == {"soft_time_limit": 2 * settings.TRAINING_SOFT_TIME_LIMIT,
                       "time_limit": run.training_config["time_limit_s"]}
    assert ensemble_training.describe(run) == "Ensemble of 2 CNNs (seeds 2026, 1234; mean of their logits)"

    # a single run keeps its task's own limits
    ModelVersion.objects.filter(pk=run.pk).update(status="failed", version="ens2-train-earlier")
    with django_capture_on_commit_callbacks(execute=True):
        single = lifecycle.start_training(sources=["ham10000"], epochs=2, seed=0, target_sensitivity=0.9)
    assert sent[-1][2] == {} and "kind" not in single.training_config
    assert ensemble_training.describe(single) == "Single CNN"


@pytest.mark.django_db
def test_a_failed_ensemble_is_retried_as_the_same_ensemble(data_here, sent, django_capture_on_commit_callbacks,
                                                           monkeypatch):
    run = start_ensemble((3, 4, 5), django_capture_on_commit_callbacks)
    ModelVersion.objects.filter(pk=run.pk).update(status="failed", error="boom")
    run.refresh_from_db()
    started = run.created_at
    monkeypatch.setattr(timezone, "now", lambda: started)  # retried in the second its run started
    with django_capture_on_commit_callbacks(execute=True):
        again = lifecycle.retry_training(version=run)
    assert again.training_config == run.training_config and again.version == f"{run.version}-2"
    assert set(sent[-1][2]) == ENSEMBLE_TASK_LIMITS


@pytest.mark.django_db
def test_the_sweep_uses_an_ensembles_own_time_limit(settings):
    from classifier.retraining import sweep_stale_runs

    now = timezone.now()
    soft, hard = ensemble_training.time_limits_s(2)
    fresh = {"updated_at": (now - timedelta(minutes=1)).isoformat()}
    ModelVersion.objects.create(version="ens-running", status="training", progress=fresh,
                                started_at=now - timedelta(seconds=settings.TRAINING_TIME_LIMIT + 60),
                                training_config={"kind": "ensemble", "members": [1, 2], "time_limit_s": hard})
    assert sweep_stale_runs(now=now) == []  # past a single run's limit, inside its own
    ModelVersion.objects.filter(version="ens-running").update(started_at=now - timedelta(seconds=hard + 1))
    assert sweep_stale_runs(now=now) == ["ens-running"]
    assert f"time limit ({hard // 60} minutes)" in ModelVersion.objects.get(version="ens-running").error


# --- the run, with the members' training faked ------------------------------------------------------

def _queued_ensemble(seeds=(7, 8)) -> ModelVersion:
    return ModelVersion.objects.create(
        version="ens2-train-x", status="training", data_sources=["ham10000"],
        training_config={"epochs": 2, "seed": seeds[0], "target_sensitivity": 0.9, "overrides": {},
                         "kind": "ensemble", "members": list(seeds)})


def _fake_members(monkeypatch, behave) -> list:
    """Replace the members' training (training.train.train) by ``behave(call_number, kwargs)``."""
    calls: list = []

    def train(cfg, data_root, out_dir, cache_dir, **kwargs):
        calls.append((cfg.seed, cfg.split_seed, kwargs["sources"]))
        kwargs["on_progress"]({"phase": "training", "epoch": 1, "epochs": 2, "eta_s": 10.0})
        return behave(len(calls), kwargs)

    monkeypatch.setattr("training.train.train", train)
    return calls


@pytest.mark.django_db
def test_a_failure_in_member_2_ends_the_version_failed_with_its_reason(data_here, monkeypatch):
    version = _queued_ensemble()

    def behave(n, kwargs):
        if n == 2:
            raise MemoryError("out of memory on member two")

    calls = _fake_members(monkeypatch, behave)
    assert retraining.run_training(version_id=version.pk) == "failed"
    version.refresh_from_db()
    assert version.status == "failed" and version.finished_at is not None
    assert "member 2/2 (seed 8) failed: MemoryError: out of memory on member two" in version.error
    assert calls == [(7, 7, ["ham10000"]), (8, 7, ["ham10000"])]  # same sources, the first seed's split
    assert version.progress["phase"].startswith("member 2/2 (seed 8): training")
    assert (version.progress["member"], version.progress["members"]) == (2, 2)


@pytest.mark.django_db
@pytest.mark.parametrize("cancelled_in, trained", [(1, 1), (2, 2)])
def test_cancel_stops_an_ensemble_between_or_during_members(data_here, monkeypatch, cancelled_in, trained):
    """Cancelled while member 1 trains: member 2 never starts. Cancelled while member 2 trains: its
    training loop sees it (as train() polls should_stop) and stops."""
    version = _queued_ensemble()

    def behave(n, kwargs):
        if n == cancelled_in:  # the admin clicks "Cancel this run" now
            lifecycle.request_cancel(version=ModelVersion.objects.get(pk=version.pk))
            if n == 2 and kwargs["should_stop"]():
                raise TrainingCancelled("training cancelled on request")

    calls = _fake_members(monkeypatch, behave)
    assert retraining.run_training(version_id=version.pk) == "cancelled"
    version.refresh_from_db()
    assert version.status == "failed" and version.error == "Cancelled by an administrator."
    assert len(calls) == trained


# --- the run, for real: a tiny ensemble of 2 ----------------------------------------------------------

@pytest.mark.slow
@pytest.mark.django_db
def test_an_ensemble_of_2_registers_one_version_and_runs_the_gate(
        settings, tmp_path, monkeypatch, use_tiny_model, sent, django_capture_on_commit_callbacks):
    from mlcore.model_store import load_model
    from tests.support.training_data import make_fake_benchmark, make_fake_dataset
    from training.testing import tiny_config

    data = make_fake_dataset(tmp_path / "data", per_class=30)
    monkeypatch.setenv("SECONDLOOK_BENCHMARK_FILE", str(make_fake_benchmark(data, tmp_path / "fake-v1.json")))
    settings.SECONDLOOK_DATA_DIR = data
    settings.SECONDLOOK_MODELS_ROOT = tmp_path / "models"
    settings.SECONDLOOK_CACHE_DIR = tmp_path / "cache"
    settings.SECONDLOOK_TRAINING_OVERRIDES = tiny_config(seed=0).to_dict() | {"bootstrap": 30}
    active = activate(register_artifact(use_tiny_model))
    phases: list[str] = []
    save = retraining._save_progress
    monkeypatch.setattr(retraining, "_save_progress", lambda pk, p: (phases.append(p.get("phase")), save(pk, p)))

    run = start_ensemble((0, 1), django_capture_on_commit_callbacks)
    assert retraining.run_training(version_id=sent[0][1][0]) == run.version
    run.refresh_from_db()
    assert run.status == "ready", run.error
    assert ModelVersion.objects.exclude(pk=active.pk).count() == 1  # the members are not versions

    # one artifact, an ensemble of the 2 members, recorded as one in its card and the registry
    card = json.loads((tmp_path / "models" / run.version / "model_card.json").read_text())
    assert card["name"].endswith("ensemble") and card["version"] == run.version
    assert [m["config"]["seed"] for m in card["ensemble"]["members"]] == [0, 1]
    assert {m["config"]["split_seed"] for m in card["ensemble"]["members"]} == {0}
    assert card["data_sources"] == ["ham10000"] and "assessment" in card
    model = load_model(run.model_dir).keras_model
    assert [layer.name for layer in model.layers if layer.name.startswith("member_")] == ["member_0", "member_1"]
    assert run.metrics["architecture"] == {
        "kind": "ensemble", "members": 2, "seeds": [0, 1], "combine": "mean of the members' logits",
        "member_versions": [f"{run.version}-member1-seed0", f"{run.version}-member2-seed1"]}
    assert run.notes.startswith("Ensemble of 2 CNNs (seeds 0, 1")
    # the paired comparison with the active model on the frozen benchmark ran
    gate = run.metrics["gate"]
    assert gate["format"] == 2 and gate["benchmark"]["version"] == "fake-v1" and gate["benchmark"]["images"] > 0
    assert gate["candidate"]["version"] == run.version and gate["active"]["version"] == active.version
    assert any(row["gated"] for row in gate["rows"])  # measured, not "could not be measured"

    # progress per member, then the ensemble
    member_phases = [p for p in phases if p and p.startswith("member ")]
    assert any(p.startswith("member 1/2 (seed 0): training") for p in member_phases)
    assert any(p.startswith("member 2/2 (seed 1): training") for p in member_phases)
    later = phases[phases.index("combining the 2 members into one model"):]
    assert "comparing with the active model on the frozen benchmark" in later and later[-1] == "done"
