"""Registry services: default registration, exactly one active version, activation, rollback."""
import pytest
from django.db import IntegrityError, transaction

from classifier import lifecycle, registry
from classifier.models import ModelVersion
from classifier.promotion import IMAGE_CHECKS_PASSED
from tests.support.gate_helpers import fake_sha, stand_in_artifact, stored_gate


def _gate_metrics(allowed: bool, active: ModelVersion | str, candidate: str = "cand") -> dict:
    """A paired comparison on the frozen benchmark that passes (or not), against ``active`` (a
    registered version: its model file; a name: a version not registered), of the model file of
    a version named ``candidate`` created with ``sha256=fake_sha(candidate)``."""
    if isinstance(active, ModelVersion):
        return {"gate": stored_gate(allowed=allowed, active=active.version, active_sha256=active.sha256,
                                    candidate=candidate)}
    return {"gate": stored_gate(allowed=allowed, active=active, candidate=candidate)}


@pytest.mark.django_db
def test_default_model_is_registered_once_and_active(use_tiny_assessed_model):
    first = registry.ensure_default_registered()
    again = registry.ensure_default_registered()
    assert first.pk == again.pk and first.status == ModelVersion.Status.ACTIVE
    assert first.sha256 and len(first.sha256) == 64
    assert first.melanoma_threshold is not None and first.malignancy_threshold is not None
    assert registry.active_model_status() == {"ok": True, "version": first.version}


@pytest.mark.django_db
def test_database_allows_only_one_active_version():
    ModelVersion.objects.create(version="a", status="active")
    with pytest.raises(IntegrityError), transaction.atomic():
        ModelVersion.objects.create(version="b", status="active")


@pytest.mark.django_db
def test_activation_goes_through_the_gate_and_rollback_restores(settings, tiny_assessed_model_dir, django_user_model,
                                                               tmp_path):
    settings.SECONDLOOK_MODEL_DIR = tiny_assessed_model_dir  # a roll-back target needs its image checks
    admin = django_user_model.objects.create_superuser("root", password="x-very-long-pass-1")
    shipped = registry.ensure_default_registered()
    worse = ModelVersion.objects.create(version="worse", status="ready", target_sensitivity=0.9,
                                        artifact_path=stand_in_artifact(tmp_path, "worse"),
                                        sha256=fake_sha("worse"), metrics=_gate_metrics(False, shipped, "worse"))
    better = ModelVersion.objects.create(version="better", status="ready", target_sensitivity=0.9,
                                         artifact_path=stand_in_artifact(tmp_path, "better"),
                                         sha256=fake_sha("better"), metrics=_gate_metrics(True, shipped, "better"))
    with pytest.raises(lifecycle.LifecycleError, match="gate refused"):
        lifecycle.activate_version(version=worse, user=admin)
    lifecycle.activate_version(version=better, user=admin)
    assert ModelVersion.objects.get(status="active").version == "better"
    assert lifecycle.rollback(user=admin, expected_active_pk=better.pk, target_pk=shipped.pk,
                              reason="Flags too many nevi").version == shipped.version
    assert ModelVersion.objects.get(status="active").version == shipped.version

    from audit.models import AuditEvent

    actions = list(AuditEvent.objects.order_by("pk").values_list("action", flat=True))
    assert actions[-2:] == ["activate", "rollback"]
    activation = AuditEvent.objects.get(action="activate", actor=admin)
    evidence = activation.new_values["gate"]
    assert activation.new_values["active"] == "better" and activation.old_values == {"active": shipped.version}
    assert evidence == {"benchmark": "frozen-v1", "benchmark_sha256": "0" * 64, "candidate": "better",
                        "candidate_sha256": fake_sha("better"), "active": shipped.version,
                        "active_sha256": shipped.sha256, "resamples": 1000, "allowed": True,
                        "reasons": better.metrics["gate"]["reasons"] + [IMAGE_CHECKS_PASSED]}


@pytest.mark.django_db
@pytest.mark.parametrize("kwargs, message", [
    ({"sources": []}, "at least one"),
    ({"sources": ["reviews"]}, "too few"),
    ({"sources": ["nope"]}, "Unknown"),
    ({"epochs": 0}, "Epochs"),
    ({"target_sensitivity": 1.0}, "Target sensitivity"),
])
def test_training_request_is_validated(kwargs, message):
    request = {"sources": ["ham10000"], "epochs": 5, "seed": 1, "target_sensitivity": 0.9} | kwargs
    with pytest.raises(lifecycle.LifecycleError, match=message):
        lifecycle.start_training(**request)
    assert not ModelVersion.objects.exists()


@pytest.mark.django_db
def test_a_dataset_missing_on_this_server_is_refused_up_front(settings, tmp_path):
    (tmp_path / "ham10000").mkdir()
    settings.SECONDLOOK_DATA_DIR = tmp_path
    with pytest.raises(lifecycle.LifecycleError, match=r"Not on this server: ISIC 9-class set .*isic-9class"):
        lifecycle.start_training(sources=["isic-9class", "ham10000", "reviews"], epochs=5, seed=1, target_sensitivity=0.9)
    assert not ModelVersion.objects.exists()


