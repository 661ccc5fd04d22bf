"""Retraining end to end: a tiny version trained by a real Celery worker, the promotion gate
refusing a worse model and accepting a good one, and the next upload scored by the new version."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from cases.models import Lesion, Prediction, Review
from classifier import lifecycle
from classifier.models import ModelVersion
from test_integration_scoring import status_of, upload_one, wait_for
from tests.support.training_data import make_fake_benchmark, make_fake_dataset
from training.testing import tiny_config

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def training_worker(tmp_path, monkeypatch, request, tiny_version):
    """A real worker whose training runs use a small generated dataset, a frozen benchmark drawn
    from it and the tiny configuration."""
    overrides = tiny_config(seed=0).to_dict() | {"bootstrap": 30, "epochs": 4}
    # enough images (and epochs, below) that the better model is shown non-inferior on every rule
    data = make_fake_dataset(tmp_path / "data", per_class=90)
    monkeypatch.setenv("SECONDLOOK_BENCHMARK_FILE", str(make_fake_benchmark(data, tmp_path / "fake-v1.json")))
    monkeypatch.setenv("SECONDLOOK_DATA_DIR", str(data))
    monkeypatch.setenv("SECONDLOOK_TRAINING_OVERRIDES", json.dumps(overrides))
    monkeypatch.setenv("SECONDLOOK_MODELS_ROOT", str(tmp_path / "models"))
    monkeypatch.setenv("SECONDLOOK_CACHE_DIR", str(tmp_path / "cache"))
    return request.getfixturevalue("celery_worker_process")


def wait_trained(version: ModelVersion, worker) -> ModelVersion:
    wait_for(lambda: ModelVersion.objects.get(pk=version.pk).status != "training", timeout=300,
             what=f"training {version.version}", worker=worker)
    version.refresh_from_db()
    return version


def test_train_gate_activate_and_score_with_the_new_version(client, people, tiny_version, training_worker):
    # A dermatologist-reviewed image becomes training data.
    first = upload_one(client, people, name="reviewed.jpg", seed=3)
    wait_for(lambda: status_of(first) == "done", what="first scoring", worker=training_worker)
    # follow-up, not excision: a lesion sent for histology waits for its result before it is learned from
    Review.objects.create(lesion=people.lesion_a, reviewer=people.derm, agreement="agree",
                          final_diagnosis="melanoma", management="follow_up")
    Lesion.objects.filter(pk=people.lesion_a.pk).update(awaiting_review=False)  # as the review form does

    good = lifecycle.start_training(sources=["isic-9class", "ham10000", "reviews"], epochs=15, seed=0,
                                    target_sensitivity=0.9, user=people.admin)
    good = wait_trained(good, training_worker)
    assert good.status == "ready", good.error
    assert good.progress["phase"] == "done"
    assert "1 reviewed images" in good.notes
    assert Path(good.artifact_path, "model.keras").is_file() and len(good.sha256) == 64
    gate = good.metrics["gate"]
    assert gate["format"] == 2 and gate["active"]["version"] == tiny_version.version, gate
    assert gate["benchmark"]["version"] == "fake-v1" and gate["benchmark"]["images"] > 0
    assert Path(good.artifact_path, "plots", "benchmark_roc.png").is_file()
    card = json.loads(Path(good.artifact_path, "model_card.json").read_text())
    assert card["benchmark"]["version"] == "fake-v1" and card["benchmark"]["kept_out_of"] == ["train", "val"]
    held_out = {row[0] for row in json.loads(Path(os.environ["SECONDLOOK_BENCHMARK_FILE"]).read_text())["images"]}
    assert held_out <= set(card["split_ids"]["test"])
    assert set(good.data_sources) >= {"isic-9class", "ham10000", "review"}

    # A model that learned nothing (learning rate ~0) is refused by the gate.
    worse = lifecycle.start_training(sources=["isic-9class", "ham10000"], epochs=1, seed=1, target_sensitivity=0.9,
                                     user=people.admin, overrides={"learning_rate": 1e-9})
    worse = wait_trained(worse, training_worker)
    assert worse.status == "ready", worse.error
    refused = lifecycle.gate_for(worse)
    assert not refused.allowed, refused.reasons
    with pytest.raises(lifecycle.LifecycleError, match="gate refused"):
        lifecycle.activate_version(version=worse, user=people.admin)

    accepted = lifecycle.gate_for(good)
    assert accepted.allowed, accepted.reasons
    lifecycle.activate_version(version=good, user=people.admin)

    # The running worker picks up the new active version for the next image, without a restart.
    second = upload_one(client, people, name="after-activation.jpg", seed=4)
    wait_for(lambda: status_of(second) in ("done", "failed"), what="scoring with the new version",
             worker=training_worker)
    second.refresh_from_db()
    assert second.status == "done", second.error
    assert second.model_version_id == good.pk
    assert Prediction.objects.get(pk=first.pk).model_version_id == tiny_version.pk
