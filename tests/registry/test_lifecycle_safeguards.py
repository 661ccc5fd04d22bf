"""Lifecycle safeguards: a roll-back does what its confirmation page named (or nothing), the admin's
registry actions keep the client's address in the audit trail, deleting a failed run removes its
folder (only inside the models root) and never a version that scored images, and a bundled version
an upgrade made unloadable says why it failed."""
from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from django.utils import timezone

from audit.models import AuditEvent
from classifier import lifecycle, registry
from classifier.models import ModelVersion
from tests.support.gate_helpers import fake_sha, stand_in_artifact, stored_gate

PASSWORD = "x-very-long-pass-1"


def _version(root, name: str, *, days_ago: float | None = None, status: str = "ready", **fields) -> ModelVersion:
    """A version with stand-in model files under ``root`` (loadable, with the fitted image checks),
    activated ``days_ago`` days ago when given."""
    activated = timezone.now() - timedelta(days=days_ago) if days_ago is not None else None
    fields = {"artifact_path": stand_in_artifact(root, name), "sha256": fake_sha(name)} | fields
    return ModelVersion.objects.create(version=name, status=status, activated_at=activated, **fields)


@pytest.fixture
def versions(db, tmp_path) -> tuple[ModelVersion, ModelVersion, ModelVersion]:
    """(oldest, earlier, current): activated in that order, ``current`` active now."""
    oldest = _version(tmp_path, "v0-oldest", days_ago=9)
    earlier = _version(tmp_path, "v1-earlier", days_ago=3)
    current = registry.activate(_version(tmp_path, "v2-current"))
    return oldest, earlier, current


def _active() -> ModelVersion:
    return ModelVersion.objects.get(status=ModelVersion.Status.ACTIVE)


# --- the roll-back service ------------------------------------------------------------------------------

@pytest.mark.django_db
def test_a_rollback_re_activates_the_named_target_and_audits_both_versions_and_the_reason(versions,
                                                                                        django_user_model):
    _, earlier, current = versions
    admin = django_user_model.objects.create_superuser("root", password=PASSWORD)
    assert lifecycle.rollback_choice() == (current, earlier)

    back = lifecycle.rollback(user=admin, expected_active_pk=current.pk, target_pk=earlier.pk,
                              reason="  Melanoma sensitivity dropped on clinic B  ")
    assert back == earlier and _active() == earlier
    event = AuditEvent.objects.get(action="rollback")
    assert (event.actor, event.object_id) == (admin, str(earlier.pk))
    assert event.old_values == {"active": "v2-current", "active_sha256": fake_sha("v2-current")}
    assert event.new_values == {"active": "v1-earlier", "active_sha256": fake_sha("v1-earlier"),
                                "reason": "Melanoma sensitivity dropped on clinic B"}


@pytest.mark.django_db
def test_a_second_click_on_the_same_page_is_refused_not_a_roll_forward(versions):
    """Without the named versions a second click rolled back to the version just rolled back from."""
    _, earlier, current = versions
    page = {"expected_active_pk": current.pk, "target_pk": earlier.pk, "reason": "bad flags"}
    lifecycle.rollback(user=None, **page)
    with pytest.raises(lifecycle.LifecycleError, match=r"The active version is now v1-earlier, not v2-current as the "
                                                       r"page showed.*Nothing was changed"):
        lifecycle.rollback(user=None, **page)
    assert _active() == earlier and AuditEvent.objects.filter(action="rollback").count() == 1


@pytest.mark.django_db
def test_a_page_left_open_while_another_admin_activated_changes_nothing(versions, tmp_path):
    oldest, earlier, current = versions
    newer = registry.activate(_version(tmp_path, "v3-newer"))  # another admin, after the page was shown
    with pytest.raises(lifecycle.LifecycleError, match="The active version is now v3-newer"):
        lifecycle.rollback(user=None, expected_active_pk=current.pk, target_pk=earlier.pk, reason="stale page")
    assert _active() == newer and not AuditEvent.objects.filter(action="rollback").exists()


@pytest.mark.django_db
def test_a_target_other_than_the_one_a_rollback_would_choose_is_refused(versions):
    oldest, earlier, current = versions
    with pytest.raises(lifecycle.LifecycleError, match="would now re-activate v1-earlier, not v0-oldest"):
        lifecycle.rollback(user=None, expected_active_pk=current.pk, target_pk=oldest.pk, reason="older one")
    assert _active() == current and not AuditEvent.objects.filter(action="rollback").exists()