@pytest.mark.django_db
def test_registry_actions_need_the_change_permission(client, django_user_model, use_tiny_assessed_model):
    from django.contrib.auth.models import Permission

    shipped = registry.ensure_default_registered()
    candidate = ModelVersion.objects.create(version="cand", status="ready", target_sensitivity=0.9,
                                            sha256=fake_sha("cand"), metrics=_gate_metrics(True, shipped, "cand"))
    staff = django_user_model.objects.create_user("viewer", password="x-very-long-pass-2", is_staff=True)
    staff.user_permissions.add(Permission.objects.get(codename="view_modelversion"))
    client.force_login(staff)
    assert client.get(f"/admin/classifier/modelversion/{candidate.pk}/change/").status_code == 200
    assert client.post(f"/admin/classifier/modelversion/{candidate.pk}/activate/").status_code == 403
    assert client.post("/admin/classifier/modelversion/rollback/").status_code == 403
    assert client.get("/admin/classifier/modelversion/train/").status_code == 403
    assert ModelVersion.objects.get(status="active").pk == shipped.pk


@pytest.mark.django_db
def test_admin_pages_show_metrics_plots_and_the_gate(admin_client, use_tiny_assessed_model, tmp_path):
    shipped = registry.ensure_default_registered()
    candidate = ModelVersion.objects.create(version="cand", status="ready", target_sensitivity=0.9,
                                            artifact_path=stand_in_artifact(tmp_path, "cand"),
                                            sha256=fake_sha("cand"), metrics=_gate_metrics(True, shipped, "cand"))
    listing = admin_client.get("/admin/classifier/modelversion/").content.decode()
    assert shipped.version in listing and "Train a new version" in listing
    page = admin_client.get(f"/admin/classifier/modelversion/{candidate.pk}/change/").content.decode()
    assert "Promotion gate" in page and "Activate this version" in page
    assert 'id="gate-table"' in page and "95 % CI of the difference" in page and 'id="gate-subgroups"' in page
    assert "Melanoma sensitivity at its own threshold" in page and "pass" in page
    detail = admin_client.get(f"/admin/classifier/modelversion/{shipped.pk}/change/").content.decode()
    assert "Model card" in detail
    # the button leads to a confirmation page; its POST, with a reason, activates
    assert admin_client.get(f"/admin/classifier/modelversion/{candidate.pk}/activate/").status_code == 200
    assert ModelVersion.objects.get(status="active").pk == shipped.pk
    response = admin_client.post(f"/admin/classifier/modelversion/{candidate.pk}/activate/",
                                 {"reason": "passes the gate"})
    assert response.status_code == 302
    assert ModelVersion.objects.get(status="active").pk == candidate.pk


# --- runs that never hang -------------------------------------------------------------------------

@pytest.fixture
def data_here(settings, tmp_path):
    (tmp_path / "ham10000").mkdir()
    settings.SECONDLOOK_DATA_DIR = tmp_path
    return tmp_path


@pytest.mark.django_db(transaction=True)
def test_the_database_allows_one_training_run_at_a_time(data_here, monkeypatch):
    monkeypatch.setattr("classifier.lifecycle.enqueue_training", lambda *a, **k: None)
    ModelVersion.objects.create(version="run-1", status="training")
    with pytest.raises(IntegrityError), transaction.atomic():
        ModelVersion.objects.create(version="run-2", status="training")
    with pytest.raises(lifecycle.LifecycleError, match="already in progress"):
        lifecycle.start_training(sources=["ham10000"], epochs=1, seed=0, target_sensitivity=0.9)
    assert ModelVersion.objects.filter(status="training").count() == 1


@pytest.mark.django_db
def test_stale_and_never_started_runs_end_failed_with_their_reason(settings):
    from datetime import timedelta

    from django.utils import timezone

    from classifier.retraining import sweep_stale_runs

    now = timezone.now()
    ModelVersion.objects.create(version="killed", status="training", started_at=now - timedelta(hours=1),
                                progress={"updated_at": (now - timedelta(minutes=16)).isoformat()})
    assert sweep_stale_runs(now=now) == ["killed"]
    ModelVersion.objects.create(version="alive", status="training", started_at=now - timedelta(minutes=30),
                                progress={"updated_at": (now - timedelta(minutes=2)).isoformat()})
    assert sweep_stale_runs(now=now) == []
    ModelVersion.objects.filter(version="alive").update(started_at=now - timedelta(seconds=settings.TRAINING_TIME_LIMIT + 1))
    assert sweep_stale_runs(now=now) == ["alive"]
    ModelVersion.objects.filter(created_at__isnull=False).update(created_at=now - timedelta(minutes=20))
    queued = ModelVersion.objects.create(version="queued", status="training")
    ModelVersion.objects.filter(pk=queued.pk).update(created_at=now - timedelta(minutes=20))
    assert sweep_stale_runs(now=now) == ["queued"]
    errors = dict(ModelVersion.objects.values_list("version", "error"))
    assert "no progress for 15 minutes" in errors["killed"] and "time limit" in errors["alive"]
    assert "No training worker picked the run up" in errors["queued"]
    assert set(ModelVersion.objects.values_list("status", flat=True)) == {"failed"}


