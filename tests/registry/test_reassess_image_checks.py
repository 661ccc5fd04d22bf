"""Re-assessing a version's image checks in place (`lifecycle.reassess_image_checks`, `python
manage.py reassess_model`) is gated and audited: the active version never takes a card that lacks
the image checks every activation asks for, and each change is kept in the audit trail with both
cards' sha256 (the one predictions record), who did it and why."""
from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command

from audit.models import AuditEvent
from classifier import artifact_store, lifecycle, registry
from classifier.models import ModelVersion
from mlcore.artifact import CARD_FILE, sha256_file
from tests.support.gate_helpers import fake_sha, stand_in_artifact

pytestmark = pytest.mark.django_db
QUALITY = {"thresholds": {"sharpness_min": 2.0}}


@pytest.fixture(autouse=True)
def host(settings, tmp_path):
    """Models kept on this host only, its copies and scratch space under tmp_path."""
    settings.SECONDLOOK_MODELS_IN_STORAGE = False
    settings.VAR_DIR = tmp_path / "var"


def _version(root, name: str, *, active: bool = False) -> ModelVersion:
    """A registered version with stand-in model files and the fitted image checks (its detector
    file there too, as an assessment writes it)."""
    folder = Path(stand_in_artifact(root, name))
    _with_checks(folder, {"quality": QUALITY}, detector=b"old detector of " + name.encode())
    version = ModelVersion.objects.create(version=name, status="ready", artifact_path=str(folder),
                                          sha256=fake_sha(name))
    return registry.activate(version) if active else version


def _with_checks(folder: Path, assessment: dict | None, *, detector: bytes | None = None) -> Path:
    """``folder``'s card with ``assessment`` (and, given ``detector``, an ood.npz of those bytes
    that its assessment names), as `python -m training assess` rewrites it."""
    card = json.loads((folder / CARD_FILE).read_text())
    if assessment is None:
        card.pop("assessment", None)
    else:
        assessment = dict(assessment)
        if detector is not None:
            (folder / "ood.npz").write_bytes(detector)
            assessment["ood"] = {"file": "ood.npz", "sha256": sha256_file(folder / "ood.npz"), "threshold": 3.0}
        card["assessment"] = assessment
    (folder / CARD_FILE).write_text(json.dumps(card))
    (folder / "assessment.json").write_text(json.dumps(card.get("assessment")))
    return folder


def _reassessed(version: ModelVersion, tmp_path, assessment: dict | None, *, detector: bytes | None = None) -> Path:
    """A copy of ``version``'s artifact, re-assessed."""
    copy = tmp_path / f"reassessed-{version.version}"
    shutil.rmtree(copy, ignore_errors=True)
    shutil.copytree(version.artifact_path, copy)
    return _with_checks(copy, assessment, detector=detector)


def _card_sha(version: ModelVersion) -> str:
    return sha256_file(Path(version.artifact_path) / CARD_FILE)


def test_the_active_versions_checks_are_replaced_when_they_pass_and_audited(tmp_path, django_user_model):
    active = _version(tmp_path, "v-active", active=True)
    admin = django_user_model.objects.create_superuser("root", password="x-very-long-pass-1")
    old_sha = _card_sha(active)
    copy = _reassessed(active, tmp_path, {"quality": {"thresholds": {"sharpness_min": 3.5}}}, detector=b"refitted")

    done = lifecycle.reassess_image_checks(version=active, assessed_dir=copy, reason="New blur check",
                                           user=admin, origin="test")
    assert (done.old_card_sha256, done.new_card_sha256, done.image_checks) == (old_sha, sha256_file(copy / CARD_FILE),
                                                                               None)
    registered = Path(active.artifact_path)
    assert _card_sha(active) == done.new_card_sha256
    assert (registered / "ood.npz").read_bytes() == b"refitted"
    assert json.loads((registered / "assessment.json").read_text())["quality"]["thresholds"]["sharpness_min"] == 3.5
    assert not list(registered.glob(".*"))  # no staging file left behind
    assert lifecycle.image_checks_of(active) is None
    event = AuditEvent.objects.get(action="update", object_type="modelversion", object_id=str(active.pk))
    assert event.actor == admin and event.old_values == {"card_sha256": old_sha}
    assert event.new_values["card_sha256"] == done.new_card_sha256 and event.new_values["checks_pass"] is True
    assert event.new_values["reason"] == "New blur check" and event.new_values["origin"] == "test"
    assert event.new_values["status"] == "active"
    assert ModelVersion.objects.get(status="active") == active  # still active, same model


@pytest.mark.parametrize("assessment", [None, {"quality": {"thresholds": {}}}], ids=["no-checks", "no-thresholds"])
def test_the_active_version_never_takes_a_card_that_lacks_the_image_checks(tmp_path, assessment):
    active = _version(tmp_path, "v-active", active=True)
    old_sha = _card_sha(active)
    copy = _reassessed(active, tmp_path, assessment)
    with pytest.raises(lifecycle.LifecycleError, match="Re-assessment refused: v-active is the active version, and "
                                                       "the new card lacks the image checks"):
        lifecycle.reassess_image_checks(version=active, assessed_dir=copy, reason="try")
    assert _card_sha(active) == old_sha and lifecycle.image_checks_of(active) is None
    assert not AuditEvent.objects.filter(action="update").exists()


