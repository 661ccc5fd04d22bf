"""Fine-tuning the active model from the admin: the request is refused when there is nothing fit to
fine-tune (no active model, an ensemble, a card without its split), the run takes the active
model's own settings with the fine-tuning recipe and starts from its weights, and it keeps the
active model's lesion split, so its own test figures never score an image the network learned from.

Everything runs in-process (no broker): the Celery task only calls ``run_training``."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from classifier import fine_tuning, lifecycle, retraining
from classifier.models import ModelVersion
from classifier.registry import activate, register_artifact
from training.config import FINE_TUNE_RECIPE
from tests.support.training_runs import data_here, sent  # noqa: F401 (fixtures)


def _tune(capture, **kwargs) -> ModelVersion:
    with capture(execute=True):
        return lifecycle.start_training(sources=["ham10000"], epochs=16, seed=5, target_sensitivity=0.9,
                                        start_from=fine_tuning.ACTIVE, **kwargs)


def _artifact_copy(src: Path, dst: Path, **card_changes) -> Path:
    import shutil

    shutil.copytree(src, dst)
    card = json.loads((dst / "model_card.json").read_text()) | card_changes
    (dst / "model_card.json").write_text(json.dumps(card))
    return dst


@pytest.mark.django_db
def test_fine_tuning_is_refused_with_the_reason_when_nothing_can_be_fine_tuned(
        data_here, sent, tiny_model_dir, tmp_path, django_capture_on_commit_callbacks):
    with pytest.raises(lifecycle.LifecycleError, match="No model is active"):
        _tune(django_capture_on_commit_callbacks)
    ensemble = activate(register_artifact(_artifact_copy(tiny_model_dir, tmp_path / "ens", ensemble={"members": [
        {"version": "a"}, {"version": "b"}]})))
    with pytest.raises(lifecycle.LifecycleError, match=f"{ensemble.version} is an ensemble"):
        _tune(django_capture_on_commit_callbacks)
    with pytest.raises(lifecycle.LifecycleError, match="An ensemble trains each member from ImageNet weights"):
        _tune(django_capture_on_commit_callbacks, members=(1, 2))
    with pytest.raises(lifecycle.LifecycleError, match="Unknown starting point 'yesterday'"):
        lifecycle.start_training(sources=["ham10000"], epochs=2, seed=0, target_sensitivity=0.9,
                                 start_from="yesterday")
    assert list(ModelVersion.objects.values_list("version", flat=True)) == [ensemble.version] and sent == []


@pytest.mark.django_db
def test_a_fine_tuning_run_records_its_start_and_takes_the_active_models_settings(
        data_here, sent, tiny_model_dir, django_capture_on_commit_callbacks):
    active = activate(register_artifact(tiny_model_dir))
    run = _tune(django_capture_on_commit_callbacks, overrides={"bootstrap": 20})
    assert run.version.startswith("tune-") and run.status == "training"
    assert run.training_config[fine_tuning.START_KEY] == {"version": active.version, "sha256": active.sha256}
    assert [(name, args) for name, args, _ in sent] == [(lifecycle.TRAIN_TASK, [run.pk])]
    assert fine_tuning.describe_start(run) == f"Fine-tuned from {active.version} (its top blocks, on its lesion split)"

    cfg = retraining.training_config(run)
    own = json.loads((tiny_model_dir / "model_card.json").read_text())["training"]["config"]
    for key in ("backbone", "image_size", "width", "stages", "colour_constancy", "framing"):
        assert getattr(cfg, key) == (tuple(own[key]) if isinstance(own[key], list) else own[key]), key
    for key, value in FINE_TUNE_RECIPE.items():
        if key != "epochs":
            assert getattr(cfg, key) == value, key
    assert cfg.epochs == FINE_TUNE_RECIPE["epochs"]  # the form's 16 is only an upper bound
    assert (cfg.seed, cfg.target_sensitivity, cfg.bootstrap) == (5, 0.9, 20)
    assert Path(cfg.pretrained) == Path(active.artifact_path) / "model.keras"

    from audit.models import AuditEvent

    event = AuditEvent.objects.order_by("pk").last()
    assert event.action == "train" and event.new_values["start_from"] == active.version

    # a failed fine-tuning run is retried as a fine-tuning run of the model active now
    ModelVersion.objects.filter(pk=run.pk).update(status="failed", error="boom")
    run.refresh_from_db()
    with django_capture_on_commit_callbacks(execute=True):
        again = lifecycle.retry_training(version=run)
    assert again.version.startswith("tune-") and again.training_config == run.training_config

    # the model it continues was replaced in the registry: the run says so instead of training
    ModelVersion.objects.filter(pk=active.pk).update(sha256="0" * 64)
    with pytest.raises(fine_tuning.FineTuneError, match="no longer in the registry as it was"):
        retraining.training_config(run)


@pytest.mark.slow
@pytest.mark.django_db
def test_a_fine_tuned_version_continues_the_active_model_on_its_lesion_split(
        settings, tmp_path, monkeypatch, sent, django_capture_on_commit_callbacks):
    from tests.support.training_data import make_fake_benchmark, make_fake_dataset
    from training.testing import tiny_config

    data = make_fake_dataset(tmp_path / "data", per_class=30)
    monkeypatch.setenv("SECONDLOOK_BENCHMARK_FILE", str(make_fake_benchmark(data, tmp_path / "fake-v1.json")))
    settings.SECONDLOOK_DATA_DIR = data
    settings.SECONDLOOK_MODELS_ROOT = tmp_path / "models"
    settings.SECONDLOOK_CACHE_DIR = tmp_path / "cache"
    settings.SECONDLOOK_TRAINING_OVERRIDES = tiny_config(seed=0).to_dict() | {"bootstrap": 30, "epochs": 2}

    with django_capture_on_commit_callbacks(execute=True):  # the first model, from scratch here
        first = lifecycle.start_training(sources=["ham10000"], epochs=2, seed=0, target_sensitivity=0.9)
    assert retraining.run_training(version_id=first.pk) == first.version
    active = activate(ModelVersion.objects.get(pk=first.pk))

    # another seed would deal the lesions out differently: the fine-tuning run keeps the active's split
    run = _tune(django_capture_on_commit_callbacks, overrides={"bootstrap": 30})
    assert (retraining.training_config(run).effective_split_seed, retraining.training_config(first).effective_split_seed) == (5, 0)
    assert retraining.run_training(version_id=sent[-1][1][0]) == run.version
    run.refresh_from_db()
    assert run.status == "ready", run.error
    old = json.loads((Path(active.artifact_path) / "model_card.json").read_text())
    new = json.loads((Path(run.artifact_path) / "model_card.json").read_text())
    assert new["split_ids"] == old["split_ids"]
    assert new["training"]["warm_start"] == {"file": "model.keras", "sha256": old["model_sha256"],
                                             "version": active.version, "keeps_split": True}
    assert new["training"]["config"]["freeze_blocks"] == FINE_TUNE_RECIPE["freeze_blocks"]
    assert new["training"]["config"]["width"] == old["training"]["config"]["width"]
    assert "warm-started from" in (Path(run.artifact_path) / "model_card.md").read_text()
    assert run.notes.startswith(f"Fine-tuned from {active.version}")
    assert run.metrics["gate"]["active"]["version"] == active.version  # the promotion gate ran


@pytest.mark.django_db
def test_the_form_offers_the_active_model_and_refuses_it_for_an_ensemble(data_here, tiny_model_dir):
    from classifier.forms import TrainingForm

    active = activate(register_artifact(tiny_model_dir))
    base = {"sources": ["ham10000"], "epochs": 3, "seed": 5, "target_sensitivity": 0.9, "start_from": "active"}
    form = TrainingForm(base | {"kind": "single"})
    assert [value for value, _ in form.fields["start_from"].choices] == ["imagenet", "active"]
    assert f"The active model, {active.version}" in dict(form.fields["start_from"].choices)["active"]
    assert form.is_valid() and form.cleaned_data == base | {"members": ()}
    form = TrainingForm(base | {"kind": "ensemble", "members": "1 2"})
    assert not form.is_valid() and "choose a single CNN" in form.errors["start_from"][0]


@pytest.mark.django_db
def test_the_form_reads_a_stored_models_card_without_fetching_the_model(tiny_model_dir, tmp_path, settings,
                                                                         media_root):
    import shutil

    from classifier import artifact_store

    settings.SECONDLOOK_MODELS_IN_STORAGE = True
    settings.VAR_DIR = tmp_path / "var"
    web = _artifact_copy(tiny_model_dir, tmp_path / "release" / "model")
    version = activate(register_artifact(web))
    # a web host that has neither the registered directory (a later release) nor a copy of its own
    shutil.rmtree(web)
    shutil.rmtree(artifact_store.host_copy(version.sha256), ignore_errors=True)
    card = fine_tuning.check_fine_tunable(version)
    assert card["model_sha256"] == version.sha256 and card["split_ids"]["train"]
    assert not artifact_store.host_copy(version.sha256).exists()  # the model itself was not fetched
    # a stored card that names another model is refused, with the reason
    stored = media_root / artifact_store.storage_prefix(version.sha256) / "model_card.json"
    stored.write_text(json.dumps(card | {"model_sha256": "0" * 64}))
    with pytest.raises(fine_tuning.FineTuneError, match="names another model"):
        fine_tuning.check_fine_tunable(version)
    stored.unlink()
    with pytest.raises(fine_tuning.FineTuneError, match="cannot be read"):
        fine_tuning.check_fine_tunable(version)