@pytest.mark.django_db
def test_a_run_whose_registration_fails_ends_failed_not_training(monkeypatch, data_here, settings, tmp_path):
    from classifier import retraining

    settings.SECONDLOOK_MODELS_ROOT = tmp_path / "models"
    version = ModelVersion.objects.create(version="reg-fails", status="training", data_sources=["ham10000"],
                                          training_config={"epochs": 1})
    monkeypatch.setattr(retraining, "train", lambda *a, **k: None)
    monkeypatch.setattr(retraining, "register_artifact", lambda path, **_: (_ for _ in ()).throw(
        ValueError("CHECK constraint failed: JSON_VALID(\"metrics\")")))
    assert retraining.run_training(version_id=version.pk) == "failed"
    version.refresh_from_db()
    assert version.status == "failed" and "could not be registered" in version.error and "JSON_VALID" in version.error


@pytest.mark.django_db(transaction=True)
def test_a_failed_run_can_be_retried_with_its_settings_or_deleted(data_here, monkeypatch, django_user_model):
    sent = []
    monkeypatch.setattr("classifier.lifecycle.enqueue_training",
                        lambda pk, **options: sent.append(("classifier.tasks.train_model", [pk])))
    admin = django_user_model.objects.create_superuser("root", "r@example.org", "pw-123456-long")
    failed = ModelVersion.objects.create(version="train-failed", status="failed", data_sources=["ham10000"],
                                         target_sensitivity=0.92, error="boom",
                                         training_config={"epochs": 3, "seed": 7, "target_sensitivity": 0.92,
                                                          "overrides": {"batch_size": 16}})
    run = lifecycle.retry_training(version=failed, user=admin)
    assert run.status == "training" and run.training_config == failed.training_config | {"sources": ["ham10000"]}
    assert run.data_sources == ["ham10000"] and sent == [("classifier.tasks.train_model", [run.pk])]
    with pytest.raises(lifecycle.LifecycleError, match="only a failed run"):
        lifecycle.delete_failed(version=run, user=admin)
    lifecycle.delete_failed(version=failed, user=admin)
    assert not ModelVersion.objects.filter(pk=failed.pk).exists()


@pytest.mark.django_db(transaction=True)
def test_a_run_that_failed_after_registration_is_retried_with_the_sources_it_asked_for(
        data_here, monkeypatch, tmp_path, settings):
    """Registration replaces data_sources with the model card's names ("review" for the reviewed
    cases); the retry asks for what the failed run asked for, reviewed cases included."""
    from classifier import retraining

    monkeypatch.setattr("classifier.lifecycle.enqueue_training", lambda *a, **k: None)
    settings.SECONDLOOK_MODELS_ROOT = tmp_path / "models"
    settings.SECONDLOOK_CACHE_DIR = tmp_path / "cache"
    run = lifecycle.start_training(sources=["ham10000", "reviews"], epochs=1, seed=0, target_sensitivity=0.9)
    monkeypatch.setattr(retraining, "train", lambda *a, **k: None)
    monkeypatch.setattr(retraining, "measure_gate", lambda *a, **k: {})

    def registered_then_cancelled(out_dir, **_):  # as the card says it, then the admin cancels: it ends failed
        ModelVersion.objects.filter(pk=run.pk).update(data_sources=["ham10000", "review"], cancel_requested=True)
        return ModelVersion.objects.get(pk=run.pk)

    monkeypatch.setattr(retraining, "register_artifact", registered_then_cancelled)
    assert retraining.run_training(version_id=run.pk) == "cancelled"
    run.refresh_from_db()
    assert run.status == "failed" and run.data_sources == ["ham10000", "review"]

    retry = lifecycle.retry_training(version=run)
    assert retry.data_sources == ["ham10000", "reviews"] and retry.training_config["sources"] == ["ham10000", "reviews"]
    asked = []
    monkeypatch.setattr(retraining, "reviewed_records", lambda export_dir: asked.append(export_dir) or [])
    monkeypatch.setattr(retraining, "train", lambda *a, **k: asked.append(k["sources"]))
    retraining.run_training(version_id=retry.pk)
    assert asked[1:] == [["ham10000"]] and len(asked) == 2  # the reviewed cases exported, the shared set trained on
    # a run from before the sources were kept in its settings: the card's name is read back
    legacy = ModelVersion.objects.create(version="legacy", status="failed", data_sources=["ham10000", "review"],
                                         training_config={"epochs": 1, "seed": 0, "target_sensitivity": 0.9})
    assert lifecycle.requested_sources(legacy) == ["ham10000", "reviews"]