@pytest.mark.django_db
@pytest.mark.parametrize("reason", ["", "   "])
def test_a_rollback_without_a_reason_is_refused(versions, reason):
    _, earlier, current = versions
    with pytest.raises(lifecycle.LifecycleError, match="Say why you roll back"):
        lifecycle.rollback(user=None, expected_active_pk=current.pk, target_pk=earlier.pk, reason=reason)
    assert _active() == current


@pytest.mark.django_db
def test_a_target_whose_model_cannot_be_loaded_is_refused(versions):
    _, earlier, current = versions
    Path(earlier.artifact_path, "model.keras").write_bytes(b"replaced by something else")
    with pytest.raises(lifecycle.LifecycleError, match=r"v1-earlier's model cannot be loaded on this server .*"
                                                       r"Nothing was changed"):
        lifecycle.rollback(user=None, expected_active_pk=current.pk, target_pk=earlier.pk, reason="try")
    assert _active() == current and not AuditEvent.objects.filter(action="rollback").exists()


@pytest.mark.django_db
def test_a_target_without_image_checks_is_refused(tmp_path):
    earlier = ModelVersion.objects.create(version="v1-unchecked", status="ready", sha256=fake_sha("v1-unchecked"),
                                          activated_at=timezone.now() - timedelta(days=1),
                                          artifact_path=stand_in_artifact(tmp_path, "v1-unchecked", assessment=None))
    current = registry.activate(_version(tmp_path, "v2-current"))
    with pytest.raises(lifecycle.LifecycleError, match="lacks the image checks.*no fitted image checks"):
        lifecycle.rollback(user=None, expected_active_pk=current.pk, target_pk=earlier.pk, reason="try")
    assert _active() == current


@pytest.mark.django_db
def test_the_target_is_checked_before_the_active_row_is_locked(versions, monkeypatch):
    """Loading the model may fetch it from the storage: not while the active row is locked."""
    from django.db import connection

    from classifier import artifact_store

    _, earlier, current = versions
    depth: list[tuple[str, int]] = []
    real_checks, real_loadable = lifecycle.image_checks_of, artifact_store.loadable
    monkeypatch.setattr(lifecycle, "image_checks_of",
                        lambda v: depth.append(("checks", len(connection.atomic_blocks))) or real_checks(v))
    monkeypatch.setattr(artifact_store, "loadable",
                        lambda v: depth.append(("loadable", len(connection.atomic_blocks))) or real_loadable(v))
    outside = len(connection.atomic_blocks)  # the test's own transaction
    lifecycle.rollback(user=None, expected_active_pk=current.pk, target_pk=earlier.pk, reason="checked first")
    assert depth == [("loadable", outside), ("checks", outside)]


# --- the admin: confirmation page, client address ---------------------------------------------------------

@pytest.fixture
def admin_user(db, django_user_model):
    return django_user_model.objects.create_superuser("root", "root@example.org", PASSWORD)


@pytest.mark.django_db
def test_the_rollback_page_names_both_versions_and_asks_why(client, admin_user, versions):
    _, earlier, current = versions
    client.force_login(admin_user)
    listing = client.get("/admin/classifier/modelversion/").content.decode()
    assert 'href="/admin/classifier/modelversion/rollback/"' in listing  # a link to the page, not a POST

    page = client.get("/admin/classifier/modelversion/rollback/").content.decode()
    assert "v2-current" in page and fake_sha("v2-current")[:12] in page
    assert "v1-earlier" in page and fake_sha("v1-earlier")[:12] in page
    assert timezone.localtime(earlier.activated_at).strftime("%Y-%m-%d %H:%M") in page
    assert f'name="expected_active" value="{current.pk}"' in page and f'name="target" value="{earlier.pk}"' in page
    assert 'name="reason"' in page and "Yes, roll back to v1-earlier" in page
    assert _active() == current  # looking at it changes nothing


@pytest.mark.django_db
def test_the_rollback_page_says_why_a_target_is_refused(client, admin_user, versions):
    _, earlier, _ = versions
    Path(earlier.artifact_path, "model.keras").write_bytes(b"gone")
    client.force_login(admin_user)
    page = client.get("/admin/classifier/modelversion/rollback/").content.decode()
    assert 'id="rollback-refusal"' in page and "cannot be loaded on this server" in page
    assert 'value="Yes, roll back to v1-earlier" disabled' in page


@pytest.mark.django_db
def test_a_rollback_posted_without_a_reason_shows_the_page_again_and_changes_nothing(client, admin_user, versions):
    _, earlier, current = versions
    client.force_login(admin_user)
    response = client.post("/admin/classifier/modelversion/rollback/",
                           {"expected_active": current.pk, "target": earlier.pk, "reason": ""})
    assert response.status_code == 200
    page = response.content.decode()
    assert "This field is required" in page and "v1-earlier" in page and "v2-current" in page
    assert _active() == current and not AuditEvent.objects.filter(action="rollback").exists()