def test_a_ready_version_may_take_such_a_card_audited_and_is_then_refused_activation(tmp_path):
    ready = _version(tmp_path, "v-ready")
    copy = _reassessed(ready, tmp_path, None)
    done = lifecycle.reassess_image_checks(version=ready, assessed_dir=copy, reason="experiment")
    assert done.image_checks and "no fitted image checks" in done.image_checks
    event = AuditEvent.objects.get(action="update")
    assert event.new_values["checks_pass"] is False and "no fitted image checks" in event.new_values["problem"]
    assert "no fitted image checks" in lifecycle.image_checks_of(ready)  # its activation is refused now


def test_another_models_files_or_card_are_refused(tmp_path):
    active = _version(tmp_path, "v-active", active=True)
    other = _version(tmp_path, "v-other")
    with pytest.raises(lifecycle.LifecycleError, match="does not hold v-active's model"):
        lifecycle.reassess_image_checks(version=active, assessed_dir=_reassessed(other, tmp_path, {"quality": QUALITY}),
                                        reason="wrong folder")
    renamed = _reassessed(active, tmp_path, {"quality": QUALITY})
    card = json.loads((renamed / CARD_FILE).read_text()) | {"version": "v-other"}
    (renamed / CARD_FILE).write_text(json.dumps(card))
    with pytest.raises(lifecycle.LifecycleError, match="is v-other's, not v-active's"):
        lifecycle.reassess_image_checks(version=active, assessed_dir=renamed, reason="wrong card")
    assert not AuditEvent.objects.filter(action="update").exists()


def test_a_card_naming_a_detector_file_it_lacks_is_refused(tmp_path):
    active = _version(tmp_path, "v-active", active=True)
    copy = _reassessed(active, tmp_path, {"quality": QUALITY}, detector=b"refitted")
    (copy / "ood.npz").write_bytes(b"another detector")
    with pytest.raises(lifecycle.LifecycleError, match="names the detector ood.npz"):
        lifecycle.reassess_image_checks(version=active, assessed_dir=copy, reason="try")


def test_a_reason_is_required_and_an_unchanged_card_is_refused(tmp_path):
    active = _version(tmp_path, "v-active", active=True)
    copy = _reassessed(active, tmp_path, {"quality": QUALITY})
    with pytest.raises(lifecycle.LifecycleError, match="Say why"):
        lifecycle.reassess_image_checks(version=active, assessed_dir=copy, reason=" ")
    # its own directory, re-assessed in place already: in service unchecked, which is said
    with pytest.raises(lifecycle.LifecycleError, match="already this one"):
        lifecycle.reassess_image_checks(version=active, assessed_dir=Path(active.artifact_path), reason="again")
    assert not AuditEvent.objects.filter(action="update").exists()


def test_with_models_in_the_storage_the_stored_card_is_replaced(tmp_path, settings, media_root):
    settings.SECONDLOOK_MODELS_IN_STORAGE = True
    active = _version(tmp_path, "v-stored", active=True)
    artifact_store.publish(Path(active.artifact_path), active.sha256)
    stored = media_root / artifact_store.storage_prefix(active.sha256)
    copy = _reassessed(active, tmp_path, {"quality": QUALITY}, detector=b"refitted in storage")
    done = lifecycle.reassess_image_checks(version=active, assessed_dir=copy, reason="stored")
    assert sha256_file(stored / CARD_FILE) == done.new_card_sha256
    assert (stored / "ood.npz").read_bytes() == b"refitted in storage"


def test_the_command_fits_a_copy_and_puts_it_in_service(tmp_path, monkeypatch):
    from training import assessment

    active = _version(tmp_path, "v-active", active=True)
    fitted_in = []

    def assess_artifact(model_dir, data_root, cache_dir, *, write=True, audit=None):
        assert Path(model_dir) != Path(active.artifact_path) and write  # a copy, never the registered directory
        fitted_in.append(Path(model_dir))
        _with_checks(Path(model_dir), {"quality": {"thresholds": {"sharpness_min": 9.0}}}, detector=b"fitted")
        return {}

    monkeypatch.setattr(assessment, "assess_artifact", assess_artifact)
    out = io.StringIO()
    call_command("reassess_model", "v-active", "--reason", "quarterly re-fit", "--data", str(tmp_path), stdout=out)
    assert "v-active: model card" in out.getvalue() and "image checks pass" in out.getvalue()
    assert (Path(active.artifact_path) / "ood.npz").read_bytes() == b"fitted"
    assert not fitted_in[0].exists()  # the scratch copy is removed
    event = AuditEvent.objects.get(action="update")
    assert event.actor is None and event.new_values["origin"].startswith("manage.py reassess_model, OS user ")


def test_the_command_refuses_a_failing_card_for_the_active_version(tmp_path):
    active = _version(tmp_path, "v-active", active=True)
    copy = _reassessed(active, tmp_path, None)
    with pytest.raises(CommandError, match="Re-assessment refused"):
        call_command("reassess_model", "v-active", "--reason", "x", "--assessed", str(copy), stdout=io.StringIO())
    with pytest.raises(CommandError, match="No model version 'nope'"):
        call_command("reassess_model", "nope", "--reason", "x", "--assessed", str(copy), stdout=io.StringIO())
    assert not AuditEvent.objects.filter(action="update").exists()