@pytest.mark.django_db
def test_a_run_is_compared_with_the_gates_resamples_not_its_own_bootstrap_setting(data_here, monkeypatch, tmp_path,
                                                                                   settings):
    from classifier import retraining
    from classifier.promotion import BOOTSTRAP_RESAMPLES, GateResult

    settings.SECONDLOOK_MODELS_ROOT, settings.SECONDLOOK_CACHE_DIR = tmp_path / "models", tmp_path / "cache"
    run = ModelVersion.objects.create(version="run-b", status="training", data_sources=["ham10000"],
                                      training_config={"epochs": 1, "seed": 0, "target_sensitivity": 0.9,
                                                       "overrides": {"bootstrap": 30}})
    asked = []
    monkeypatch.setattr(retraining, "train", lambda *a, **k: None)
    monkeypatch.setattr(retraining, "compare_artifacts",
                        lambda *a, n_resamples, **k: asked.append(n_resamples) or GateResult(True))
    monkeypatch.setattr(retraining, "register_artifact", lambda out_dir, **_: ModelVersion.objects.get(pk=run.pk))
    assert retraining.training_config(run).bootstrap == 30  # the run's own evaluation uses it
    retraining.run_training(version_id=run.pk)
    assert asked == [BOOTSTRAP_RESAMPLES]


@pytest.mark.data
@pytest.mark.django_db
def test_a_finished_run_is_compared_with_the_active_model_on_the_frozen_benchmark(
        admin_client, use_tiny_assessed_model, settings, tmp_path, monkeypatch):
    """measure_gate (what a finished admin run calls) on a small benchmark drawn from frozen-v1:
    both models scored on the same images, the comparison stored with the version and its paired
    ROC served on the version page."""
    import json
    import shutil

    from classifier.retraining import measure_gate
    from training import benchmark as bm

    full = bm.load_benchmark(bm.benchmark_file(bm.CURRENT_VERSION))
    small = bm.write_benchmark(tmp_path / "small.json", bm.CURRENT_VERSION, full.images[::80], {"from": "frozen-v1"})
    monkeypatch.setenv(bm.ENV_FILE, str(tmp_path / "small.json"))
    settings.SECONDLOOK_CACHE_DIR = tmp_path / "cache"
    active = registry.ensure_default_registered()
    candidate_dir = tmp_path / "candidate"
    shutil.copytree(use_tiny_assessed_model, candidate_dir)
    card = json.loads((candidate_dir / "model_card.json").read_text())
    (candidate_dir / "model_card.json").write_text(json.dumps(card | {"version": "tiny-candidate"}))

    gate = measure_gate(candidate_dir, active, target_sensitivity=0.9)
    assert gate["bootstrap"]["resamples"] == 1000  # the gate's own, whatever a run's settings say
    assert gate["format"] == 2 and gate["benchmark"]["images"] == len(small.images) == 20
    assert gate["active"]["version"] == active.version and gate["candidate"]["version"] == "tiny-candidate"
    assert all(r["difference"] in (0, None) for r in gate["rows"])  # the same model, the same images
    assert (candidate_dir / "plots" / "benchmark_roc.png").is_file()

    version = registry.register_artifact(candidate_dir)
    assert version.metrics["gate"] == json.loads((candidate_dir / "gate.json").read_text())
    page = admin_client.get(f"/admin/classifier/modelversion/{version.pk}/change/").content.decode()
    assert 'id="gate-table"' in page and 'id="gate-roc"' in page
    plot = admin_client.get(f"/admin/classifier/modelversion/{version.pk}/plot/benchmark_roc.png")
    assert plot.status_code == 200 and plot["Content-Type"] == "image/png"


@pytest.mark.django_db
def test_a_stale_comparison_is_measured_again_by_command(use_tiny_assessed_model, monkeypatch, tmp_path):
    """After another activation the stored comparison is stale (refused); the command measures it
    against the version active now and stores the result."""
    from django.core.management import call_command

    from classifier import retraining

    shipped = registry.ensure_default_registered()
    candidate = ModelVersion.objects.create(version="cand", status="ready", target_sensitivity=0.9,
                                            artifact_path=stand_in_artifact(tmp_path, "cand"), sha256=fake_sha("cand"),
                                            metrics={"melanoma_auc": 0.9, **_gate_metrics(True, "older")})
    assert "re-run the comparison" in lifecycle.gate_for(candidate).reasons[0]
    asked = []

    def measure(candidate_dir, active, *, target_sensitivity):
        asked.append((active.version, target_sensitivity))
        return stored_gate(allowed=True, active=active.version, active_sha256=active.sha256)

    monkeypatch.setattr(retraining, "measure_gate", measure)
    call_command("compare_on_benchmark", "cand")
    candidate.refresh_from_db()
    assert asked == [(shipped.version, 0.9)] and candidate.metrics["melanoma_auc"] == 0.9
    assert lifecycle.gate_for(candidate).allowed

    from audit.models import AuditEvent

    event = AuditEvent.objects.get(action="update", object_id=str(candidate.pk))
    assert event.actor is None and event.old_values["gate"]["active"] == "older"
    assert event.new_values["gate"]["active"] == shipped.version and event.new_values["gate"]["allowed"] is True
    assert event.new_values["gate"]["active_sha256"] == shipped.sha256 and "re-measured" in event.new_values["reason"]