@pytest.mark.django_db
def test_a_rollback_through_the_admin_is_audited_with_the_client_address_and_a_double_post_is_refused(
        client, admin_user, versions):
    _, earlier, current = versions
    client.force_login(admin_user)
    form = {"expected_active": current.pk, "target": earlier.pk, "reason": "Incident 42: flags every nevus"}
    response = client.post("/admin/classifier/modelversion/rollback/", form, REMOTE_ADDR="203.0.113.7", follow=True)
    assert "Rolled back: v1-earlier is active again" in response.content.decode()
    event = AuditEvent.objects.get(action="rollback")
    assert (event.actor, event.ip_address, event.new_values["reason"]) == (admin_user, "203.0.113.7",
                                                                           "Incident 42: flags every nevus")

    again = client.post("/admin/classifier/modelversion/rollback/", form, follow=True).content.decode()
    assert "The active version is now v1-earlier, not v2-current as the page showed" in again
    assert _active() == earlier and AuditEvent.objects.filter(action="rollback").count() == 1


@pytest.mark.django_db
def test_with_no_earlier_version_the_rollback_page_says_so(client, admin_user, tmp_path):
    registry.activate(_version(tmp_path, "only"))
    client.force_login(admin_user)
    response = client.get("/admin/classifier/modelversion/rollback/", follow=True)
    assert "There is no earlier active version to roll back to" in response.content.decode()


@pytest.mark.django_db
def test_the_rollback_page_needs_the_change_permission(client, django_user_model, versions):
    from django.contrib.auth.models import Permission

    viewer = django_user_model.objects.create_user("viewer", password=PASSWORD, is_staff=True)
    viewer.user_permissions.add(Permission.objects.get(codename="view_modelversion"))
    client.force_login(viewer)
    assert client.get("/admin/classifier/modelversion/rollback/").status_code == 403


@pytest.mark.django_db
def test_an_admin_activation_is_audited_with_the_client_address(client, admin_user, tmp_path):
    shipped = registry.activate(_version(tmp_path, "shipped"))
    better = _version(tmp_path, "better", target_sensitivity=0.9,
                      metrics={"gate": stored_gate(allowed=True, active="shipped", candidate="better")})
    client.force_login(admin_user)
    response = client.post(f"/admin/classifier/modelversion/{better.pk}/activate/",
                           {"reason": "better on the benchmark"}, REMOTE_ADDR="198.51.100.23", follow=True)
    assert "Better is now active" in response.content.decode()  # the admin capitalises messages
    event = AuditEvent.objects.get(action="activate")
    assert (event.actor, event.ip_address, event.old_values) == (admin_user, "198.51.100.23", {"active": shipped.version})


@pytest.mark.django_db
def test_cancel_retry_and_delete_in_the_admin_are_audited_with_the_client_address(client, admin_user, monkeypatch,
                                                                                 settings, tmp_path):
    monkeypatch.setattr("classifier.lifecycle.enqueue_training", lambda *a, **k: None)
    (tmp_path / "ham10000").mkdir()
    settings.SECONDLOOK_DATA_DIR = tmp_path
    settings.SECONDLOOK_MODELS_ROOT = tmp_path / "models"
    queued = ModelVersion.objects.create(version="train-queued", status="training")
    failed = ModelVersion.objects.create(version="train-failed", status="failed", error="boom",
                                         data_sources=["ham10000"], training_config={"epochs": 1, "seed": 1})
    client.force_login(admin_user)
    base = "/admin/classifier/modelversion"
    client.post(f"{base}/{queued.pk}/cancel/", REMOTE_ADDR="192.0.2.1")
    client.post(f"{base}/{failed.pk}/retry/", REMOTE_ADDR="192.0.2.2")
    client.post(f"{base}/{failed.pk}/delete-failed/", REMOTE_ADDR="192.0.2.3")
    assert not ModelVersion.objects.filter(pk=failed.pk).exists()
    events = {e.action: (e.actor, e.ip_address) for e in AuditEvent.objects.all()}
    assert events == {"cancel": (admin_user, "192.0.2.1"), "train": (admin_user, "192.0.2.2"),
                      "delete": (admin_user, "192.0.2.3")}


# --- deleting a failed run -------------------------------------------------------------------------------