@pytest.mark.django_db
def test_the_active_versions_comparison_is_not_measured_again(use_tiny_assessed_model, monkeypatch, tmp_path):
    """It is the evidence the activation was justified by: the command refuses, and a version
    activated while it was being compared keeps the comparison it was activated on."""
    from pathlib import Path

    from django.core.management import CommandError, call_command

    from audit.models import AuditEvent
    from classifier import retraining

    shipped = registry.ensure_default_registered()
    ModelVersion.objects.filter(pk=shipped.pk).update(metrics={"gate": {"evidence": "of its activation"}})
    monkeypatch.setattr(retraining, "measure_gate", lambda *a, **k: pytest.fail("the active version was measured"))
    with pytest.raises(CommandError, match=f"{shipped.version} is the active version: its comparison on the frozen "
                                           "benchmark is the evidence its activation was justified by"):
        call_command("compare_on_benchmark", shipped.version)
    assert ModelVersion.objects.get(pk=shipped.pk).metrics == {"gate": {"evidence": "of its activation"}}

    artifact_dir = Path(stand_in_artifact(tmp_path, "cand"))
    candidate = ModelVersion.objects.create(version="cand", status="ready", target_sensitivity=0.9,
                                            artifact_path=str(artifact_dir), sha256=fake_sha("cand"),
                                            metrics=_gate_metrics(True, shipped, "cand"))
    kept = candidate.metrics["gate"]
    (artifact_dir / "plots").mkdir(exist_ok=True)
    (artifact_dir / "plots" / "benchmark_roc.png").write_bytes(b"the plot of its activation")

    def activated_meanwhile(candidate_dir, active, *, target_sensitivity):
        lifecycle.activate_version(version=ModelVersion.objects.get(pk=candidate.pk))
        (candidate_dir / "gate.json").write_text("{}")  # as measure_gate writes them
        (candidate_dir / "plots" / "benchmark_roc.png").write_bytes(b"a discarded comparison")
        return stored_gate(allowed=False, active=None)

    monkeypatch.setattr(retraining, "measure_gate", activated_meanwhile)
    with pytest.raises(lifecycle.LifecycleError, match="cand is the active version"):
        retraining.remeasure_gate(candidate)
    candidate.refresh_from_db()
    assert candidate.status == "active" and candidate.metrics["gate"] == kept
    assert not (artifact_dir / "gate.json").exists()  # the file it had (none) is put back too
    assert (artifact_dir / "plots" / "benchmark_roc.png").read_bytes() == b"the plot of its activation"
    assert not AuditEvent.objects.filter(action="update").exists()


@pytest.mark.django_db
def test_an_activation_is_refused_when_the_active_version_changed_after_its_gate_was_checked(
        use_tiny_assessed_model, django_user_model, monkeypatch, tmp_path):
    """Another admin activates another version between this activation's gate check and its
    update: the gate is checked again against the active row locked in the transaction, and the
    activation is refused instead of replacing a model it was never compared with."""
    from audit.models import AuditEvent

    admin = django_user_model.objects.create_superuser("root", password="x-very-long-pass-1")
    shipped = registry.ensure_default_registered()
    other = ModelVersion.objects.create(version="other", status="ready", sha256=fake_sha("other"))
    better = ModelVersion.objects.create(version="better", status="ready", target_sensitivity=0.9,
                                         artifact_path=stand_in_artifact(tmp_path, "better"),
                                         sha256=fake_sha("better"), metrics=_gate_metrics(True, shipped, "better"))
    checked_against = []
    check = lifecycle.gate_against

    def racing(version, active, **kwargs):
        result = check(version, active, **kwargs)
        checked_against.append(active.version if active else None)
        if len(checked_against) == 1:  # the other activation commits right after this check
            registry.activate(ModelVersion.objects.get(pk=other.pk))
        return result

    monkeypatch.setattr(lifecycle, "gate_against", racing)
    with pytest.raises(lifecycle.LifecycleError, match=f"The active version changed to other while better's promotion "
                                                       f"gate was being checked against {shipped.version}; nothing "
                                                       "was changed"):
        lifecycle.activate_version(version=better, user=admin)
    assert checked_against == [shipped.version]
    assert ModelVersion.objects.get(status="active").version == "other"
    assert ModelVersion.objects.get(pk=better.pk).status == "ready"
    assert not AuditEvent.objects.filter(action="activate", actor=admin).exists()


# --- metrics the database accepts, runs kept alive, cancelled before they start, time limits -----

def _refuse_non_json(constant: str):
    raise AssertionError(f"{constant} is not JSON")


@pytest.mark.django_db
def test_a_version_whose_metrics_hold_a_numpy_nan_registers_with_null(tmp_path, tiny_model_dir):
    """An AUC undefined on a subgroup with one class (numpy NaN) is written and stored as null:
    SQLite's JSON_VALID check and PostgreSQL's jsonb refuse NaN (the registration crash of issue 21)."""
    import json
    import shutil

    import numpy as np

    from mlcore.artifact import CARD_FILE
    from training.artifact import add_test_figures

    model_dir = shutil.copytree(tiny_model_dir, tmp_path / "nan-model")
    undefined = np.float64("nan")  # what a numpy AUC is on a subgroup with one class
    add_test_figures(model_dir, subgroups={"sex": {"female": {"n": np.int64(6), "melanoma_auc": undefined,
                                                              "ece": np.float32(np.inf)}}})
    for name in (CARD_FILE, "metrics.json"):  # strict JSON on disk
        json.loads((model_dir / name).read_text(), parse_constant=_refuse_non_json)

    version = registry.register_artifact(model_dir)
    version.refresh_from_db()
    assert version.metrics["subgroups"] == {"sex": {"female": {"n": 6, "melanoma_auc": None, "ece": None}}}

    # a card written before the pipeline wrote strict JSON registers too
    card = json.loads((model_dir / CARD_FILE).read_text())
    card["metrics"]["melanoma_auc"] = float("nan")
    (model_dir / CARD_FILE).write_text(json.dumps(card))
    assert "NaN" in (model_dir / CARD_FILE).read_text()
    version = registry.register_artifact(model_dir)
    version.refresh_from_db()
    assert version.metrics["melanoma_auc"] is None and version.melanoma_auc is None


def test_image_loading_and_hashing_report_each_image_to_a_heartbeat(tmp_path):
    from PIL import Image

    from training.audit import hash_files
    from training.cache import load_images

    paths = []
    for i in range(3):
        paths.append(str(tmp_path / f"img-{i}.png"))
        Image.new("RGB", (20, 20), (40 * i, 90, 120)).save(paths[-1])
    decoded, hashed = [], []
    load_images(paths, 16, tmp_path / "cache", workers=1, progress=False, on_item=lambda *a: decoded.append(a))
    hash_files(paths, workers=1, progress=False, on_item=lambda *a: hashed.append(a))
    assert decoded == hashed == [(1, 3), (2, 3), (3, 3)]


class _StopBeforeTraining(Exception):
    pass


@pytest.mark.django_db
def test_a_long_audit_or_image_loading_keeps_the_run_alive(tmp_path, monkeypatch):
    """A run that spends longer than the sweep's 15 minutes auditing and decoding images (a cold
    cache) keeps reporting while it does: the stale-run sweep leaves it alone."""
    from datetime import timedelta

    from django.utils import timezone

    import training.train
    from classifier.retraining import _save_progress, sweep_stale_runs
    from tests.support.training_data import make_fake_ham
    from training.testing import tiny_config

    data = make_fake_ham(tmp_path / "data")
    long_ago = timezone.now() - timedelta(minutes=20)
    version = ModelVersion.objects.create(version="cold-cache", status="training", started_at=long_ago,
                                          progress={"phase": "auditing data", "updated_at": long_ago.isoformat()})
    reported = []

    def on_progress(progress):
        reported.append(progress)
        _save_progress(version.pk, progress)

    def stop(*args, **kwargs):
        raise _StopBeforeTraining

    monkeypatch.setattr(training.train, "HEARTBEAT_SECONDS", 0.0)
    monkeypatch.setattr(training.train, "fit_model", stop)
    with pytest.raises(_StopBeforeTraining):
        training.train.train(tiny_config(), data, tmp_path / "out", tmp_path / "cache", verbose=0,
                             on_progress=on_progress)
    beats = {(p["phase"], p.get("done"), p.get("of")) for p in reported}
    loaded = next(p["images"] for p in reported if p["phase"] == "loading images")
    assert {("auditing data", n, 24) for n in range(1, 25)} <= beats  # every image hashed
    assert loaded > 20 and {("loading images", n, loaded) for n in range(1, loaded + 1)} <= beats
    assert sweep_stale_runs() == []
    version.refresh_from_db()
    assert version.status == "training" and version.progress["phase"] == "loading images"


def test_an_epoch_reports_a_heartbeat_between_batches(monkeypatch):
    import dataclasses

    import training.train
    from training.testing import synthetic_images, tiny_config

    monkeypatch.setattr(training.train, "HEARTBEAT_SECONDS", 0.0)
    x, m, _ = synthetic_images(64)
    reported = []
    training.train.fit_model(dataclasses.replace(tiny_config(), epochs=1), x, m, x[:16], m[:16], verbose=0,
                             on_progress=reported.append)
    assert [p["batch"] for p in reported if "batch" in p] == [1, 2]
    assert reported[0] == {"phase": "training", "epoch": 0, "epochs": 1, "batch": 1, "steps": 2}
    assert reported[-1]["epoch"] == 1 and "batch" not in reported[-1]


@pytest.mark.django_db
def test_cancelling_a_run_no_worker_started_ends_it_at_once_and_its_task_does_nothing(data_here, monkeypatch):
    from classifier import retraining

    monkeypatch.setattr("classifier.lifecycle.enqueue_training", lambda *a, **k: None)
    queued = lifecycle.start_training(sources=["ham10000"], epochs=1, seed=0, target_sensitivity=0.9)
    lifecycle.request_cancel(version=queued)
    queued.refresh_from_db()
    assert queued.status == "failed" and queued.error == lifecycle.CANCELLED_BEFORE_START
    assert queued.finished_at is not None and queued.started_at is None
    assert not ModelVersion.objects.filter(status="training").exists()  # the next run is not blocked

    # the task arrives after all: it trains nothing and leaves the cancelled run as it is
    monkeypatch.setattr(retraining, "train", lambda *a, **k: pytest.fail("a cancelled run was trained"))
    retraining.run_training(version_id=queued.pk)
    retraining.run_training(version_id=queued.pk)
    queued.refresh_from_db()
    assert queued.status == "failed" and queued.error == lifecycle.CANCELLED_BEFORE_START
    assert queued.started_at is None
    with pytest.raises(lifecycle.LifecycleError, match="is not training"):
        lifecycle.request_cancel(version=queued)