@pytest.mark.django_db
def test_deleting_a_run_that_failed_while_training_removes_its_folder(settings, tmp_path,
                                                                     django_capture_on_commit_callbacks):
    root = settings.SECONDLOOK_MODELS_ROOT = tmp_path / "models"
    run = ModelVersion.objects.create(version="train-20260101-120000", status="failed", error="Out of memory")
    assert run.artifact_path == ""  # never registered: it failed during training
    (root / run.version / "checkpoints").mkdir(parents=True)
    (root / run.version / "checkpoints" / "epoch-3.keras").write_bytes(b"weights")
    (root / "train-other").mkdir()  # another run's folder stays

    with django_capture_on_commit_callbacks(execute=True):
        lifecycle.delete_failed(version=run)
    assert not (root / run.version).exists() and (root / "train-other").is_dir()
    assert not ModelVersion.objects.filter(pk=run.pk).exists()


@pytest.mark.django_db
@pytest.mark.parametrize("name", ["../outside", "..", "."])
def test_a_version_name_that_leads_out_of_the_models_root_removes_nothing(settings, tmp_path, name,
                                                                         django_capture_on_commit_callbacks):
    root = settings.SECONDLOOK_MODELS_ROOT = tmp_path / "models" / "root"
    root.mkdir(parents=True)
    (tmp_path / "models" / "outside").mkdir()
    run = ModelVersion.objects.create(version=name, status="failed", error="boom")
    with django_capture_on_commit_callbacks(execute=True):
        lifecycle.delete_failed(version=run)
    assert root.is_dir() and (tmp_path / "models" / "outside").is_dir()


@pytest.mark.django_db
def test_a_link_in_the_models_root_is_not_followed(settings, tmp_path, django_capture_on_commit_callbacks):
    root = settings.SECONDLOOK_MODELS_ROOT = tmp_path / "models"
    root.mkdir()
    elsewhere = tmp_path / "precious"
    elsewhere.mkdir()
    (elsewhere / "keep.txt").write_text("keep")
    (root / "train-linked").symlink_to(elsewhere, target_is_directory=True)
    run = ModelVersion.objects.create(version="train-linked", status="failed", error="boom")
    with django_capture_on_commit_callbacks(execute=True):
        lifecycle.delete_failed(version=run)
    assert (elsewhere / "keep.txt").read_text() == "keep"


@pytest.mark.django_db
def test_a_failed_version_that_scored_images_is_kept_and_the_admin_says_why(client, admin_user, settings, tmp_path,
                                                                           django_capture_on_commit_callbacks):
    """Predictions (and re-scoring jobs) refer to it with PROTECT: a clear refusal, not a 500, and
    its folder stays."""
    from cases.models import LesionImage, Prediction
    from classifier.models import RescoreJob
    from tests.support.case_helpers import World

    root = settings.SECONDLOOK_MODELS_ROOT = tmp_path / "models"
    (root / "v-bundled-old").mkdir(parents=True)
    old = ModelVersion.objects.create(version="v-bundled-old", status="failed", error="Cannot be loaded any more")
    world = World()
    for n in range(2):
        image = LesionImage.objects.create(lesion=world.lesion_a, file=f"images/{n}.png", sha256=f"{n}" * 64,
                                           size_bytes=10, width=64, height=64, uploaded_by=world.clin_a)
        Prediction.objects.create(image=image, model_version=old)
    RescoreJob.objects.create(model_version=old, status="done")

    with pytest.raises(lifecycle.LifecycleError, match=r"v-bundled-old cannot be deleted: 2 predictions and 1 rescore "
                                                       r"job refer to it"):
        lifecycle.delete_failed(version=old)
    client.force_login(admin_user)
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(f"/admin/classifier/modelversion/{old.pk}/delete-failed/", follow=True)
    assert response.status_code == 200
    assert "V-bundled-old cannot be deleted: 2 predictions and 1 rescore job" in response.content.decode()
    assert ModelVersion.objects.filter(pk=old.pk).exists() and (root / "v-bundled-old").is_dir()
    assert not AuditEvent.objects.filter(action="delete").exists()


@pytest.mark.django_db
def test_the_why_it_failed_box_shows_an_unloadable_bundled_versions_reason(client, admin_user):
    """adopt_bundled_release stores the reason in ``error`` (tests/registry/test_registry.py runs it
    for real); the version's page shows it where a failed run's reason shows."""
    old = ModelVersion.objects.create(version="v-old", status="failed", finished_at=timezone.now(),
                                      error="Cannot be loaded any more: the upgrade replaced v-old's files.")
    client.force_login(admin_user)
    page = client.get(f"/admin/classifier/modelversion/{old.pk}/change/").content.decode()
    assert "Why it failed" in page and "the upgrade replaced v-old&#x27;s files" in page