@pytest.mark.django_db
def test_cancelling_a_run_a_worker_started_asks_it_to_stop(data_here, monkeypatch):
    from django.utils import timezone

    running = ModelVersion.objects.create(version="running", status="training", started_at=timezone.now())
    lifecycle.request_cancel(version=running)
    running.refresh_from_db()
    assert running.status == "training" and running.cancel_requested and not running.error


@pytest.mark.django_db
def test_a_run_stopped_by_the_soft_time_limit_ends_failed_naming_the_limit(data_here, settings, tmp_path,
                                                                           monkeypatch):
    """Celery raises SoftTimeLimitExceeded inside the task when TRAINING_SOFT_TIME_LIMIT passes."""
    from celery.exceptions import SoftTimeLimitExceeded

    from classifier import retraining

    settings.SECONDLOOK_MODELS_ROOT = tmp_path / "models"
    version = ModelVersion.objects.create(version="too-long", status="training", data_sources=["ham10000"],
                                          training_config={"epochs": 1})

    def out_of_time(*args, **kwargs):
        raise SoftTimeLimitExceeded()

    monkeypatch.setattr(retraining, "train", out_of_time)
    assert retraining.run_training(version_id=version.pk) == "failed"
    version.refresh_from_db()
    assert version.status == "failed" and version.finished_at is not None
    limit_min = settings.TRAINING_SOFT_TIME_LIMIT // 60
    assert version.error == (f"Stopped: the run exceeded its training time limit ({limit_min} minutes). "
                             "Retry with fewer epochs or fewer ensemble members.")
    assert not ModelVersion.objects.filter(status="training").exists()  # a new run may start


@pytest.fixture(scope="module")
def next_release_model(tmp_path_factory):
    """The model a later release bundles (another tiny model, another sha256), with the image
    checks a version needs to be activated."""
    from training.testing import make_tiny_model_dir

    return make_tiny_model_dir(tmp_path_factory.mktemp("release"), seed=1, assessed=True)


def _bundle(settings, tmp_path, model_dir):
    """Lay ``model_dir`` out as the bundled default model (this host's files under tmp_path)."""
    import shutil

    bundled = tmp_path / "bundled"
    shutil.rmtree(bundled, ignore_errors=True)
    shutil.copytree(model_dir, bundled)
    settings.SECONDLOOK_MODEL_DIR = bundled
    settings.VAR_DIR = tmp_path / "var"
    return bundled


@pytest.mark.django_db
def test_an_upgrade_keeps_the_active_bundled_model_and_registers_the_new_one_for_the_gate(
        settings, tmp_path, tiny_assessed_model_dir, next_release_model):
    from classifier import artifact_store

    _bundle(settings, tmp_path, tiny_assessed_model_dir)
    old = registry.ensure_default_registered()
    _bundle(settings, tmp_path, next_release_model)  # the upgrade

    new = lifecycle.adopt_bundled_release()
    assert new.version == "tiny-test-1-assessed" and new.status == ModelVersion.Status.READY
    assert ModelVersion.objects.get(status="active").pk == old.pk
    # the old version still loads, from the copy kept when it was registered
    assert artifact_store.loadable(old)
    assert artifact_store.local_dir(old) == tmp_path / "var" / "model-store" / old.sha256
    assert lifecycle.adopt_bundled_release() is None  # idempotent
    with pytest.raises(lifecycle.LifecycleError, match="gate"):
        lifecycle.activate_version(version=new)

    from audit.models import AuditEvent

    event = AuditEvent.objects.order_by("pk").last()
    assert event.action == "create" and event.new_values["version"] == "tiny-test-1-assessed"


@pytest.mark.django_db
def test_an_upgrade_that_replaced_the_only_copy_of_the_active_model_activates_the_new_one(
        settings, tmp_path, tiny_assessed_model_dir, next_release_model):
    import io
    import shutil

    from django.core.management import call_command

    from classifier import artifact_store

    _bundle(settings, tmp_path, tiny_assessed_model_dir)
    old = registry.ensure_default_registered()
    shutil.rmtree(tmp_path / "var" / "model-store")  # as registered by a release that kept no copy
    _bundle(settings, tmp_path, next_release_model)
    assert not artifact_store.loadable(old)

    out = io.StringIO()
    call_command("register_default_model", stdout=out)
    assert "Bundled model tiny-test-1-assessed activated" in out.getvalue()
    active = ModelVersion.objects.get(status="active")
    assert active.version == "tiny-test-1-assessed"
    old.refresh_from_db()
    assert old.status == ModelVersion.Status.FAILED and "Cannot be loaded any more" in old.notes
    # "Why it failed" shows the reason, as for a failed run
    assert old.error.startswith("Cannot be loaded any more: the upgrade replaced") and old.finished_at is not None
    assert lifecycle.rollback_choice() == (active, None)  # the old version is never offered again
    with pytest.raises(lifecycle.LifecycleError, match="model cannot be loaded on this server"):
        lifecycle.rollback(user=None, expected_active_pk=active.pk, target_pk=old.pk, reason="try")

    from audit.models import AuditEvent

    event = AuditEvent.objects.order_by("pk").last()
    assert event.action == "activate" and event.old_values == {"active": old.version}
    assert "replaced" in event.new_values["reason"]


@pytest.mark.django_db(transaction=True)
def test_a_run_the_broker_refuses_ends_failed_at_once_with_the_reason(data_here, monkeypatch):
    """Not "No training worker picked the run up" after 15 minutes of blocking every new run."""
    def refused(pk, **limits):
        raise ConnectionRefusedError("Error 111 connecting to 127.0.0.1:6379")

    monkeypatch.setattr("classifier.lifecycle.enqueue_training", refused)
    run = lifecycle.start_training(sources=["ham10000"], epochs=1, seed=0, target_sensitivity=0.9)
    run.refresh_from_db()
    assert run.status == "failed" and "could not be queued" in run.error and "Error 111" in run.error
    assert not ModelVersion.objects.filter(status="training").exists()  # the next run is not blocked


@pytest.mark.django_db
def test_a_cancel_during_the_benchmark_comparison_ends_the_run_cancelled_not_ready(data_here, monkeypatch, tmp_path):
    from django.utils import timezone

    from classifier import retraining

    run = ModelVersion.objects.create(version="run-c", status="training", data_sources=["ham10000"],
                                      training_config={"epochs": 1, "seed": 0, "target_sensitivity": 0.9})
    monkeypatch.setattr(retraining, "train", lambda *a, **k: None)

    def measure(*args, **kwargs):  # the admin clicks Cancel while the run is being compared
        lifecycle.request_cancel(version=ModelVersion.objects.get(pk=run.pk))

    monkeypatch.setattr(retraining, "measure_gate", measure)
    monkeypatch.setattr(retraining, "register_artifact",
                        lambda *a, **k: pytest.fail("a cancelled run was registered"))
    assert retraining.run_training(version_id=run.pk) == "cancelled"
    run.refresh_from_db()
    assert run.status == "failed" and run.error == "Cancelled by an administrator." and run.finished_at <= timezone.now()


@pytest.mark.django_db
def test_an_activation_that_loses_the_race_is_refused_in_words_and_changes_nothing(
        use_tiny_assessed_model, django_user_model, monkeypatch, tmp_path):
    """Two admins click Activate at once: the database's one-active-version constraint stops the
    second, which gets a message, not a 500, and leaves no audit entry behind."""
    from audit.models import AuditEvent

    admin = django_user_model.objects.create_superuser("root", password="x-very-long-pass-1")
    shipped = registry.ensure_default_registered()
    better = ModelVersion.objects.create(version="better", status="ready", target_sensitivity=0.9,
                                         artifact_path=stand_in_artifact(tmp_path, "better"),
                                         sha256=fake_sha("better"), metrics=_gate_metrics(True, shipped, "better"))

    def lost(version):
        raise IntegrityError('duplicate key value violates unique constraint "one_active_model_version"')

    monkeypatch.setattr(lifecycle, "activate", lost)
    with pytest.raises(lifecycle.LifecycleError, match="activated at the same moment"):
        lifecycle.activate_version(version=better, user=admin)
    assert ModelVersion.objects.get(status="active") == shipped
    assert not AuditEvent.objects.filter(action="activate", actor=admin).exists()


@pytest.mark.django_db
def test_a_rollback_that_loses_the_race_is_refused_in_words_and_changes_nothing(monkeypatch, tmp_path):
    """Two admins click Roll back (or one activates) at once: the one-active-version constraint
    stops the second, which gets a message, not a 500, and leaves no audit entry behind."""
    from django.utils import timezone

    from audit.models import AuditEvent

    earlier = ModelVersion.objects.create(version="earlier", status="ready", activated_at=timezone.now(),
                                          artifact_path=stand_in_artifact(tmp_path, "earlier"),
                                          sha256=fake_sha("earlier"))
    current = registry.activate(ModelVersion.objects.create(version="current", status="ready"))

    def lost(version):
        raise IntegrityError('duplicate key value violates unique constraint "one_active_model_version"')

    monkeypatch.setattr(lifecycle, "activate", lost)
    with pytest.raises(lifecycle.LifecycleError, match="rolled back to at the same moment"):
        lifecycle.rollback(user=None, expected_active_pk=current.pk, target_pk=earlier.pk, reason="race")
    assert ModelVersion.objects.get(status="active") == current
    assert ModelVersion.objects.get(pk=earlier.pk).status == "ready"
    assert not AuditEvent.objects.filter(action="rollback").exists()
